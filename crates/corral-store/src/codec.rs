//! Conversions shared by every backend: enum columns stored as text, unsigned counts
//! stored as signed 64-bit integers, and the mapping of constraint violations to
//! `Error` variants.

use chrono::{DateTime, Utc};
use corral_core::{
    ComputeSpec, ComputeType, Desired, ModelSource, Outcome, ReplicaState, Role, State, TeamRole,
};

use crate::Error;

pub(crate) fn role(s: &str) -> Result<Role, Error> {
    s.parse().map_err(Error::Corrupt)
}

pub(crate) fn team_role(s: &str) -> Result<TeamRole, Error> {
    s.parse().map_err(Error::Corrupt)
}

pub(crate) fn outcome(s: &str) -> Result<Outcome, Error> {
    match s {
        "success" => Ok(Outcome::Success),
        "failure" => Ok(Outcome::Failure),
        other => Err(Error::Corrupt(format!("unknown audit outcome {other:?}"))),
    }
}

/// For an insert whose only expected failure is a duplicate: a unique violation (SQLite
/// 2067/1555, PostgreSQL 23505, as sqlx classifies them) becomes `Conflict(what)`.
pub(crate) fn conflict(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |err| match err.as_database_error() {
        Some(db) if db.is_unique_violation() => Error::Conflict(what),
        _ => Error::Database(err),
    }
}

/// For an insert or update that refers to other rows: a unique violation becomes
/// `Conflict(what)`, a foreign-key violation `UnknownReference(refers_to)`, a CHECK
/// violation `Invalid`.
pub(crate) fn write_error(
    what: &'static str,
    refers_to: &'static str,
) -> impl FnOnce(sqlx::Error) -> Error {
    move |err| match err.as_database_error() {
        Some(db) if db.is_unique_violation() => Error::Conflict(what),
        Some(db) if db.is_foreign_key_violation() => Error::UnknownReference(refers_to),
        Some(db) if db.is_check_violation() => {
            Error::Invalid(format!("{what} refused by the schema: {}", db.message()))
        }
        _ => Error::Database(err),
    }
}

/// For a delete that rows elsewhere may still refer to (`ON DELETE RESTRICT`): a
/// foreign-key violation becomes `InUse(sentence)`.
pub(crate) fn in_use(sentence: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |err| match err.as_database_error() {
        Some(db) if db.is_foreign_key_violation() || is_sqlite_restrict(db) => {
            Error::InUse(sentence)
        }
        _ => Error::Database(err),
    }
}

/// SQLite implements `ON DELETE RESTRICT` as a built-in trigger action, so it fails
/// with SQLITE_CONSTRAINT_TRIGGER (1811), not SQLITE_CONSTRAINT_FOREIGNKEY (787), and
/// sqlx does not classify it. The schema has no triggers of its own, and the message
/// is SQLite's fixed foreign-key text.
fn is_sqlite_restrict(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.code().as_deref() == Some("1811") && db.message() == "FOREIGN KEY constraint failed"
}

/// Clamps a caller's page size so a bad query parameter cannot ask for the whole table.
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 500))
}

// Column lists in the order the backends bind them on insert.

pub(crate) const USER_COLUMNS: &str = "id, email, display_name, password_hash, role, \
    email_verified, disabled, totp_secret, totp_enabled, totp_last_step, created_at, \
    updated_at, last_login_at";

pub(crate) const SESSION_COLUMNS: &str = "id, user_id, family_id, token_hash, created_at, \
    expires_at, replaced_at, revoked_at, ip, user_agent";

pub(crate) const API_KEY_COLUMNS: &str =
    "id, owner_id, name, prefix, key_hash, created_at, expires_at, last_used_at";

pub(crate) const MODEL_COLUMNS: &str = "id, family, size, cpu_supported, gpu_supported, \
    memory_required, expected_deploy_seconds, source, weights_bytes, builtin";

pub(crate) const INSTANCE_COLUMNS: &str = "id, owner_id, model_id, driver, compute_type, cpu, \
    memory, gpu_count, instance_type, spot, idle_timeout_seconds, min_replicas, max_replicas, \
    wake_on_request, desired, state, state_reason, target_replicas, created_at, updated_at, \
    last_activity_at, running_since, running_seconds, team_id";

pub(crate) const TEAM_COLUMNS: &str = "id, name, created_at";

pub(crate) const TEAM_MEMBER_COLUMNS: &str = "team_id, user_id, role, added_at";

pub(crate) const EVENT_COLUMNS: &str = "id, instance_id, from_state, to_state, message, at";

pub(crate) const REPLICA_COLUMNS: &str =
    "id, instance_id, driver_ref, endpoint, state, restarts, started_at, updated_at";

pub(crate) const RUN_COLUMNS: &str = "id, replica_id, instance_id, owner_id, model_id, driver, \
    driver_ref, compute, started_at, ended_at";

pub(crate) const USAGE_COLUMNS: &str =
    "owner_id, instance_id, model_id, hour, requests, prompt_tokens, completion_tokens";

// --- quotas ---

pub(crate) fn quota_json(quota: &corral_core::Quota) -> Result<String, Error> {
    serde_json::to_string(quota).map_err(|e| Error::Invalid(format!("quota: {e}")))
}

pub(crate) fn quota_from_json(text: &str) -> Result<corral_core::Quota, Error> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("quota {text:?}: {e}")))
}

// --- deployment enums and numbers ---

