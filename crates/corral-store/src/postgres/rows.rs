//! Decoding of this backend's rows into domain types. Ids and times are native
//! `uuid` and `timestamptz`; only enums need converting from text.

use corral_core::{
    ApiKey, AuditEntry, CatalogModel, ComputeSpec, Instance, InstanceEvent, InstanceSettings,
    LoginFailures, OutboxMessage, RefreshSession, Replica, UsageRow, User,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{ReplicaRun, Result, codec};

pub(super) fn user(row: &PgRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        role: codec::role(row.try_get("role")?)?,
        email_verified: row.try_get("email_verified")?,
        disabled: row.try_get("disabled")?,
        totp_secret: row.try_get("totp_secret")?,
        totp_enabled: row.try_get("totp_enabled")?,
        totp_last_step: row.try_get("totp_last_step")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_login_at: row.try_get("last_login_at")?,
    })
}

pub(super) fn login_failures(row: &PgRow) -> Result<LoginFailures> {
    Ok(LoginFailures {
        email: row.try_get("email")?,
        count: row.try_get("count")?,
        locked_until: row.try_get("locked_until")?,
    })
}

pub(super) fn session(row: &PgRow) -> Result<RefreshSession> {
    Ok(RefreshSession {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        family_id: row.try_get("family_id")?,
        token_hash: row.try_get("token_hash")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        replaced_at: row.try_get("replaced_at")?,
        revoked_at: row.try_get("revoked_at")?,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

pub(super) fn api_key(row: &PgRow) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        key_hash: row.try_get("key_hash")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

pub(super) fn audit_entry(row: &PgRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        actor_id: row.try_get("actor_id")?,
        actor_email: row.try_get("actor_email")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        ip: row.try_get("ip")?,
        outcome: codec::outcome(row.try_get("outcome")?)?,
        detail: row.try_get("detail")?,
        at: row.try_get("at")?,
    })
}

pub(super) fn outbox_message(row: &PgRow) -> Result<OutboxMessage> {
    Ok(OutboxMessage {
        id: row.try_get("id")?,
        to: row.try_get("to_addr")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
    })
}

fn get_u32(row: &PgRow, col: &str) -> Result<u32> {
    codec::unsigned32(row.try_get(col)?, col)
}

fn get_u64(row: &PgRow, col: &str) -> Result<u64> {
    codec::unsigned64(row.try_get(col)?, col)
}

pub(super) fn model(row: &PgRow) -> Result<CatalogModel> {
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

pub(super) fn instance(row: &PgRow) -> Result<Instance> {
    Ok(Instance {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
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
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_activity_at: row.try_get("last_activity_at")?,
        running_since: row.try_get("running_since")?,
        running_seconds: row.try_get("running_seconds")?,
    })
}

pub(super) fn event(row: &PgRow) -> Result<InstanceEvent> {
    Ok(InstanceEvent {
        id: row.try_get("id")?,
        instance_id: row.try_get("instance_id")?,
        at: row.try_get("at")?,
        from_state: codec::opt_state(row.try_get("from_state")?)?,
        to_state: codec::opt_state(row.try_get("to_state")?)?,
        message: row.try_get("message")?,
    })
}

pub(super) fn replica(row: &PgRow) -> Result<Replica> {
    Ok(Replica {
        id: row.try_get("id")?,
        instance_id: row.try_get("instance_id")?,
        driver_ref: row.try_get("driver_ref")?,
        endpoint: row.try_get("endpoint")?,
        state: codec::replica_state(row.try_get("state")?)?,
        restarts: get_u32(row, "restarts")?,
        started_at: row.try_get("started_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub(super) fn run(row: &PgRow) -> Result<ReplicaRun> {
    Ok(ReplicaRun {
        id: row.try_get("id")?,
        replica_id: row.try_get("replica_id")?,
        instance_id: row.try_get("instance_id")?,
        owner_id: row.try_get("owner_id")?,
        model_id: row.try_get("model_id")?,
        driver: row.try_get("driver")?,
        driver_ref: row.try_get("driver_ref")?,
        compute: codec::compute(row.try_get("compute")?)?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
    })
}

pub(super) fn usage_row(row: &PgRow) -> Result<UsageRow> {
    Ok(UsageRow {
        owner_id: row.try_get("owner_id")?,
        instance_id: row.try_get("instance_id")?,
        model_id: row.try_get("model_id")?,
        hour: row.try_get("hour")?,
        requests: get_u64(row, "requests")?,
        prompt_tokens: get_u64(row, "prompt_tokens")?,
        completion_tokens: get_u64(row, "completion_tokens")?,
    })
}
