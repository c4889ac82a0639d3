//! Decoding of this backend's rows into domain types. Ids and times are native
//! `uuid` and `timestamptz`; only enums need converting from text.

use corral_core::{ApiKey, AuditEntry, LoginFailures, OutboxMessage, RefreshSession, User};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{Result, codec};

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
