//! Instances (a deployed model), their replicas, lifecycle events and usage.
//!
//! `desired` is what the user asked for; `state` is what the reconciler observed.
//! API calls change only `desired`; only the reconciler moves `state`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::compute::ComputeSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    /// Scaled to zero; wakes on the next gateway request when `wake_on_request`.
    Sleeping,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Provisioning,
    Starting,
    Ready,
    Scaling,
    Stopping,
    Stopped,
    Sleeping,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Provisioning => "provisioning",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Scaling => "scaling",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Sleeping => "sleeping",
            State::Failed => "failed",
        }
    }

    /// No replica should be running in this state.
    pub fn is_at_rest(self) -> bool {
        matches!(self, State::Stopped | State::Sleeping | State::Failed)
    }

    /// Whether the lifecycle allows going from `self` to `to` (the reconciler's guard).
    pub fn can_move_to(self, to: State) -> bool {
        use State::*;
        if to == Failed {
            return true;
        }
        matches!(
            (self, to),
            (Pending, Provisioning)
                | (Provisioning, Starting)
                | (Starting, Ready)
                | (Ready, Scaling)
                | (Scaling, Ready)
                | (Ready, Starting)
                | (
                    Pending | Provisioning | Starting | Ready | Scaling | Failed,
                    Stopping
                )
                | (Stopping, Stopped | Sleeping)
                // Nothing runs while asleep, so stopping a sleeping instance is immediate.
                | (Sleeping, Stopped)
                | (Stopped | Sleeping | Failed, Pending)
        )
    }
}

/// Per-instance behaviour the owner can tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceSettings {
    /// Stop (or sleep) after this many seconds without a request; 0 disables.
    pub idle_timeout_seconds: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// When idle, sleep (and start again on the next request) instead of stopping.
    pub wake_on_request: bool,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        InstanceSettings {
            idle_timeout_seconds: 30 * 60,
            min_replicas: 1,
            max_replicas: 1,
            wake_on_request: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: Uuid,
    /// The user who deployed it (and is billed for it when it has no team).
    pub owner_id: Uuid,
    /// The team it belongs to, if deployed for one: every member may use it, the
    /// team's owners may manage it. Fixed at deploy time.
    pub team_id: Option<Uuid>,
    pub model_id: String,
    /// Name of the compute driver (`local`, `ecs`).
    pub driver: String,
    pub compute: ComputeSpec,
    pub settings: InstanceSettings,
    pub desired: Desired,
    pub state: State,
    /// Why it failed, or other context for the current state.
    pub state_reason: Option<String>,
    /// Replica count the autoscaler wants now (between min and max).
    pub target_replicas: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Last gateway request, for idle shutdown.
    pub last_activity_at: DateTime<Utc>,
    /// Time accounting for cost: accumulated running seconds plus the current run's start.
    pub running_since: Option<DateTime<Utc>>,
    pub running_seconds: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    Starting,
    Ready,
    Unhealthy,
    Stopping,
    Exited,
    Lost,
}

/// One running copy of an instance's model server.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub id: Uuid,
    pub instance_id: Uuid,
    /// What the driver needs to find it again after a restart (pid, task ARN).
    pub driver_ref: String,
    /// Base URL of its Ollama-compatible API, once known.
    pub endpoint: Option<String>,
    pub state: ReplicaState,
    pub restarts: u32,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One lifecycle transition or notable event (the UI's timeline).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct InstanceEvent {
    pub id: i64,
    pub instance_id: Uuid,
    pub at: DateTime<Utc>,
    pub from_state: Option<State>,
    pub to_state: Option<State>,
    pub message: String,
}

/// Usage of one or more gateway requests of one owner, instance and model, rolled up
/// per hour by the store. The gateway sums a second's requests per hourly bucket and
/// writes them as one sample, so `requests` may be more than one; the tokens are the
/// totals of those requests.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSample {
    pub owner_id: Uuid,
    pub instance_id: Uuid,
    pub model_id: String,
    pub at: DateTime<Utc>,
    /// How many requests this sample counts: at least one (the store refuses zero).
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Usage rolled up per owner, instance, model and hour.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UsageRow {
    pub owner_id: Uuid,
    pub instance_id: Uuid,
    pub model_id: String,
    pub hour: DateTime<Utc>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_guard() {
        assert!(State::Pending.can_move_to(State::Provisioning));
        assert!(State::Starting.can_move_to(State::Ready));
        assert!(State::Ready.can_move_to(State::Stopping));
        assert!(State::Stopping.can_move_to(State::Sleeping));
        assert!(State::Sleeping.can_move_to(State::Pending));
        assert!(State::Sleeping.can_move_to(State::Stopped));
        assert!(State::Starting.can_move_to(State::Failed));
        assert!(!State::Stopped.can_move_to(State::Ready));
        assert!(!State::Pending.can_move_to(State::Ready));
    }
}
