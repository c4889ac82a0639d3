//! Knobs of the control loop. The defaults suit a server; tests shorten the windows.

use std::path::PathBuf;
use std::time::Duration;

use corral_core::{Limits, Quota};

use crate::autoscale::ScalePolicy;

#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Where relative `ModelSource::File` paths are resolved (the server's data dir).
    pub data_dir: PathBuf,
    /// How often every active instance is reconciled when nothing nudges it.
    pub tick: Duration,
    /// The faster cadence while an instance is on its way to ready (starting, scaling,
    /// a replica not yet healthy), so a deploy is not held back by the slow tick.
    pub fast_tick: Duration,
    /// Health checks of replicas that are already healthy (new ones are checked every
    /// fast tick until they answer).
    pub health_interval: Duration,
    /// Timeout of one `GET /api/version`.
    pub health_timeout: Duration,
    /// Consecutive failed health checks after which a healthy replica is replaced.
    pub unhealthy_after: u32,
    /// A launched replica that has not answered its health check by then counts as a
    /// failed start (large models on CPU load for minutes).
    pub start_timeout: Duration,
    /// Consecutive failed starts of a replica after which an instance with no healthy
    /// replica is marked failed.
    pub max_start_attempts: u32,
    /// Restart back-off: `backoff_base` doubled per consecutive failure, at most `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a stopping replica may finish its requests before it is killed.
    pub stop_grace: Duration,
    /// How long `wake` waits for a sleeping instance by default (the gateway's bound).
    pub wake_timeout: Duration,
    /// At most this often the gateway's in-memory activity time is written to the store.
    pub activity_flush: Duration,
    /// How often CPU/memory of each replica is sampled.
    pub resource_interval: Duration,
    /// How often the compute of every driver is searched for tasks or processes that
    /// no replica owns (they are stopped); the first sweep runs at start-up.
    pub sweep_interval: Duration,
    pub autoscale: ScalePolicy,
    /// Decoding parameters of the model server (which server runs is the driver's
    /// choice: `ComputeDriver::runtime`).
    pub parallel: u32,
    pub context: u32,
    /// The quota of every user and team for the fields an admin did not set.
    pub quota_defaults: Quota,
    /// This host's capacity for the local driver's replicas (None: not committed).
    pub host: Option<HostCapacity>,
}

/// What the local driver may commit on this machine: total memory less a reserve for
/// `corral serve` itself, and the vCPUs. Kept in the store under `name`, so several
/// servers on one host share one set of counters.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCapacity {
    pub name: String,
    pub milli_vcpu: i64,
    pub memory_mib: i64,
}

impl HostCapacity {
    pub fn limits(&self) -> Limits {
        Limits {
            milli_vcpu: Some(self.milli_vcpu),
            memory_mib: Some(self.memory_mib),
            ..Limits::default()
        }
    }
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            data_dir: PathBuf::from(".corral"),
            tick: Duration::from_secs(1),
            fast_tick: Duration::from_millis(200),
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(2),
            unhealthy_after: 3,
            start_timeout: Duration::from_secs(600),
            max_start_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
            wake_timeout: Duration::from_secs(120),
            activity_flush: Duration::from_secs(5),
            resource_interval: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(300),
            autoscale: ScalePolicy::default(),
            parallel: 4,
            context: 4096,
            quota_defaults: Quota::default(),
            host: None,
        }
    }
}
