//! Conversions shared by every backend: enum columns stored as text, and the mapping
//! of unique-constraint violations to `Error::Conflict`.

use corral_core::{Outcome, Role};

use crate::Error;

pub(crate) fn role(s: &str) -> Result<Role, Error> {
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
