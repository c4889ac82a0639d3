//! Decoding of rows into domain types, once for both databases: `RowExt` reads a
//! column the same way from a SQLite and a PostgreSQL row, ids and times through the
//! `DbId`/`DbTime` newtypes that know each database's encoding.

use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, CatalogModel, ComputeSpec, Instance, InstanceEvent, InstanceSettings,
    LoginFailures, Membership, OutboxMessage, RefreshSession, Replica, Team, TeamMember, UsageRow,
    User,
};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Postgres, Row, Sqlite, Type};
use uuid::Uuid;

use super::value::{DbId, DbTime, TimeOutOfRange};
use crate::{Error, ReplicaRun, Result, codec};

/// A value a column of either database decodes to. Naming both databases here (rather
/// than bounding the generic store by every column type) keeps the store's bounds to
/// `Row: RowExt`.
pub trait Column: Sized {
    fn from_sqlite(row: &SqliteRow, col: &str) -> sqlx::Result<Self>;
    fn from_postgres(row: &PgRow, col: &str) -> sqlx::Result<Self>;
}

impl<T> Column for T
where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>,
{
    fn from_sqlite(row: &SqliteRow, col: &str) -> sqlx::Result<Self> {
        row.try_get(col)
    }
    fn from_postgres(row: &PgRow, col: &str) -> sqlx::Result<Self> {
        row.try_get(col)
    }
}

/// Typed column reads on a row of either database.
pub trait RowExt {
    fn column<T: Column>(&self, col: &str) -> sqlx::Result<T>;

    fn get<T: Column>(&self, col: &str) -> Result<T> {
        self.column(col).map_err(|err| corrupt_time(col, err))
    }
    fn id(&self, col: &str) -> Result<Uuid> {
        Ok(self.get::<DbId>(col)?.0)
    }
    fn opt_id(&self, col: &str) -> Result<Option<Uuid>> {
        Ok(self.get::<Option<DbId>>(col)?.map(|id| id.0))
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        Ok(self.get::<DbTime>(col)?.0)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.get::<Option<DbTime>>(col)?.map(|at| at.0))
    }
    fn u32(&self, col: &str) -> Result<u32> {
        codec::unsigned32(self.get(col)?, col)
    }
    fn u64(&self, col: &str) -> Result<u64> {
        codec::unsigned64(self.get(col)?, col)
    }
}

impl RowExt for SqliteRow {
    fn column<T: Column>(&self, col: &str) -> sqlx::Result<T> {
        T::from_sqlite(self, col)
    }
}

impl RowExt for PgRow {
    fn column<T: Column>(&self, col: &str) -> sqlx::Result<T> {
        T::from_postgres(self, col)
    }
}

/// A stored time `DateTime` cannot hold is a corrupt row, not a database failure.
fn corrupt_time(col: &str, err: sqlx::Error) -> Error {
    if let sqlx::Error::ColumnDecode { source, .. } = &err
        && let Some(TimeOutOfRange(micros)) = source.downcast_ref::<TimeOutOfRange>()
    {
        return Error::Corrupt(format!("{col}: timestamp {micros} out of range"));
    }
    Error::Database(err)
}

pub(crate) fn user(row: &impl RowExt) -> Result<User> {
    Ok(User {
        id: row.id("id")?,
        email: row.get("email")?,
        display_name: row.get("display_name")?,
        password_hash: row.get("password_hash")?,
        role: codec::role(&row.get::<String>("role")?)?,
        email_verified: row.get("email_verified")?,
        disabled: row.get("disabled")?,
        totp_secret: row.get("totp_secret")?,
        totp_enabled: row.get("totp_enabled")?,
        totp_last_step: row.get("totp_last_step")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        last_login_at: row.opt_time("last_login_at")?,
    })
}

pub(crate) fn login_failures(row: &impl RowExt) -> Result<LoginFailures> {
    Ok(LoginFailures {
        email: row.get("email")?,
        count: row.get("count")?,
        locked_until: row.opt_time("locked_until")?,
    })
}

pub(crate) fn session(row: &impl RowExt) -> Result<RefreshSession> {
    Ok(RefreshSession {
        id: row.id("id")?,
        user_id: row.id("user_id")?,
        family_id: row.id("family_id")?,
        token_hash: row.get("token_hash")?,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
        replaced_at: row.opt_time("replaced_at")?,
        revoked_at: row.opt_time("revoked_at")?,
        ip: row.get("ip")?,
        user_agent: row.get("user_agent")?,
    })
}

pub(crate) fn api_key(row: &impl RowExt) -> Result<ApiKey> {
    Ok(ApiKey {
        id: row.id("id")?,
        owner_id: row.id("owner_id")?,
        name: row.get("name")?,
        prefix: row.get("prefix")?,
        key_hash: row.get("key_hash")?,
        created_at: row.time("created_at")?,
        expires_at: row.opt_time("expires_at")?,
        last_used_at: row.opt_time("last_used_at")?,
    })
}

pub(crate) fn audit_entry(row: &impl RowExt) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: row.get("id")?,
        actor_id: row.opt_id("actor_id")?,
        actor_email: row.get("actor_email")?,
        action: row.get("action")?,
        target: row.get("target")?,
        ip: row.get("ip")?,
        outcome: codec::outcome(&row.get::<String>("outcome")?)?,
        detail: row.get("detail")?,
        at: row.time("at")?,
    })
}

pub(crate) fn outbox_message(row: &impl RowExt) -> Result<OutboxMessage> {
    Ok(OutboxMessage {
        id: row.id("id")?,
        to: row.get("to_addr")?,
        subject: row.get("subject")?,
        body: row.get("body")?,
        created_at: row.time("created_at")?,
    })
}

