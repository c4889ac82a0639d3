//! Autoscaling on in-flight requests per ready replica, with stabilization windows so a
//! short burst or lull does not make replicas come and go (a model server takes
//! seconds to load, and a stopped one drops its warm cache).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// Add a replica when the average in-flight requests per ready replica stays at or
    /// above this for `up_window`.
    pub up_in_flight: f64,
    /// Remove one when it stays at or below this for `down_window`.
    pub down_in_flight: f64,
    pub up_window: Duration,
    pub down_window: Duration,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        ScalePolicy {
            up_in_flight: 3.0,
            down_in_flight: 0.5,
            up_window: Duration::from_secs(10),
            down_window: Duration::from_secs(60),
        }
    }
}

/// How long the load has been continuously high or low (one per instance, in memory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaleWindow {
    high_since: Option<Instant>,
    low_since: Option<Instant>,
}

/// What one sample of an instance looks like to the autoscaler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub in_flight: u32,
    /// Replicas serving now.
    pub ready: u32,
    /// Replicas the instance is meant to have now (`target_replicas`).
    pub target: u32,
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub target: u32,
    /// For the instance's timeline.
    pub reason: String,
}

/// Feeds one sample taken at `now` into `window` and says whether to change the
/// target. Each step is one replica, and the window restarts after a step, so the next
/// step needs a full window of its own evidence.
pub fn decide(
    policy: &ScalePolicy,
    window: &mut ScaleWindow,
    now: Instant,
    load: Load,
) -> Option<Decision> {
    // A running instance has at least one replica; `min_replicas = 0` means nothing more.
    let lo = load.min.max(1);
    let hi = load.max.max(lo);
    if load.target < lo || load.target > hi {
        *window = ScaleWindow::default();
        let target = load.target.clamp(lo, hi);
        return Some(Decision {
            target,
            reason: format!(
                "replica bounds are {lo}..={hi}: {} → {target} replica(s)",
                load.target
            ),
        });
    }
    if load.ready == 0 {
        *window = ScaleWindow::default();
        return None;
    }
    let avg = f64::from(load.in_flight) / f64::from(load.ready);
    if avg >= policy.up_in_flight && load.target < hi {
        window.low_since = None;
        let since = *window.high_since.get_or_insert(now);
        if now.duration_since(since) >= policy.up_window {
            *window = ScaleWindow::default();
            return Some(Decision {
                target: load.target + 1,
                reason: format!(
                    "autoscale up: {avg:.1} requests in flight per replica for {} s → {} replica(s)",
                    policy.up_window.as_secs(),
                    load.target + 1
                ),
            });
        }
    } else if avg <= policy.down_in_flight && load.target > lo {
        window.high_since = None;
        let since = *window.low_since.get_or_insert(now);
        if now.duration_since(since) >= policy.down_window {
            *window = ScaleWindow::default();
            return Some(Decision {
                target: load.target - 1,
                reason: format!(
                    "autoscale down: {avg:.1} requests in flight per replica for {} s → {} replica(s)",
                    policy.down_window.as_secs(),
                    load.target - 1
                ),
            });
        }
    } else {
        *window = ScaleWindow::default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy {
            up_in_flight: 3.0,
            down_in_flight: 0.5,
            up_window: Duration::from_secs(10),
            down_window: Duration::from_secs(60),
        }
    }

    fn load(in_flight: u32, ready: u32, target: u32) -> Load {
        Load {
            in_flight,
            ready,
            target,
            min: 1,
            max: 3,
        }
    }

    /// Feeds the same load every second for `secs` seconds; returns the first decision
    /// and the second it came at.
    fn run(w: &mut ScaleWindow, t0: Instant, secs: u64, l: Load) -> Option<(u64, Decision)> {
        (0..=secs)
            .find_map(|s| decide(&policy(), w, t0 + Duration::from_secs(s), l).map(|d| (s, d)))
    }

    #[test]
    fn scales_up_after_a_sustained_window() {
        let mut w = ScaleWindow::default();
        let (at, d) = run(&mut w, Instant::now(), 30, load(6, 1, 1)).expect("scale up");
        assert_eq!(at, 10, "after the 10 s window, not before");
        assert_eq!(d.target, 2);
        assert!(d.reason.contains("autoscale up"), "{}", d.reason);
    }

    #[test]
    fn a_short_burst_does_not_scale() {
        let mut w = ScaleWindow::default();
        let t0 = Instant::now();
        assert!(run(&mut w, t0, 8, load(6, 1, 1)).is_none());
        // One calm sample resets the window.
        assert!(
            decide(
                &policy(),
                &mut w,
                t0 + Duration::from_secs(9),
                load(1, 1, 1)
            )
            .is_none()
        );
        let later = t0 + Duration::from_secs(10);
        let (at, _) = run(&mut w, later, 30, load(6, 1, 1)).expect("eventually");
        assert_eq!(at, 10, "a fresh window starts after the reset");
    }

    #[test]
    fn scales_down_slowly_and_respects_bounds() {
        let mut w = ScaleWindow::default();
        let (at, d) = run(&mut w, Instant::now(), 120, load(0, 3, 3)).expect("scale down");
        assert_eq!((at, d.target), (60, 2));
        let mut w = ScaleWindow::default();
        assert!(
            run(&mut w, Instant::now(), 200, load(0, 1, 1)).is_none(),
            "never below min"
        );
        let mut w = ScaleWindow::default();
        assert!(
            run(&mut w, Instant::now(), 200, load(30, 3, 3)).is_none(),
            "never above max"
        );
    }

    #[test]
    fn averages_over_ready_replicas() {
        let mut w = ScaleWindow::default();
        // 5 in flight over 2 replicas is 2.5 per replica: below the threshold of 3.
        assert!(run(&mut w, Instant::now(), 60, load(5, 2, 2)).is_none());
        let (_, d) = run(&mut w, Instant::now(), 60, load(6, 2, 2)).expect("3 per replica");
        assert_eq!(d.target, 3);
        assert!(
            run(&mut w, Instant::now(), 60, load(9, 0, 2)).is_none(),
            "nothing ready: no decision"
        );
    }

    #[test]
    fn brings_the_target_within_new_bounds_at_once() {
        let mut w = ScaleWindow::default();
        let now = Instant::now();
        let d = decide(
            &policy(),
            &mut w,
            now,
            Load {
                min: 2,
                ..load(0, 1, 1)
            },
        )
        .unwrap();
        assert_eq!(d.target, 2);
        let d = decide(
            &policy(),
            &mut w,
            now,
            Load {
                max: 1,
                ..load(0, 3, 3)
            },
        )
        .unwrap();
        assert_eq!(d.target, 1);
        let d = decide(
            &policy(),
            &mut w,
            now,
            Load {
                min: 0,
                ..load(0, 0, 0)
            },
        )
        .unwrap();
        assert_eq!(d.target, 1, "a running instance has at least one replica");
    }
}
