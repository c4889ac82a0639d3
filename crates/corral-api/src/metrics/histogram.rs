//! A Prometheus histogram on atomics: observing is a search over a few bounds and two
//! atomic adds, with no lock and no allocation.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (`le`), ascending; the last count is the `+Inf` bucket.
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Relaxed);
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }

    /// The series of this histogram; `labels` is empty or `a="x",b="y"`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        render_series(
            out,
            name,
            labels,
            self.bounds,
            &cumulative(&counts),
            f64::from_bits(self.sum.load(Relaxed)),
        );
    }

    /// Nothing observed yet (such series are left out of the output).
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| c.load(Relaxed) == 0)
    }
}

fn cumulative(counts: &[u64]) -> Vec<u64> {
    counts
        .iter()
        .scan(0u64, |total, n| {
            *total += n;
            Some(*total)
        })
        .collect()
}

/// Writes `_bucket`, `_sum` and `_count` lines. `cumulative` has one count per bound,
/// then the total (the `+Inf` bucket).
pub fn render_series(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    cumulative: &[u64],
    sum: f64,
) {
    let sep = if labels.is_empty() { "" } else { "," };
    let count = cumulative.get(bounds.len()).copied().unwrap_or(0);
    for (bound, n) in bounds.iter().zip(cumulative) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
    let braces = |out: &mut String| {
        if !labels.is_empty() {
            let _ = write!(out, "{{{labels}}}");
        }
    };
    let _ = write!(out, "{name}_sum");
    braces(out);
    let _ = writeln!(out, " {sum}");
    let _ = write!(out, "{name}_count");
    braces(out);
    let _ = writeln!(out, " {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        static BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];
        let h = Histogram::new(&BOUNDS);
        assert!(h.is_empty());
        for v in [0.05, 0.1, 0.5, 20.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "route=\"/a\"");
        assert_eq!(
            out,
            "x_seconds_bucket{route=\"/a\",le=\"0.1\"} 2\n\
             x_seconds_bucket{route=\"/a\",le=\"1\"} 3\n\
             x_seconds_bucket{route=\"/a\",le=\"10\"} 3\n\
             x_seconds_bucket{route=\"/a\",le=\"+Inf\"} 4\n\
             x_seconds_sum{route=\"/a\"} 20.65\n\
             x_seconds_count{route=\"/a\"} 4\n"
        );
    }
}
