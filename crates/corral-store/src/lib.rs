//! Persistence for Corral behind one `Store` trait, with a backend per database.
//! Every backend runs the same conformance suite (`conformance`), so the API can be
//! written once against the trait.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, AuditFilter, LoginFailures, NewAuditEntry, OutboxMessage, RefreshSession,
    Role, TokenPurpose, User,
};
use uuid::Uuid;

mod codec;
pub mod conformance;
mod error;
pub mod postgres;
pub mod sqlite;

pub use error::{Error, Result};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Opens the store a URL names: `sqlite://PATH` or a plain path is SQLite (file and
/// parent folders are created), `postgres://` or `postgresql://` is PostgreSQL.
/// Migrations run before this returns, so the schema is always current.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PostgresStore::connect(url).await?));
    }
    let path = match url.split_once("://") {
        Some(("sqlite", path)) => path,
        Some((scheme, _)) => return Err(Error::UnsupportedUrl(scheme.to_string())),
        None => url.strip_prefix("sqlite:").unwrap_or(url),
    };
    if path.is_empty() {
        return Err(Error::UnsupportedUrl("sqlite:// with no path".into()));
    }
    Ok(std::sync::Arc::new(
        SqliteStore::open(std::path::Path::new(path)).await?,
    ))
}

/// Which fields of a user to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserPatch {
    pub display_name: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub email_verified: Option<bool>,
    pub disabled: Option<bool>,
    /// `Some(None)` clears the secret (MFA disabled).
    pub totp_secret: Option<Option<String>>,
    pub totp_enabled: Option<bool>,
    pub last_login_at: Option<DateTime<Utc>>,
}

/// A one-time e-mailed token (verification or password reset), stored hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionToken {
    pub token_hash: String,
    pub user_id: Uuid,
    pub purpose: TokenPurpose,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Everything Corral persists. Times are kept to the microsecond (PostgreSQL's
/// precision, which SQLite matches): a time read back is the one written, truncated
/// to whole microseconds.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres", for health output and logs.
    fn backend(&self) -> &'static str;
    /// A cheap round trip proving the database answers.
    async fn ping(&self) -> Result<()>;

    // --- users ---
    /// Fails with `Error::Conflict` if the e-mail is taken.
    async fn create_user(&self, user: &User) -> Result<()>;
    async fn user_by_id(&self, id: Uuid) -> Result<Option<User>>;
    /// `email` must already be normalised (lower-case, trimmed).
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    /// Oldest first; `offset`/`limit` page through (`limit` is clamped to 1..=500).
    async fn list_users(&self, offset: u32, limit: u32) -> Result<Vec<User>>;
    async fn count_users(&self) -> Result<u64>;
    /// Applies the patch, bumps `updated_at`, returns the new row (None if no such user).
    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>>;
    /// Deletes the user and everything they own (sessions, keys, tokens). False if absent.
    async fn delete_user(&self, id: Uuid) -> Result<bool>;
    /// Records a TOTP step as used if it is newer than the last one; false means the
    /// code was already used (or an older one), or there is no such user, and must be
    /// refused. Atomic.
    async fn consume_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool>;

    // --- lockout ---
    /// Adds a failure for `email`; when the count reaches `max_failures` the address is
    /// locked until `now + lock_for` and the count restarts. Returns the new state.
    async fn record_login_failure(
        &self,
        email: &str,
        max_failures: u32,
        lock_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<LoginFailures>;
    async fn login_failures(&self, email: &str) -> Result<Option<LoginFailures>>;
    async fn clear_login_failures(&self, email: &str) -> Result<()>;

    // --- one-time e-mail tokens ---
    async fn create_action_token(&self, token: &ActionToken) -> Result<()>;
    /// Marks an unused token of that purpose with `expires_at > now` as used and returns
    /// its user.
    /// A second call with the same token returns None. Atomic.
    async fn consume_action_token(
        &self,
        token_hash: &str,
        purpose: TokenPurpose,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>>;

    // --- refresh sessions ---
    async fn create_session(&self, session: &RefreshSession) -> Result<()>;
    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<RefreshSession>>;
    /// Marks `old_id` replaced and inserts `next` in one transaction, only if `old_id` is
    /// neither replaced nor revoked; false means another request rotated it first.
    async fn rotate_session(
        &self,
        old_id: Uuid,
        next: &RefreshSession,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Revokes every live session (neither replaced nor revoked) of a family, on
    /// refresh-token reuse. Returns how many.
    async fn revoke_session_family(&self, family_id: Uuid, now: DateTime<Utc>) -> Result<u64>;
    /// Revokes every live session of a user (logout everywhere, password change, lock).
    /// Returns how many.
    async fn revoke_user_sessions(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<u64>;

    // --- API keys ---
    async fn create_api_key(&self, key: &ApiKey) -> Result<()>;
    /// The owner's keys, newest first.
    async fn list_api_keys(&self, owner_id: Uuid) -> Result<Vec<ApiKey>>;
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>>;
    /// Owner-scoped: deleting another user's key id returns false and changes nothing.
    async fn delete_api_key(&self, owner_id: Uuid, id: Uuid) -> Result<bool>;
    /// Sets `last_used_at` to `now` unless it is already later.
    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;

    // --- audit log ---
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<()>;
    /// Newest first, filtered.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;

    // --- mail outbox ---
    async fn push_outbox(&self, message: &OutboxMessage) -> Result<()>;
    /// Newest first; `to` filters by recipient; `limit` is clamped to 1..=500.
    async fn list_outbox(&self, to: Option<&str>, limit: u32) -> Result<Vec<OutboxMessage>>;
}
