//! PostgreSQL backend, for deployments that outgrow one file or run several servers
//! against one database.

mod rows;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, AuditFilter, LoginFailures, NewAuditEntry, OutboxMessage, RefreshSession,
    TokenPurpose, User,
};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::codec::{API_KEY_COLUMNS, SESSION_COLUMNS, USER_COLUMNS, conflict, page_limit};
use crate::{ActionToken, Result, Store, UserPatch};

/// Enough for the API's concurrent requests; each server connection costs the
/// database a process, so stay well below its usual `max_connections` of 100.
const MAX_CONNECTIONS: u32 = 8;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PostgresStore { pool })
    }
}

/// A `LIKE` pattern matching `prefix` literally; `\` is PostgreSQL's default escape.
fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
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
        .bind(user.id)
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.email_verified)
        .bind(user.disabled)
        .bind(&user.totp_secret)
        .bind(user.totp_enabled)
        .bind(user.totp_last_step)
        .bind(user.created_at)
        .bind(user.updated_at)
        .bind(user.last_login_at)
        .execute(&self.pool)
        .await
        .map_err(conflict("user"))?;
        Ok(())
    }

    async fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(user_id)
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
        .bind(user_id)
        .bind(&patch.display_name)
        .bind(&patch.password_hash)
        .bind(patch.role.map(|r| r.as_str()))
        .bind(patch.email_verified)
        .bind(patch.disabled)
        .bind(patch.totp_secret.is_some())
        .bind(patch.totp_secret.clone().flatten())
        .bind(patch.totp_enabled)
        .bind(patch.last_login_at)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::user(&row))
        .transpose()
    }

    async fn delete_user(&self, user_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn consume_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = $2 \
             WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
        )
        .bind(user_id)
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
        .bind(now + lock_for)
        .bind(now)
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
        .bind(token.user_id)
        .bind(token.purpose.as_str())
        .bind(token.created_at)
        .bind(token.expires_at)
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
        let user_id = sqlx::query_scalar(
            "UPDATE action_tokens SET used_at = $3 \
             WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING user_id",
        )
        .bind(token_hash)
        .bind(purpose.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(user_id)
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
        // The conditional UPDATE row-locks the old session until commit, so a concurrent
        // rotation waits, then re-checks the condition and matches nothing.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE refresh_sessions SET replaced_at = $2 \
             WHERE id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .bind(old_id)
        .bind(now)
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
        .bind(family_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn revoke_user_sessions(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE refresh_sessions SET revoked_at = $2 \
             WHERE user_id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(key.id)
        .bind(key.owner_id)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(&key.key_hash)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.last_used_at)
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
        .bind(owner_id)
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
            .bind(key_id)
            .bind(owner_id)
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
        .bind(key_id)
        .bind(now)
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
        .bind(entry.actor_id)
        .bind(&entry.actor_email)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.ip)
        .bind(entry.outcome.as_str())
        .bind(&entry.detail)
        .bind(entry.at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT id, actor_id, actor_email, action, target, ip, outcome, detail, at \
             FROM audit_log WHERE 1 = 1",
        );
        if let Some(actor) = filter.actor_id {
            q.push(" AND actor_id = ").push_bind(actor);
        }
        if let Some(prefix) = &filter.action {
            q.push(" AND action LIKE ").push_bind(like_prefix(prefix));
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_bind(outcome.as_str());
        }
        if let Some(since) = filter.since {
            q.push(" AND at >= ").push_bind(since);
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
        .bind(message.id)
        .bind(&message.to)
        .bind(&message.subject)
        .bind(&message.body)
        .bind(message.created_at)
        .execute(&self.pool)
        .await
        .map_err(conflict("outbox message"))?;
        Ok(())
    }

    async fn list_outbox(&self, to: Option<&str>, limit: u32) -> Result<Vec<OutboxMessage>> {
        let mut q = QueryBuilder::<Postgres>::new(
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
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query(&format!(
        "INSERT INTO refresh_sessions ({SESSION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(session.id)
    .bind(session.user_id)
    .bind(session.family_id)
    .bind(&session.token_hash)
    .bind(session.created_at)
    .bind(session.expires_at)
    .bind(session.replaced_at)
    .bind(session.revoked_at)
    .bind(&session.ip)
    .bind(&session.user_agent)
    .execute(conn)
    .await
    .map_err(conflict("session"))?;
    Ok(())
}
