//! Per-instance request statistics for the instance page's charts: for each of the last
//! 60 minutes, requests, errors, latency and time to first token (p50/p95) and tokens
//! generated. Kept in memory by the gateway (they start empty when the server starts;
//! the hourly usage rows are the durable record).
//!
//! Percentiles come from a histogram per minute with logarithmic buckets 30 % apart,
//! from 50 µs to about 12 minutes: a reported percentile is within about 15 % of the
//! true value, and recording is a few arithmetic operations under a per-instance lock.

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// Minutes kept.
pub const MINUTES: usize = 60;
const BUCKETS: usize = 64;
/// Upper bound of the first bucket, in seconds.
const FIRST_BOUND: f64 = 50e-6;
const GROWTH: f64 = 1.3;

/// One answered request, as the gateway saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From receipt of the request to the end of its answer.
    pub latency: Duration,
    /// Streams: from receipt to the first chunk.
    pub first_token: Option<Duration>,
    pub tokens_out: u64,
    /// The replica failed it (5xx, no answer, a broken body).
    pub error: bool,
}

#[derive(Clone)]
struct Histogram([u32; BUCKETS]);

impl Histogram {
    fn bucket(seconds: f64) -> usize {
        if seconds <= FIRST_BOUND {
            return 0;
        }
        let i = ((seconds / FIRST_BOUND).ln() / GROWTH.ln()).ceil();
        (i as usize).min(BUCKETS - 1)
    }

    fn upper(i: usize) -> f64 {
        FIRST_BOUND * GROWTH.powi(i as i32)
    }

    fn observe(&mut self, value: Duration) {
        let b = Self::bucket(value.as_secs_f64());
        self.0[b] = self.0[b].saturating_add(1);
    }

    /// The `q` quantile in milliseconds (the bucket's geometric middle), None if empty.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.0.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        let i = self.0.iter().position(|&n| {
            seen += u64::from(n);
            seen >= rank
        })?;
        let upper = Self::upper(i);
        let value = if i == 0 {
            upper
        } else {
            (upper * Self::upper(i - 1)).sqrt()
        };
        Some(value * 1000.0)
    }
}

#[derive(Clone)]
struct Minute {
    /// Minutes since the Unix epoch this slot holds.
    index: u64,
    requests: u64,
    errors: u64,
    tokens_out: u64,
    latency: Histogram,
    first_token: Histogram,
}

impl Minute {
    fn empty(index: u64) -> Self {
        Minute {
            index,
            requests: 0,
            errors: 0,
            tokens_out: 0,
            latency: Histogram([0; BUCKETS]),
            first_token: Histogram([0; BUCKETS]),
        }
    }
}

/// One instance's last hour, a ring of minutes.
struct Series {
    minutes: Vec<Minute>,
    last: u64,
}

/// One minute as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MinuteStats {
    pub start: DateTime<Utc>,
    pub requests: u64,
    pub errors: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub first_token_p50_ms: Option<f64>,
    pub first_token_p95_ms: Option<f64>,
    pub tokens_out: u64,
}

