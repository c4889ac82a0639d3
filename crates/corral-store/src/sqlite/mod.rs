//! SQLite backend, the default: one file in the data directory, WAL mode so readers
//! never block the writer. See `migrations/sqlite/` for how values are stored.

mod rows;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, AuditFilter, CatalogModel, Desired, Instance, InstanceEvent,
    InstanceSettings, LoginFailures, NewAuditEntry, OutboxMessage, RefreshSession, Replica, State,
    TokenPurpose, UsageRow, UsageSample, User,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use self::rows::{id, opt_ts, ts};
use crate::codec::{
    self, API_KEY_COLUMNS, EVENT_COLUMNS, INSTANCE_COLUMNS, MODEL_COLUMNS, REPLICA_COLUMNS,
    RUN_COLUMNS, SESSION_COLUMNS, USAGE_COLUMNS, USER_COLUMNS, conflict, in_use, page_limit,
    write_error,
};
use crate::{ActionToken, Error, ReplicaRun, Result, Store, UsageCounts, UserPatch};

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
            .await
            .map_err(in_use(USER_IN_USE))?;
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

    // --- model catalog ---

    async fn upsert_model(&self, model: &CatalogModel) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO models ({MODEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (id) DO UPDATE SET \
               family = excluded.family, size = excluded.size, \
               cpu_supported = excluded.cpu_supported, gpu_supported = excluded.gpu_supported, \
               memory_required = excluded.memory_required, \
               expected_deploy_seconds = excluded.expected_deploy_seconds, \
               source = excluded.source, weights_bytes = excluded.weights_bytes, \
               builtin = excluded.builtin"
        ))
        .bind(&model.id)
        .bind(&model.family)
        .bind(&model.size)
        .bind(model.cpu_supported)
        .bind(model.gpu_supported)
        .bind(i64::from(model.memory_required))
        .bind(i64::from(model.expected_deploy_seconds))
        .bind(codec::source_json(&model.source)?)
        .bind(
            model
                .weights_bytes
                .map(|b| codec::signed(b, "weights_bytes"))
                .transpose()?,
        )
        .bind(model.builtin)
        .execute(&self.pool)
        .await
        .map_err(write_error("model", "model"))?;
        Ok(())
    }

    async fn model(&self, model_id: &str) -> Result<Option<CatalogModel>> {
        sqlx::query(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE id = $1"))
            .bind(model_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::model(&row))
            .transpose()
    }

    async fn list_models(&self) -> Result<Vec<CatalogModel>> {
        sqlx::query(&format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::model)
            .collect()
    }

    async fn delete_model(&self, model_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM models WHERE id = $1")
            .bind(model_id)
            .execute(&self.pool)
            .await
            .map_err(in_use(MODEL_IN_USE))?;
        Ok(done.rows_affected() == 1)
    }

    // --- instances ---

    async fn create_instance(&self, instance: &Instance) -> Result<()> {
        let (compute, settings) = (&instance.compute, &instance.settings);
        sqlx::query(&format!(
            "INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
        ))
        .bind(id(instance.id))
        .bind(id(instance.owner_id))
        .bind(&instance.model_id)
        .bind(&instance.driver)
        .bind(compute.compute_type.as_str())
        .bind(compute.cpu)
        .bind(i64::from(compute.memory))
        .bind(i64::from(compute.gpu_count))
        .bind(&compute.instance_type)
        .bind(compute.spot)
        .bind(i64::from(settings.idle_timeout_seconds))
        .bind(i64::from(settings.min_replicas))
        .bind(i64::from(settings.max_replicas))
        .bind(settings.wake_on_request)
        .bind(codec::desired_str(instance.desired))
        .bind(instance.state.as_str())
        .bind(&instance.state_reason)
        .bind(i64::from(instance.target_replicas))
        .bind(ts(instance.created_at))
        .bind(ts(instance.updated_at))
        .bind(ts(instance.last_activity_at))
        .bind(opt_ts(instance.running_since))
        .bind(instance.running_seconds)
        .execute(&self.pool)
        .await
        .map_err(write_error("instance", "owner or model"))?;
        Ok(())
    }

    async fn instance(&self, instance_id: Uuid) -> Result<Option<Instance>> {
        sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
        ))
        .bind(id(instance_id))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::instance(&row))
        .transpose()
    }

    async fn instance_for_owner(
        &self,
        instance_id: Uuid,
        owner_id: Uuid,
    ) -> Result<Option<Instance>> {
        sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND owner_id = $2"
        ))
        .bind(id(instance_id))
        .bind(id(owner_id))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::instance(&row))
        .transpose()
    }

    async fn list_instances(&self, owner_id: Option<Uuid>) -> Result<Vec<Instance>> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances"));
        if let Some(owner_id) = owner_id {
            q.push(" WHERE owner_id = ").push_bind(id(owner_id));
        }
        q.push(" ORDER BY created_at DESC, id DESC");
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::instance)
            .collect()
    }

    async fn set_desired(
        &self,
        instance_id: Uuid,
        desired: Desired,
        now: DateTime<Utc>,
    ) -> Result<Option<Instance>> {
        sqlx::query(&format!(
            "UPDATE instances SET desired = $2, updated_at = $3, \
               last_activity_at = CASE WHEN $4 AND last_activity_at < $3 THEN $3 \
                                       ELSE last_activity_at END \
             WHERE id = $1 RETURNING {INSTANCE_COLUMNS}"
        ))
        .bind(id(instance_id))
        .bind(codec::desired_str(desired))
        .bind(ts(now))
        .bind(desired == Desired::Running)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::instance(&row))
        .transpose()
    }

    async fn update_instance_settings(
        &self,
        instance_id: Uuid,
        settings: &InstanceSettings,
        now: DateTime<Utc>,
    ) -> Result<Option<Instance>> {
        sqlx::query(&format!(
            "UPDATE instances SET idle_timeout_seconds = $2, min_replicas = $3, \
               max_replicas = $4, wake_on_request = $5, updated_at = $6 \
             WHERE id = $1 RETURNING {INSTANCE_COLUMNS}"
        ))
        .bind(id(instance_id))
        .bind(i64::from(settings.idle_timeout_seconds))
        .bind(i64::from(settings.min_replicas))
        .bind(i64::from(settings.max_replicas))
        .bind(settings.wake_on_request)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(write_error("instance settings", "instance"))?
        .map(|row| rows::instance(&row))
        .transpose()
    }

    async fn transition(
        &self,
        instance_id: Uuid,
        from: State,
        to: State,
        reason: Option<&str>,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // The conditional UPDATE is the first statement, so the transaction takes the
        // write lock at once and the check cannot go stale before the event is written.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(TRANSITION_SQL)
            .bind(id(instance_id))
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(reason)
            .bind(ts(now))
            .bind(codec::starts_clock(to))
            .bind(codec::stops_clock(to))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false); // dropping `tx` rolls back
        }
        insert_event(&mut *tx, instance_id, Some((from, to)), message, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn touch_activity(&self, instance_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        // Never moves backwards when concurrent requests finish out of order.
        sqlx::query(
            "UPDATE instances SET last_activity_at = $2 \
             WHERE id = $1 AND last_activity_at < $2",
        )
        .bind(id(instance_id))
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_target_replicas(
        &self,
        instance_id: Uuid,
        replicas: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done =
            sqlx::query("UPDATE instances SET target_replicas = $2, updated_at = $3 WHERE id = $1")
                .bind(id(instance_id))
                .bind(i64::from(replicas))
                .bind(ts(now))
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_instance(&self, instance_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(id(instance_id))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // --- instance events ---

    async fn append_event(
        &self,
        instance_id: Uuid,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        insert_event(&self.pool, instance_id, None, message, now).await
    }

    async fn list_events(&self, instance_id: Uuid, limit: u32) -> Result<Vec<InstanceEvent>> {
        // The latest `limit`, then turned back into recording order.
        sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM ( \
               SELECT {EVENT_COLUMNS} FROM instance_events WHERE instance_id = $1 \
               ORDER BY id DESC LIMIT $2 \
             ) AS latest ORDER BY id"
        ))
        .bind(id(instance_id))
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::event)
        .collect()
    }

    // --- replicas ---

    async fn create_replica(&self, replica: &Replica) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO replicas ({REPLICA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(id(replica.id))
        .bind(id(replica.instance_id))
        .bind(&replica.driver_ref)
        .bind(&replica.endpoint)
        .bind(codec::replica_state_str(replica.state))
        .bind(i64::from(replica.restarts))
        .bind(ts(replica.started_at))
        .bind(ts(replica.updated_at))
        .execute(&self.pool)
        .await
        .map_err(write_error("replica", "instance"))?;
        Ok(())
    }

    async fn update_replica(&self, replica: &Replica) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE replicas SET driver_ref = $2, endpoint = $3, state = $4, restarts = $5, \
               started_at = $6, updated_at = $7 \
             WHERE id = $1",
        )
        .bind(id(replica.id))
        .bind(&replica.driver_ref)
        .bind(&replica.endpoint)
        .bind(codec::replica_state_str(replica.state))
        .bind(i64::from(replica.restarts))
        .bind(ts(replica.started_at))
        .bind(ts(replica.updated_at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_replica(&self, replica_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id(replica_id))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_replicas(&self, instance_id: Uuid) -> Result<Vec<Replica>> {
        sqlx::query(&format!(
            "SELECT {REPLICA_COLUMNS} FROM replicas WHERE instance_id = $1 \
             ORDER BY started_at, id"
        ))
        .bind(id(instance_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::replica)
        .collect()
    }

    async fn all_replicas(&self) -> Result<Vec<Replica>> {
        sqlx::query(&format!(
            "SELECT {REPLICA_COLUMNS} FROM replicas ORDER BY instance_id, started_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::replica)
        .collect()
    }

    // --- replica runs ---

    async fn start_run(&self, run: &ReplicaRun) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO replica_runs ({RUN_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(id(run.id))
        .bind(id(run.replica_id))
        .bind(id(run.instance_id))
        .bind(id(run.owner_id))
        .bind(&run.model_id)
        .bind(&run.driver)
        .bind(&run.driver_ref)
        .bind(codec::compute_json(&run.compute)?)
        .bind(ts(run.started_at))
        .bind(opt_ts(run.ended_at))
        .execute(&self.pool)
        .await
        .map_err(write_error("replica run", "replica run"))?;
        Ok(())
    }

    async fn end_run(&self, instance_id: Uuid, replica_id: Uuid, at: DateTime<Utc>) -> Result<u64> {
        // `ended_at IS NULL` makes a second call a no-op: a run is closed once.
        let done = sqlx::query(
            "UPDATE replica_runs SET ended_at = MAX(started_at, $3) \
             WHERE instance_id = $1 AND replica_id = $2 AND ended_at IS NULL",
        )
        .bind(id(instance_id))
        .bind(id(replica_id))
        .bind(ts(at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn runs_for_instance(&self, instance_id: Uuid) -> Result<Vec<ReplicaRun>> {
        sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM replica_runs WHERE instance_id = $1 \
             ORDER BY started_at, id"
        ))
        .bind(id(instance_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::run)
        .collect()
    }

    async fn runs_overlapping(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<ReplicaRun>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {RUN_COLUMNS} FROM replica_runs WHERE 1 = 1"
        ));
        if let Some(owner_id) = owner_id {
            q.push(" AND owner_id = ").push_bind(id(owner_id));
        }
        if let Some(since) = since {
            q.push(" AND (ended_at IS NULL OR ended_at > ")
                .push_bind(ts(since))
                .push(")");
        }
        if let Some(until) = until {
            q.push(" AND started_at < ").push_bind(ts(until));
        }
        q.push(" ORDER BY started_at, id");
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::run)
            .collect()
    }

    // --- usage ---

    async fn record_usage(&self, sample: &UsageSample) -> Result<()> {
        let counts = UsageCounts::of(sample)?;
        // One upsert; in the UPDATE arm the table's values are the ones before this
        // call, so concurrent calls each add theirs.
        sqlx::query(&format!(
            "INSERT INTO usage_hourly ({USAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (owner_id, instance_id, model_id, hour) DO UPDATE SET \
               requests = usage_hourly.requests + excluded.requests, \
               prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens, \
               completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens"
        ))
        .bind(id(sample.owner_id))
        .bind(id(sample.instance_id))
        .bind(&sample.model_id)
        .bind(ts(codec::hour_start(sample.at)))
        .bind(counts.requests)
        .bind(counts.prompt_tokens)
        .bind(counts.completion_tokens)
        .execute(&self.pool)
        .await
        .map_err(write_error("usage", "usage"))?;
        Ok(())
    }

    async fn usage(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<UsageRow>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {USAGE_COLUMNS} FROM usage_hourly WHERE 1 = 1"
        ));
        if let Some(owner_id) = owner_id {
            q.push(" AND owner_id = ").push_bind(id(owner_id));
        }
        if let Some(since) = since {
            q.push(" AND hour >= ").push_bind(ts(since));
        }
        if let Some(until) = until {
            q.push(" AND hour < ").push_bind(ts(until));
        }
        q.push(" ORDER BY hour, instance_id, model_id, owner_id");
        q.build()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::usage_row)
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

const MODEL_IN_USE: &str = "the model is deployed by instances: delete them first";
const USER_IN_USE: &str = "the user still owns instances: stop and delete them first";

/// Shared by `append_event` (a note) and `transition` (inside its transaction).
async fn insert_event<'c, E>(
    conn: E,
    instance_id: Uuid,
    states: Option<(State, State)>,
    message: &str,
    at: DateTime<Utc>,
) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    sqlx::query(
        "INSERT INTO instance_events (instance_id, from_state, to_state, message, at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id(instance_id))
    .bind(states.map(|(from, _)| from.as_str()))
    .bind(states.map(|(_, to)| to.as_str()))
    .bind(message)
    .bind(ts(at))
    .execute(conn)
    .await
    .map_err(write_error("instance event", "instance"))?;
    Ok(())
}

/// `transition`'s compare-and-set. $6: `to` starts the cost clock, $7: `to` stops it.
/// Every right-hand side reads the row as it was before this update.
const TRANSITION_SQL: &str = "UPDATE instances SET state = $3, state_reason = $4, updated_at = $5, \
    running_seconds = running_seconds + CASE WHEN $7 AND running_since IS NOT NULL \
        THEN MAX(0, ($5 - running_since) / 1000000) ELSE 0 END, \
    running_since = CASE WHEN $7 THEN NULL WHEN $6 THEN COALESCE(running_since, $5) \
        ELSE running_since END \
    WHERE id = $1 AND state = $2";
