//! Counters and gauges shared by the HTTP side and the inference thread, exported in
//! Prometheus' text format. Plain atomics: recording never blocks a request.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

pub struct Metrics {
    pub slots_total: usize,
    pub slots_busy: AtomicUsize,
    pub queue_depth: AtomicUsize,
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub prompt_cached_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub engine_alive: AtomicBool,
    generation_rate: Mutex<RateWindow>,
}

impl Metrics {
    pub fn new(slots_total: usize) -> Self {
        Self {
            slots_total,
            slots_busy: AtomicUsize::new(0),
            queue_depth: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            prompt_cached_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            engine_alive: AtomicBool::new(true),
            generation_rate: Mutex::new(RateWindow::new(Instant::now())),
        }
    }

    /// Called by the inference thread after each decode step.
    pub fn record_generated(&self, tokens: u64) {
        self.generated_tokens.fetch_add(tokens, Relaxed);
        if let Ok(mut w) = self.generation_rate.lock() {
            w.add(Instant::now(), tokens);
        }
    }

    /// Aggregate generation speed over the last few seconds, all slots together.
    pub fn tokens_per_second(&self) -> f64 {
        self.generation_rate
            .lock()
            .map(|mut w| w.rate(Instant::now()))
            .unwrap_or(0.0)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = write!(
                out,
                "# HELP corral_runner_{name} {help}\n# TYPE corral_runner_{name} {kind}\ncorral_runner_{name} {value}\n"
            );
        };
        let n = |v: &AtomicU64| v.load(Relaxed).to_string();
        metric(
            "requests_total",
            "counter",
            "Generation and embedding requests accepted.",
            n(&self.requests),
        );
        metric(
            "requests_rejected_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            n(&self.rejected),
        );
        metric(
            "requests_cancelled_total",
            "counter",
            "Requests whose client went away before the answer was complete.",
            n(&self.cancelled),
        );
        metric(
            "requests_failed_total",
            "counter",
            "Requests that failed inside the inference engine.",
            n(&self.failed),
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens evaluated (tokens in).",
            n(&self.prompt_tokens),
        );
        metric(
            "prompt_cached_tokens_total",
            "counter",
            "Prompt tokens found in a slot's KV cache and not evaluated again.",
            n(&self.prompt_cached_tokens),
        );
        metric(
            "generated_tokens_total",
            "counter",
            "Tokens generated (tokens out).",
            n(&self.generated_tokens),
        );
        metric(
            "tokens_per_second",
            "gauge",
            "Generation speed of all slots together over the last 10 seconds.",
            format!("{:.2}", self.tokens_per_second()),
        );
        metric(
            "queue_depth",
            "gauge",
            "Requests waiting for a free slot.",
            self.queue_depth.load(Relaxed).to_string(),
        );
        metric(
            "slots_busy",
            "gauge",
            "Slots generating an answer.",
            self.slots_busy.load(Relaxed).to_string(),
        );
        metric(
            "slots_total",
            "gauge",
            "Slots (requests decoded together).",
            self.slots_total.to_string(),
        );
        out
    }
}

/// Tokens counted in one-second buckets over a sliding window.
struct RateWindow {
    start: Instant,
    /// (second since `start`, tokens in that second), oldest first.
    buckets: std::collections::VecDeque<(u64, u64)>,
}

const WINDOW: Duration = Duration::from_secs(10);

impl RateWindow {
    fn new(start: Instant) -> Self {
        Self {
            start,
            buckets: Default::default(),
        }
    }

    fn add(&mut self, now: Instant, tokens: u64) {
        let sec = now.duration_since(self.start).as_secs();
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += tokens,
            _ => self.buckets.push_back((sec, tokens)),
        }
        self.expire(sec);
    }

    fn rate(&mut self, now: Instant) -> f64 {
        let sec = now.duration_since(self.start).as_secs();
        self.expire(sec);
        let total: u64 = self.buckets.iter().map(|(_, n)| n).sum();
        total as f64 / WINDOW.as_secs_f64()
    }

    fn expire(&mut self, sec: u64) {
        while let Some(&(s, _)) = self.buckets.front() {
            if s + WINDOW.as_secs() <= sec {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_counts_last_ten_seconds() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(t0);
        w.add(t0, 50);
        w.add(t0 + Duration::from_millis(500), 50);
        w.add(t0 + Duration::from_secs(5), 100);
        assert_eq!(w.rate(t0 + Duration::from_secs(6)), 20.0);
        // the first second has left the window
        assert_eq!(w.rate(t0 + Duration::from_secs(10)), 10.0);
        assert_eq!(w.rate(t0 + Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new(4);
        m.slots_busy.store(2, Relaxed);
        m.record_generated(7);
        let text = m.render();
        assert!(text.contains("# TYPE corral_runner_generated_tokens_total counter\n"));
        assert!(text.contains("corral_runner_generated_tokens_total 7\n"));
        assert!(text.contains("corral_runner_slots_busy 2\n"));
        assert!(text.contains("corral_runner_slots_total 4\n"));
    }
}