#[derive(Default)]
pub struct InstanceStats {
    series: RwLock<HashMap<Uuid, Arc<Mutex<Series>>>>,
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl InstanceStats {
    pub fn record(&self, instance_id: Uuid, sample: Sample) {
        self.record_at(instance_id, sample, minute_now());
    }

    fn record_at(&self, instance_id: Uuid, sample: Sample, minute: u64) {
        let known = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&instance_id)
            .cloned();
        let series = known.unwrap_or_else(|| {
            let mut all = self.series.write().unwrap_or_else(|p| p.into_inner());
            // Instances not called for an hour have nothing left to show: forget them
            // (deleted ones among them) whenever a new one appears.
            all.retain(|_, s| {
                let last = s.lock().unwrap_or_else(|p| p.into_inner()).last;
                minute.saturating_sub(last) < MINUTES as u64
            });
            all.entry(instance_id)
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Series {
                        minutes: (0..MINUTES).map(|_| Minute::empty(u64::MAX)).collect(),
                        last: minute,
                    }))
                })
                .clone()
        });
        let mut series = series.lock().unwrap_or_else(|p| p.into_inner());
        series.last = series.last.max(minute);
        let slot = &mut series.minutes[(minute % MINUTES as u64) as usize];
        if slot.index != minute {
            *slot = Minute::empty(minute);
        }
        slot.requests += 1;
        slot.errors += u64::from(sample.error);
        slot.tokens_out += sample.tokens_out;
        slot.latency.observe(sample.latency);
        if let Some(ttft) = sample.first_token {
            slot.first_token.observe(ttft);
        }
    }

    /// The last `MINUTES` minutes, oldest first, the current one last; minutes without
    /// requests are there with zeros, so that a chart has a regular time axis.
    pub fn last_hour(&self, instance_id: Uuid) -> Vec<MinuteStats> {
        self.last_hour_at(instance_id, minute_now())
    }

    fn last_hour_at(&self, instance_id: Uuid, now: u64) -> Vec<MinuteStats> {
        let series = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&instance_id)
            .cloned();
        let copy: Vec<Minute> = series
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).minutes.clone())
            .unwrap_or_default();
        let first = now.saturating_sub(MINUTES as u64 - 1);
        (first..=now)
            .map(|index| {
                let found = copy
                    .get((index % MINUTES as u64) as usize)
                    .filter(|m| m.index == index);
                let start = i64::try_from(index * 60)
                    .ok()
                    .and_then(|s| DateTime::from_timestamp(s, 0))
                    .unwrap_or_default();
                match found {
                    Some(m) => MinuteStats {
                        start,
                        requests: m.requests,
                        errors: m.errors,
                        latency_p50_ms: m.latency.quantile_ms(0.5),
                        latency_p95_ms: m.latency.quantile_ms(0.95),
                        first_token_p50_ms: m.first_token.quantile_ms(0.5),
                        first_token_p95_ms: m.first_token.quantile_ms(0.95),
                        tokens_out: m.tokens_out,
                    },
                    None => MinuteStats {
                        start,
                        requests: 0,
                        errors: 0,
                        latency_p50_ms: None,
                        latency_p95_ms: None,
                        first_token_p50_ms: None,
                        first_token_p95_ms: None,
                        tokens_out: 0,
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(latency: u64, ttft: Option<u64>, error: bool) -> Sample {
        Sample {
            latency: ms(latency),
            first_token: ttft.map(ms),
            tokens_out: 3,
            error,
        }
    }

    #[test]
    fn minutes_percentiles_and_the_window() {
        let stats = InstanceStats::default();
        let id = Uuid::now_v7();
        let now = 29_000_000;
        // 100 requests this minute: 1..=100 ms; a stream among them.
        for n in 1..=100 {
            stats.record_at(id, sample(n, (n == 50).then_some(20), n == 7), now);
        }
        stats.record_at(id, sample(400, None, false), now - 2);
        // Older than the window: not shown.
        stats.record_at(id, sample(5, None, false), now - 61);

        let hour = stats.last_hour_at(id, now);
        assert_eq!(hour.len(), MINUTES);
        let last = &hour[MINUTES - 1];
        assert_eq!(last.start.timestamp(), (now * 60) as i64);
        assert_eq!((last.requests, last.errors, last.tokens_out), (100, 1, 300));
        let within = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!((got - want).abs() <= want * 0.15, "{got} vs {want}");
        };
        within(last.latency_p50_ms, 50.0);
        within(last.latency_p95_ms, 95.0);
        within(last.first_token_p50_ms, 20.0);
        assert_eq!(hour[MINUTES - 3].requests, 1);
        within(hour[MINUTES - 3].latency_p50_ms, 400.0);
        assert_eq!(hour[MINUTES - 2].requests, 0);
        assert_eq!(hour[MINUTES - 2].latency_p50_ms, None);
        assert_eq!(hour.iter().map(|m| m.requests).sum::<u64>(), 101);

        // An hour later the slots are reused, not added to.
        stats.record_at(id, sample(1, None, false), now + 60);
        let later = stats.last_hour_at(id, now + 60);
        assert_eq!(later.iter().map(|m| m.requests).sum::<u64>(), 1);
        assert!(
            stats
                .last_hour_at(Uuid::now_v7(), now)
                .iter()
                .all(|m| m.requests == 0)
        );
    }

    #[test]
    fn extremes_land_in_the_end_buckets() {
        let mut h = Histogram([0; BUCKETS]);
        h.observe(Duration::from_nanos(1));
        assert_eq!(h.quantile_ms(0.5), Some(FIRST_BOUND * 1000.0));
        let mut h = Histogram([0; BUCKETS]);
        h.observe(Duration::from_secs(100_000));
        assert!(h.quantile_ms(1.0).unwrap() > 600_000.0);
    }
}
