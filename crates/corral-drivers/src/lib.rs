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

#[async_trait]
pub trait ComputeDriver: Send + Sync + 'static {
    /// `local`, `ecs`, ...
    fn name(&self) -> &'static str;
    /// What can be launched (`GET /api/compute`); `launch` is only called with a spec
    /// that passed one of these offers' `validate`.
    fn offers(&self) -> Vec<ComputeOffer>;
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
    /// Replicas this driver is running that are not in `known` (left behind by a crash
    /// between launch and bookkeeping); the reconciler stops them.
    async fn orphans(&self, known: &[Uuid]) -> Result<Vec<ReplicaRef>>;
    /// Deletes what the driver kept of an instance after its replicas stopped (the
    /// local driver: its log files); the reconciler calls it once every replica is
    /// stopped, just before deleting the instance. Default: the driver keeps nothing
    /// of its own (ECS logs expire by the log group's retention).
    async fn forget_instance(&self, _instance_id: Uuid) -> Result<()> {
        Ok(())
    }
}
