//! Compute drivers turn a launch spec into running replicas of a model server and
//! report what they observe. The reconciler is their only caller; it owns all state
//! transitions and persists every `ReplicaRef` so a restarted server can find its
//! replicas again.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::{ComputeOffer, ComputeSpec, ModelSource};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

mod error;
pub mod local;

pub use error::{Error, Result};

/// Which model server a replica runs. Both speak Ollama's API, so the gateway does not care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// `corral-runner` (llama.cpp), the default.
    CorralRunner,
    /// `ollama serve`, where installed (local) or the `ollama/ollama` image (ECS).
    Ollama,
}

/// Everything a driver needs to start one replica.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub instance_id: Uuid,
    pub replica_id: Uuid,
    /// Which launch of the replica this is (0 first, then its restart count): with the
    /// replica id it names one launch, so a retried call can be recognised as the same
    /// one (ECS's RunTask idempotency token).
    pub launch: u32,
    /// Catalog id, e.g. `smollm2:135m`; the name the replica serves the model under.
    pub model_id: String,
    pub source: ModelSource,
    /// The GGUF on this machine, when the weights are local (the local driver needs it).
    pub model_path: Option<PathBuf>,
    pub compute: ComputeSpec,
    pub runtime: Runtime,
    /// Concurrent sequences the model server decodes together.
    pub parallel: u32,
    /// Context window in tokens.
    pub context: u32,
}

/// How to find a replica again: stored with the replica row, opaque to everyone but the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRef {
    pub instance_id: Uuid,
    pub replica_id: Uuid,
    pub driver_ref: String,
}

/// What a driver sees of a replica right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// Launched; not serving yet (process starting, task PROVISIONING/PENDING).
    Starting,
    /// Running, serving its API at `endpoint` (health is checked by the reconciler).
    Running { endpoint: String },
    /// Ended on its own or was stopped.
    Exited { reason: String },
    /// The driver cannot find it any more (e.g. the host rebooted).
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ResourceUsage {
    /// Percent of one core, averaged since the previous sample.
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub at: Option<DateTime<Utc>>,
    pub replica_id: Uuid,
    pub line: String,
}

/// A page of log lines and the cursor to continue from (for follow).
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    pub next: Option<String>,
}

/// Whether a replica found running belongs to one the store knows: the same replica
/// with the same driver reference, or the same replica while its launch is in flight
/// (no reference recorded yet). A second task or process of a known replica is not
/// owned: only the one its row names is billed, routed and ever stopped.
pub fn is_owned(known: &[ReplicaRef], found: &ReplicaRef) -> bool {
    known.iter().any(|k| {
        k.replica_id == found.replica_id
            && (k.driver_ref.is_empty() || k.driver_ref == found.driver_ref)
    })
}

#[async_trait]
pub trait ComputeDriver: Send + Sync + 'static {
    /// `local`, `ecs`, ...
    fn name(&self) -> &'static str;
    /// What can be launched (`GET /api/compute`); `launch` is only called with a spec
    /// that passed one of these offers' `validate`.
    fn offers(&self) -> Vec<ComputeOffer>;
    /// Whether `launch` reads `LaunchSpec::model_path`: only then does the control plane
    /// fetch the weights onto its own disk. A driver whose replicas fetch the model
    /// themselves (ECS tasks pull from the registry) says false, so a deploy neither
    /// waits for nor fills the control plane's disk with weights it never reads.
    fn reads_model_path(&self) -> bool {
        true
    }
    /// The model server this driver's replicas run, from its own configuration (the ECS
    /// driver runs the Ollama image unless a runner image is configured). Default:
    /// corral-runner, which the local driver always has.
    fn runtime(&self) -> Runtime {
        Runtime::CorralRunner
    }
    /// Whether this driver's replicas can get the model from `source` at all with
    /// `runtime`; the API refuses a deploy that fails this before creating anything.
    /// Default: yes (the local driver reads any GGUF the control plane resolves).
    fn check_model(&self, _model_id: &str, _source: &ModelSource, _runtime: Runtime) -> Result<()> {
        Ok(())
    }
    /// Starts one replica and returns how to find it. Must not block until ready.
    async fn launch(&self, spec: &LaunchSpec) -> Result<ReplicaRef>;
    async fn observe(&self, replica: &ReplicaRef) -> Result<Observed>;
    /// Asks the replica to stop, and forces it after `grace`.
    async fn stop(&self, replica: &ReplicaRef, grace: Duration) -> Result<()>;
    /// Log lines after `cursor` (None: the last `tail` lines).
    async fn logs(
        &self,
        replica: &ReplicaRef,
        cursor: Option<&str>,
        tail: usize,
    ) -> Result<LogPage>;
    /// Log lines of every replica the instance has had, stopped and replaced ones too
    /// while the driver still keeps their logs, after `cursor` (None: the last `tail`
    /// lines), in time order. None: this driver reads logs per replica only (`logs`).
    async fn instance_logs(
        &self,
        _instance_id: Uuid,
        _cursor: Option<&str>,
        _tail: usize,
    ) -> Result<Option<LogPage>> {
        Ok(None)
    }
    /// CPU and memory of the replica, where the driver can see them.
    async fn resources(&self, replica: &ReplicaRef) -> Result<Option<ResourceUsage>>;
    /// Replicas this driver is running that no entry of `known` owns (see [`is_owned`]):
    /// left behind by a crash between launch and bookkeeping, by a relaunch of a lost
    /// replica, or by a retried launch. The reconciler stops them.
    async fn orphans(&self, known: &[ReplicaRef]) -> Result<Vec<ReplicaRef>>;
    /// Deletes what the driver kept of an instance after its replicas stopped (the
    /// local driver: its log files); the reconciler calls it once every replica is
    /// stopped, just before deleting the instance. Default: the driver keeps nothing
    /// of its own (ECS logs expire by the log group's retention).
    async fn forget_instance(&self, _instance_id: Uuid) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(replica_id: Uuid, driver_ref: &str) -> ReplicaRef {
        ReplicaRef {
            instance_id: Uuid::nil(),
            replica_id,
            driver_ref: driver_ref.into(),
        }
    }

    #[test]
    fn only_the_recorded_launch_of_a_known_replica_is_owned() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let known = [r(a, "task/1"), r(b, "")];
        assert!(is_owned(&known, &r(a, "task/1")));
        // A twin or the task of an earlier launch of the same replica.
        assert!(!is_owned(&known, &r(a, "task/2")));
        // b's launch is in flight: whatever it started is its own until recorded.
        assert!(is_owned(&known, &r(b, "task/3")));
        assert!(!is_owned(&known, &r(Uuid::now_v7(), "task/1")));
        assert!(!is_owned(&[], &r(a, "task/1")));
    }
}