pub(crate) fn desired_str(desired: Desired) -> &'static str {
    match desired {
        Desired::Running => "running",
        Desired::Sleeping => "sleeping",
        Desired::Stopped => "stopped",
        Desired::Deleted => "deleted",
    }
}

pub(crate) fn desired(s: &str) -> Result<Desired, Error> {
    [
        Desired::Running,
        Desired::Sleeping,
        Desired::Stopped,
        Desired::Deleted,
    ]
    .into_iter()
    .find(|d| desired_str(*d) == s)
    .ok_or_else(|| Error::Corrupt(format!("unknown desired state {s:?}")))
}

pub(crate) fn state(s: &str) -> Result<State, Error> {
    use State::*;
    [
        Pending,
        Provisioning,
        Starting,
        Ready,
        Scaling,
        Stopping,
        Stopped,
        Sleeping,
        Failed,
    ]
    .into_iter()
    .find(|st| st.as_str() == s)
    .ok_or_else(|| Error::Corrupt(format!("unknown instance state {s:?}")))
}

pub(crate) fn opt_state(s: Option<&str>) -> Result<Option<State>, Error> {
    s.map(state).transpose()
}

pub(crate) fn replica_state_str(state: ReplicaState) -> &'static str {
    match state {
        ReplicaState::Starting => "starting",
        ReplicaState::Ready => "ready",
        ReplicaState::Unhealthy => "unhealthy",
        ReplicaState::Stopping => "stopping",
        ReplicaState::Exited => "exited",
        ReplicaState::Lost => "lost",
    }
}

pub(crate) fn replica_state(s: &str) -> Result<ReplicaState, Error> {
    use ReplicaState::*;
    [Starting, Ready, Unhealthy, Stopping, Exited, Lost]
        .into_iter()
        .find(|st| replica_state_str(*st) == s)
        .ok_or_else(|| Error::Corrupt(format!("unknown replica state {s:?}")))
}

pub(crate) fn compute_type(s: &str) -> Result<ComputeType, Error> {
    s.parse().map_err(Error::Corrupt)
}

pub(crate) fn source_json(source: &ModelSource) -> Result<String, Error> {
    serde_json::to_string(source).map_err(|e| Error::Invalid(format!("model source: {e}")))
}

pub(crate) fn source(json: &str) -> Result<ModelSource, Error> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("model source {json:?}: {e}")))
}

/// A run's compute is kept as the JSON of `ComputeSpec`: a snapshot that is only
/// ever read back whole, never queried by field.
pub(crate) fn compute_json(spec: &ComputeSpec) -> Result<String, Error> {
    serde_json::to_string(spec).map_err(|e| Error::Invalid(format!("compute spec: {e}")))
}

pub(crate) fn compute(json: &str) -> Result<ComputeSpec, Error> {
    serde_json::from_str(json).map_err(|e| Error::Corrupt(format!("compute spec {json:?}: {e}")))
}

/// Whether an instance in this state is running (billed): the cost clock runs
/// from entering one of these until entering a `stops_clock` state.
pub(crate) fn starts_clock(state: State) -> bool {
    matches!(state, State::Ready | State::Scaling)
}

pub(crate) fn stops_clock(state: State) -> bool {
    matches!(
        state,
        State::Stopping | State::Stopped | State::Sleeping | State::Failed
    )
}

/// The start of the hour `at` falls in (UTC), the key of the usage roll-up.
pub(crate) fn hour_start(at: DateTime<Utc>) -> DateTime<Utc> {
    const HOUR_MICROS: i64 = 3_600_000_000;
    let micros = at.timestamp_micros();
    DateTime::from_timestamp_micros(micros - micros.rem_euclid(HOUR_MICROS))
        .expect("an earlier hour of a valid time is valid")
}

/// An unsigned count as the signed 64-bit integer both databases store.
pub(crate) fn signed(value: u64, what: &str) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::Invalid(format!("{what} {value} is too large")))
}

pub(crate) fn unsigned32(value: i64, col: &str) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| Error::Corrupt(format!("{col}: {value} is not a u32")))
}

pub(crate) fn unsigned64(value: i64, col: &str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::Corrupt(format!("{col}: {value} is negative")))
}

pub(crate) const JOB_COLUMNS: &str = "id, kind, payload, status, attempts, next_attempt_at, \
     lease_until, claim_id, last_error, created_at, updated_at";

/// What `finish_job` writes for an outcome: the status, the next attempt's time (only
/// for a retry) and the error (None leaves the last one).
pub(crate) fn job_outcome(
    outcome: &crate::JobOutcome,
) -> (crate::JobStatus, Option<DateTime<Utc>>, Option<&str>) {
    use crate::{JobOutcome, JobStatus};
    match outcome {
        JobOutcome::Sent => (JobStatus::Sent, None, None),
        JobOutcome::Dropped => (JobStatus::Dropped, None, None),
        JobOutcome::Retry { at, error } => (JobStatus::Pending, Some(*at), Some(error)),
        JobOutcome::Failed { error } => (JobStatus::Failed, None, Some(error)),
    }
}

/// Claimed jobs in the order they were due (RETURNING has no ORDER BY).
pub(crate) fn oldest_due_first(mut jobs: Vec<crate::OutboundJob>) -> Vec<crate::OutboundJob> {
    jobs.sort_by_key(|j| (j.next_attempt_at, j.id));
    jobs
}
