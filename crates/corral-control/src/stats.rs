//! Counters the API's `/metrics` reads: kept in memory by the reconciler, so a scrape
//! costs no store query.

use serde::Serialize;

use corral_core::State;

/// Upper bounds (seconds) of the deploy-duration buckets: the demo model is ready in a
/// few seconds, a 13B model pulled from a registry in minutes.
pub const DEPLOY_BUCKETS: [f64; 10] =
    [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

const ALL_STATES: [State; 9] = [
    State::Pending,
    State::Provisioning,
    State::Starting,
    State::Ready,
    State::Scaling,
    State::Stopping,
    State::Stopped,
    State::Sleeping,
    State::Failed,
];

/// A Prometheus-style histogram.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// Upper bound of each bucket (`le`), ascending; `+Inf` is implied by `count`.
    pub bounds: Vec<f64>,
    /// Observations `<=` each bound (cumulative, as Prometheus exposes them).
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            cumulative: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, n) in self.bounds.iter().zip(&mut self.cumulative) {
            if value <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }
}

/// A snapshot for `/metrics` and the admin dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlStats {
    /// Every state, with zero for the empty ones (so a gauge drops back to 0).
    pub instances_by_state: Vec<(State, u64)>,
    /// Replicas serving traffic now.
    pub ready_replicas: u64,
    /// Seconds from `pending` to `ready` of each deploy or wake since this server started.
    pub deploy_seconds: Histogram,
    /// The latest deploy durations, oldest first (at most `RECENT_DEPLOYS`).
    pub recent_deploy_seconds: Vec<f64>,
    /// Replicas relaunched after they crashed or failed health checks.
    pub restarts_total: u64,
    /// Sleeping instances woken by a gateway request.
    pub wakes_total: u64,
    /// Instances stopped or put to sleep for being idle.
    pub idle_shutdowns_total: u64,
}

pub const RECENT_DEPLOYS: usize = 20;

/// The mutable side, behind the controller's mutex.
#[derive(Debug)]
pub(crate) struct Counters {
    deploys: Histogram,
    recent: std::collections::VecDeque<f64>,
    pub restarts: u64,
    pub wakes: u64,
    pub idle_shutdowns: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            deploys: Histogram::new(&DEPLOY_BUCKETS),
            recent: Default::default(),
            restarts: 0,
            wakes: 0,
            idle_shutdowns: 0,
        }
    }
}

impl Counters {
    pub fn deployed(&mut self, seconds: f64) {
        self.deploys.observe(seconds);
        if self.recent.len() == RECENT_DEPLOYS {
            self.recent.pop_front();
        }
        self.recent.push_back(seconds);
    }

    pub fn snapshot(
        &self,
        states: impl Iterator<Item = State>,
        ready_replicas: u64,
    ) -> ControlStats {
        let mut by_state: Vec<(State, u64)> = ALL_STATES.iter().map(|s| (*s, 0)).collect();
        for state in states {
            if let Some((_, n)) = by_state.iter_mut().find(|(s, _)| *s == state) {
                *n += 1;
            }
        }
        ControlStats {
            instances_by_state: by_state,
            ready_replicas,
            deploy_seconds: self.deploys.clone(),
            recent_deploy_seconds: self.recent.iter().copied().collect(),
            restarts_total: self.restarts,
            wakes_total: self.wakes,
            idle_shutdowns_total: self.idle_shutdowns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut c = Counters::default();
        for s in [0.5, 3.0, 3.5, 700.0, 5000.0] {
            c.deployed(s);
        }
        let snap = c.snapshot([State::Ready, State::Ready, State::Failed].into_iter(), 2);
        let h = &snap.deploy_seconds;
        assert_eq!(h.count, 5);
        assert_eq!(h.cumulative[0], 1, "<= 1 s");
        assert_eq!(h.cumulative[2], 3, "<= 5 s");
        assert_eq!(*h.cumulative.last().unwrap(), 4, "5000 s only in +Inf");
        assert_eq!(h.sum, 5707.0);
        let ready = snap
            .instances_by_state
            .iter()
            .find(|(s, _)| *s == State::Ready);
        assert_eq!(ready, Some(&(State::Ready, 2)));
        assert_eq!(snap.instances_by_state.len(), 9, "every state listed");
    }

    #[test]
    fn keeps_the_latest_deploys() {
        let mut c = Counters::default();
        for i in 0..(RECENT_DEPLOYS + 5) {
            c.deployed(i as f64);
        }
        let recent = c.snapshot(std::iter::empty(), 0).recent_deploy_seconds;
        assert_eq!(recent.len(), RECENT_DEPLOYS);
        assert_eq!(recent[0], 5.0);
    }
}