pub(crate) fn model(row: &impl RowExt) -> Result<CatalogModel> {
    Ok(CatalogModel {
        id: row.get("id")?,
        family: row.get("family")?,
        size: row.get("size")?,
        cpu_supported: row.get("cpu_supported")?,
        gpu_supported: row.get("gpu_supported")?,
        memory_required: row.u32("memory_required")?,
        expected_deploy_seconds: row.u32("expected_deploy_seconds")?,
        source: codec::source(&row.get::<String>("source")?)?,
        weights_bytes: row
            .get::<Option<i64>>("weights_bytes")?
            .map(|v| codec::unsigned64(v, "weights_bytes"))
            .transpose()?,
        builtin: row.get("builtin")?,
    })
}

pub(crate) fn instance(row: &impl RowExt) -> Result<Instance> {
    Ok(Instance {
        id: row.id("id")?,
        owner_id: row.id("owner_id")?,
        model_id: row.get("model_id")?,
        driver: row.get("driver")?,
        compute: ComputeSpec {
            compute_type: codec::compute_type(&row.get::<String>("compute_type")?)?,
            cpu: row.get("cpu")?,
            memory: row.u32("memory")?,
            gpu_count: row.u32("gpu_count")?,
            instance_type: row.get("instance_type")?,
            spot: row.get("spot")?,
        },
        settings: InstanceSettings {
            idle_timeout_seconds: row.u32("idle_timeout_seconds")?,
            min_replicas: row.u32("min_replicas")?,
            max_replicas: row.u32("max_replicas")?,
            wake_on_request: row.get("wake_on_request")?,
        },
        desired: codec::desired(&row.get::<String>("desired")?)?,
        state: codec::state(&row.get::<String>("state")?)?,
        state_reason: row.get("state_reason")?,
        target_replicas: row.u32("target_replicas")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        last_activity_at: row.time("last_activity_at")?,
        running_since: row.opt_time("running_since")?,
        running_seconds: row.get("running_seconds")?,
        team_id: row.opt_id("team_id")?,
    })
}

pub(crate) fn team(row: &impl RowExt) -> Result<Team> {
    Ok(Team {
        id: row.id("id")?,
        name: row.get("name")?,
        created_at: row.time("created_at")?,
    })
}

pub(crate) fn team_member(row: &impl RowExt) -> Result<TeamMember> {
    Ok(TeamMember {
        team_id: row.id("team_id")?,
        user_id: row.id("user_id")?,
        role: codec::team_role(&row.get::<String>("role")?)?,
        added_at: row.time("added_at")?,
    })
}

/// A team row joined with the member's `role`.
pub(crate) fn membership(row: &impl RowExt) -> Result<Membership> {
    Ok(Membership {
        team: team(row)?,
        role: codec::team_role(&row.get::<String>("role")?)?,
    })
}

pub(crate) fn event(row: &impl RowExt) -> Result<InstanceEvent> {
    Ok(InstanceEvent {
        id: row.get("id")?,
        instance_id: row.id("instance_id")?,
        at: row.time("at")?,
        from_state: codec::opt_state(row.get::<Option<String>>("from_state")?.as_deref())?,
        to_state: codec::opt_state(row.get::<Option<String>>("to_state")?.as_deref())?,
        message: row.get("message")?,
    })
}

pub(crate) fn replica(row: &impl RowExt) -> Result<Replica> {
    Ok(Replica {
        id: row.id("id")?,
        instance_id: row.id("instance_id")?,
        driver_ref: row.get("driver_ref")?,
        endpoint: row.get("endpoint")?,
        state: codec::replica_state(&row.get::<String>("state")?)?,
        restarts: row.u32("restarts")?,
        started_at: row.time("started_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn run(row: &impl RowExt) -> Result<ReplicaRun> {
    Ok(ReplicaRun {
        id: row.id("id")?,
        replica_id: row.id("replica_id")?,
        instance_id: row.id("instance_id")?,
        owner_id: row.id("owner_id")?,
        model_id: row.get("model_id")?,
        driver: row.get("driver")?,
        driver_ref: row.get("driver_ref")?,
        compute: codec::compute(&row.get::<String>("compute")?)?,
        started_at: row.time("started_at")?,
        ended_at: row.opt_time("ended_at")?,
    })
}

pub(crate) fn usage_row(row: &impl RowExt) -> Result<UsageRow> {
    Ok(UsageRow {
        owner_id: row.id("owner_id")?,
        instance_id: row.id("instance_id")?,
        model_id: row.get("model_id")?,
        hour: row.time("hour")?,
        requests: row.u64("requests")?,
        prompt_tokens: row.u64("prompt_tokens")?,
        completion_tokens: row.u64("completion_tokens")?,
    })
}

pub(crate) fn lease(row: &impl RowExt) -> Result<crate::Lease> {
    Ok(crate::Lease {
        name: row.get("name")?,
        holder: row.get("holder")?,
        token: row.get("token")?,
        expires_at: row.time("expires_at")?,
    })
}

pub(crate) fn job(row: &impl RowExt) -> Result<crate::OutboundJob> {
    Ok(crate::OutboundJob {
        id: row.id("id")?,
        kind: row.get("kind")?,
        payload: row.get("payload")?,
        status: crate::JobStatus::parse(&row.get::<String>("status")?)?,
        attempts: row.u32("attempts")?,
        next_attempt_at: row.time("next_attempt_at")?,
        lease_until: row.opt_time("lease_until")?,
        claim_id: row.opt_id("claim_id")?,
        last_error: row.get("last_error")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}
