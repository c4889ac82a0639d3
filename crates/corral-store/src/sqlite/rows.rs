//! How this backend stores ids and times (see the migration's header), and the
//! decoding of its rows into domain types.

use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, CatalogModel, ComputeSpec, Instance, InstanceEvent, InstanceSettings,
    LoginFailures, OutboxMessage, RefreshSession, Replica, UsageRow, User,
};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::{Error, ReplicaRun, Result, codec};

/// Ids are bound as hyphenated text.
pub(super) fn id(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

/// Times are bound as microseconds since the epoch.
pub(super) fn ts(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(super) fn opt_ts(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(ts)
}

fn get_uuid(row: &SqliteRow, col: &str) -> Result<Uuid> {
    Ok(row.try_get::<Hyphenated, _>(col)?.into_uuid())
}

fn get_opt_uuid(row: &SqliteRow, col: &str) -> Result<Option<Uuid>> {
    Ok(row
        .try_get::<Option<Hyphenated>, _>(col)?
        .map(Hyphenated::into_uuid))
}

fn micros(col: &str, v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| Error::Corrupt(format!("{col}: timestamp {v} out of range")))
}

fn get_ts(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>> {
    micros(col, row.try_get(col)?)
}

fn get_opt_ts(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    row.try_get::<Option<i64>, _>(col)?
        .map(|v| micros(col, v))
        .transpose()
}

pub(super) fn user(row: &SqliteRow) -> Result<User> {
    Ok(User {
        id: get_uuid(row, "id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        role: codec::role(row.try_get("role")?)?,
        email_verified: row.try_get("email_verified")?,
        disabled: row.try_get("disabled")?,
        totp_secret: row.try_get("totp_secret")?,
        totp_enabled: row.try_get("totp_enabled")?,
        totp_last_step: row.try_get("totp_last_step")?,
        created_at: get_ts(row, "created_at")?,
        updated_at: get_ts(row, "updated_at")?,
        last_login_at: get_opt_ts(row, "last_login_at")?,
    })
}

pub(super) fn login_failures(row: &SqliteRow) -> Result<LoginFailures> {
    Ok(LoginFailures {
        email: row.try_get("email")?,
        count: row.try_get("count")?,
        locked_until: get_opt_ts(row, "locked_until")?,
    })
}

pub(super) fn session(row: &SqliteRow) -> Result<RefreshSession> {
    Ok(RefreshSession {
        id: get_uuid(row, "id")?,
        user_id: get_uuid(row, "user_id")?,
        family_id: get_uuid(row, "family_id")?,
        token_hash: row.try_get("token_hash")?,
        created_at: get_ts(row, "created_at")?,
        expires_at: get_ts(row, "expires_at")?,
        replaced_at: get_opt_ts(row, "replaced_at")?,
        revoked_at: get_opt_ts(row, "revoked_at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

pub(super) fn api_key(row: &SqliteRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: get_uuid(row, "id")?,
        owner_id: get_uuid(row, "owner_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        key_hash: row.try_get("key_hash")?,
        created_at: get_ts(row, "created_at")?,
        expires_at: get_opt_ts(row, "expires_at")?,
        last_used_at: get_opt_ts(row, "last_used_at")?,
    })
}

pub(super) fn audit_entry(row: &SqliteRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        actor_id: get_opt_uuid(row, "actor_id")?,
        actor_email: row.try_get("actor_email")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        ip: row.try_get("ip")?,
        outcome: codec::outcome(row.try_get("outcome")?)?,
        detail: row.try_get("detail")?,
        at: get_ts(row, "at")?,
    })
}

pub(super) fn outbox_message(row: &SqliteRow) -> Result<OutboxMessage> {
    Ok(OutboxMessage {
        id: get_uuid(row, "id")?,
        to: row.try_get("to_addr")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        created_at: get_ts(row, "created_at")?,
    })
}

fn get_u32(row: &SqliteRow, col: &str) -> Result<u32> {
    codec::unsigned32(row.try_get(col)?, col)
}

fn get_u64(row: &SqliteRow, col: &str) -> Result<u64> {
    codec::unsigned64(row.try_get(col)?, col)
}

pub(super) fn model(row: &SqliteRow) -> Result<CatalogModel> {
    Ok(CatalogModel {
        id: row.try_get("id")?,
        family: row.try_get("family")?,
        size: row.try_get("size")?,
        cpu_supported: row.try_get("cpu_supported")?,
        gpu_supported: row.try_get("gpu_supported")?,
        memory_required: get_u32(row, "memory_required")?,
        expected_deploy_seconds: get_u32(row, "expected_deploy_seconds")?,
        source: codec::source(row.try_get("source")?)?,
        weights_bytes: row
            .try_get::<Option<i64>, _>("weights_bytes")?
            .map(|v| codec::unsigned64(v, "weights_bytes"))
            .transpose()?,
        builtin: row.try_get("builtin")?,
    })
}

pub(super) fn instance(row: &SqliteRow) -> Result<Instance> {
    Ok(Instance {
        id: get_uuid(row, "id")?,
        owner_id: get_uuid(row, "owner_id")?,
        model_id: row.try_get("model_id")?,
        driver: row.try_get("driver")?,
        compute: ComputeSpec {
            compute_type: codec::compute_type(row.try_get("compute_type")?)?,
            cpu: row.try_get("cpu")?,
            memory: get_u32(row, "memory")?,
            gpu_count: get_u32(row, "gpu_count")?,
            instance_type: row.try_get("instance_type")?,
            spot: row.try_get("spot")?,
        },
        settings: InstanceSettings {
            idle_timeout_seconds: get_u32(row, "idle_timeout_seconds")?,
            min_replicas: get_u32(row, "min_replicas")?,
            max_replicas: get_u32(row, "max_replicas")?,
            wake_on_request: row.try_get("wake_on_request")?,
        },
        desired: codec::desired(row.try_get("desired")?)?,
        state: codec::state(row.try_get("state")?)?,
        state_reason: row.try_get("state_reason")?,
        target_replicas: get_u32(row, "target_replicas")?,
        created_at: get_ts(row, "created_at")?,
        updated_at: get_ts(row, "updated_at")?,
        last_activity_at: get_ts(row, "last_activity_at")?,
        running_since: get_opt_ts(row, "running_since")?,
        running_seconds: row.try_get("running_seconds")?,
    })
}

pub(super) fn event(row: &SqliteRow) -> Result<InstanceEvent> {
    Ok(InstanceEvent {
        id: row.try_get("id")?,
        instance_id: get_uuid(row, "instance_id")?,
        at: get_ts(row, "at")?,
        from_state: codec::opt_state(row.try_get("from_state")?)?,
        to_state: codec::opt_state(row.try_get("to_state")?)?,
        message: row.try_get("message")?,
    })
}

pub(super) fn replica(row: &SqliteRow) -> Result<Replica> {
    Ok(Replica {
        id: get_uuid(row, "id")?,
        instance_id: get_uuid(row, "instance_id")?,
        driver_ref: row.try_get("driver_ref")?,
        endpoint: row.try_get("endpoint")?,
        state: codec::replica_state(row.try_get("state")?)?,
        restarts: get_u32(row, "restarts")?,
        started_at: get_ts(row, "started_at")?,
        updated_at: get_ts(row, "updated_at")?,
    })
}

pub(super) fn run(row: &SqliteRow) -> Result<ReplicaRun> {
    Ok(ReplicaRun {
        id: get_uuid(row, "id")?,
        replica_id: get_uuid(row, "replica_id")?,
        instance_id: get_uuid(row, "instance_id")?,
        owner_id: get_uuid(row, "owner_id")?,
        model_id: row.try_get("model_id")?,
        driver: row.try_get("driver")?,
        driver_ref: row.try_get("driver_ref")?,
        compute: codec::compute(row.try_get("compute")?)?,
        started_at: get_ts(row, "started_at")?,
        ended_at: get_opt_ts(row, "ended_at")?,
    })
}

pub(super) fn usage_row(row: &SqliteRow) -> Result<UsageRow> {
    Ok(UsageRow {
        owner_id: get_uuid(row, "owner_id")?,
        instance_id: get_uuid(row, "instance_id")?,
        model_id: row.try_get("model_id")?,
        hour: get_ts(row, "hour")?,
        requests: get_u64(row, "requests")?,
        prompt_tokens: get_u64(row, "prompt_tokens")?,
        completion_tokens: get_u64(row, "completion_tokens")?,
    })
}
