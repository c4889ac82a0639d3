//! SQLite backend, the default: one file in the data directory, WAL mode so readers
//! never block the writer. See `migrations/sqlite/` for how values are stored.

mod rows;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, AuditFilter, LoginFailures, NewAuditEntry, OutboxMessage, RefreshSession,
    TokenPurpose, User,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use self::rows::{id, opt_ts, ts};
use crate::codec::{API_KEY_COLUMNS, SESSION_COLUMNS, USER_COLUMNS, conflict, page_limit};
use crate::{ActionToken, Error, Result, Store, UserPatch};

/// SQLite has one writer at a time, so more connections only buy concurrent readers;
/// each costs a page cache, and the server must idle small.
const MAX_CONNECTIONS: u32 = 4;
/// How long a writer waits for the lock before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its parent folders if needed) the database file and
    /// brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                path: PathBuf::from(dir),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable against corruption in WAL mode; FULL would fsync on
            // every commit for little gain here.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // One connection stays open so the WAL is not checkpointed and removed
            // every time the server goes quiet.
            .min_connections(1)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

/// `GLOB` rather than `LIKE`: SQLite's LIKE ignores ASCII case, and a prefix filter on
/// action names must not. Metacharacters in the prefix are bracketed to match literally.
fn glob_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        match c {
            '*' | '?' | '[' => {
                pattern.push('[');
                pattern.push(c);
                pattern.push(']');
            }
            _ => pattern.push(c),
        }
    }
    pattern.push('*');
    pattern
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, user: &User) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO users ({USER_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(id(user.id))
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.email_verified)
        .bind(user.disabled)
        .bind(&user.totp_secret)
        .bind(user.totp_enabled)
        .bind(user.totp_last_step)
        .bind(ts(user.created_at))
        .bind(ts(user.updated_at))
        .bind(opt_ts(user.last_login_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("user"))?;
        Ok(())
    }

    async fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id(user_id))
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::user(&row))
            .transpose()
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::user(&row))
        .transpose()
    }

    async fn list_users(&self, offset: u32, limit: u32) -> Result<Vec<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2"
        ))
        .bind(page_limit(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::user)
        .collect()
    }

    async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.unsigned_abs())
    }

    async fn update_user(
        &self,
        user_id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>> {
        // One statement, so a patch applies whole or not at all; NULL means "unchanged"
        // except for the TOTP secret, whose "set" flag ($7) allows setting it to NULL.
        sqlx::query(&format!(
            "UPDATE users SET \
               display_name = COALESCE($2, display_name), \
               password_hash = COALESCE($3, password_hash), \
               role = COALESCE($4, role), \
               email_verified = COALESCE($5, email_verified), \
               disabled = COALESCE($6, disabled), \
               totp_secret = CASE WHEN $7 THEN $8 ELSE totp_secret END, \
               totp_enabled = COALESCE($9, totp_enabled), \
               last_login_at = COALESCE($10, last_login_at), \
               updated_at = $11 \
             WHERE id = $1 RETURNING {USER_COLUMNS}"
        ))
        .bind(id(user_id))
        .bind(&patch.display_name)
        .bind(&patch.password_hash)
        .bind(patch.role.map(|r| r.as_str()))
        .bind(patch.email_verified)
        .bind(patch.disabled)
        .bind(patch.totp_secret.is_some())
        .bind(patch.totp_secret.clone().flatten())
        .bind(patch.totp_enabled)
        .bind(opt_ts(patch.last_login_at))
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::user(&row))
        .transpose()
    }

    async fn delete_user(&self, user_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id(user_id))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn consume_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = $2 \
             WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
        )
        .bind(id(user_id))
        .bind(step)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_login_failure(
        &self,
        email: &str,
        max_failures: u32,
        lock_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<LoginFailures> {
        // One upsert: concurrent failures for the same address each count. In the
        // UPDATE arm, `login_failures.count` is the value before this failure.
        let row = sqlx::query(
            "INSERT INTO login_failures (email, count, locked_until, updated_at) \
             VALUES ($1, CASE WHEN 1 >= $2 THEN 0 ELSE 1 END, \
                     CASE WHEN 1 >= $2 THEN $3 END, $4) \
             ON CONFLICT (email) DO UPDATE SET \
               count = CASE WHEN login_failures.count + 1 >= $2 THEN 0 \
                            ELSE login_failures.count + 1 END, \
               locked_until = CASE WHEN login_failures.count + 1 >= $2 THEN $3 \
                                   ELSE login_failures.locked_until END, \
               updated_at = $4 \
             RETURNING email, count, locked_until",
        )
        .bind(email)
        .bind(i64::from(max_failures))
        .bind(ts(now + lock_for))
        .bind(ts(now))
        .fetch_one(&self.pool)
        .await?;
        rows::login_failures(&row)
    }

    async fn login_failures(&self, email: &str) -> Result<Option<LoginFailures>> {
        sqlx::query("SELECT email, count, locked_until FROM login_failures WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::login_failures(&row))
            .transpose()
    }

    async fn clear_login_failures(&self, email: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE email = $1")
            .bind(email)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_action_token(&self, token: &ActionToken) -> Result<()> {
        sqlx::query(
            "INSERT INTO action_tokens (token_hash, user_id, purpose, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&token.token_hash)
        .bind(id(token.user_id))
        .bind(token.purpose.as_str())
        .bind(ts(token.created_at))
        .bind(ts(token.expires_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("action token"))?;
        Ok(())
    }

    async fn consume_action_token(
        &self,
        token_hash: &str,
        purpose: TokenPurpose,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>> {
        // The conditions live in the UPDATE itself, so two concurrent uses cannot both win.
        let user_id: Option<uuid::fmt::Hyphenated> = sqlx::query_scalar(
            "UPDATE action_tokens SET used_at = $3 \
             WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING user_id",
        )
        .bind(token_hash)
        .bind(purpose.as_str())
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(user_id.map(uuid::fmt::Hyphenated::into_uuid))
    }

    async fn create_session(&self, session: &RefreshSession) -> Result<()> {
        insert_session(&self.pool, session).await
    }

    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<RefreshSession>> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM refresh_sessions WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::session(&row))
        .transpose()
    }

    async fn rotate_session(
        &self,
        old_id: Uuid,
        next: &RefreshSession,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // The conditional UPDATE is the first statement, so the transaction takes the
        // write lock at once and the check cannot go stale before the insert.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE refresh_sessions SET replaced_at = $2 \
             WHERE id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .bind(id(old_id))
        .bind(ts(now))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false); // dropping `tx` rolls back
        }
        insert_session(&mut *tx, next).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn revoke_session_family(&self, family_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE refresh_sessions SET revoked_at = $2 \
             WHERE family_id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .bind(id(family_id))
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn revoke_user_sessions(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE refresh_sessions SET revoked_at = $2 \
             WHERE user_id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .bind(id(user_id))
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(id(key.id))
        .bind(id(key.owner_id))
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&key.key_hash)
        .bind(ts(key.created_at))
        .bind(opt_ts(key.expires_at))
        .bind(opt_ts(key.last_used_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("api key"))?;
        Ok(())
    }

    async fn list_api_keys(&self, owner_id: Uuid) -> Result<Vec<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE owner_id = $1 \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(id(owner_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::api_key)
        .collect()
    }

    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::api_key(&row))
        .transpose()
    }

    async fn delete_api_key(&self, owner_id: Uuid, key_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND owner_id = $2")
            .bind(id(key_id))
            .bind(id(owner_id))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn touch_api_key(&self, key_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        // Never moves backwards when concurrent requests finish out of order.
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(id(key_id))
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log \
               (actor_id, actor_email, action, target, ip, outcome, detail, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(entry.actor_id.map(id))
        .bind(&entry.actor_email)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.ip)
        .bind(entry.outcome.as_str())
        .bind(&entry.detail)
        .bind(ts(entry.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, actor_id, actor_email, action, target, ip, outcome, detail, at \
             FROM audit_log WHERE 1 = 1",
        );
        if let Some(actor) = filter.actor_id {
            q.push(" AND actor_id = ").push_bind(id(actor));
        }
        if let Some(prefix) = &filter.action {
            q.push(" AND action GLOB ").push_bind(glob_prefix(prefix));
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        if let Some(since) = filter.since {
            q.push(" AND at >= ").push_bind(ts(since));
        }
        if let Some(before) = filter.before_id {
            q.push(" AND id < ").push_bind(before);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(filter.effective_limit()));
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::audit_entry)
            .collect()
    }

    async fn push_outbox(&self, message: &OutboxMessage) -> Result<()> {
        sqlx::query(
            "INSERT INTO outbox (id, to_addr, subject, body, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id(message.id))
        .bind(&message.to)
        .bind(&message.subject)
        .bind(&message.body)
        .bind(ts(message.created_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("outbox message"))?;
        Ok(())
    }

    async fn list_outbox(&self, to: Option<&str>, limit: u32) -> Result<Vec<OutboxMessage>> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, to_addr, subject, body, created_at FROM outbox",
        );
        if let Some(to) = to {
            q.push(" WHERE to_addr = ").push_bind(to);
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(page_limit(limit));
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::outbox_message)
            .collect()
    }
}

/// Shared by `create_session` and `rotate_session` (inside its transaction).
async fn insert_session<'c, E>(conn: E, session: &RefreshSession) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    sqlx::query(&format!(
        "INSERT INTO refresh_sessions ({SESSION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(id(session.id))
    .bind(id(session.user_id))
    .bind(id(session.family_id))
    .bind(&session.token_hash)
    .bind(ts(session.created_at))
    .bind(ts(session.expires_at))
    .bind(opt_ts(session.replaced_at))
    .bind(opt_ts(session.revoked_at))
    .bind(&session.ip)
    .bind(&session.user_agent)
    .execute(conn)
    .await
    .map_err(conflict("session"))?;
    Ok(())
}
