//! How this backend stores ids and times (see the migration's header), and the
//! decoding of its rows into domain types.

use chrono::{DateTime, Utc};
use corral_core::{ApiKey, AuditEntry, LoginFailures, OutboxMessage, RefreshSession, User};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use crate::{Error, Result, codec};

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
