//! PostgreSQL backend, for deployments that outgrow one file or run several servers
//! against one database.

mod rows;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::{
    ApiKey, AuditEntry, AuditFilter, CatalogModel, Desired, Instance, InstanceEvent,
    InstanceSettings, LoginFailures, NewAuditEntry, OutboxMessage, RefreshSession, Replica, State,
    TokenPurpose, UsageRow, UsageSample, User,
};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::codec::{
    self, API_KEY_COLUMNS, EVENT_COLUMNS, INSTANCE_COLUMNS, MODEL_COLUMNS, REPLICA_COLUMNS,
    RUN_COLUMNS, SESSION_COLUMNS, USAGE_COLUMNS, USER_COLUMNS, conflict, in_use, page_limit,
    write_error,
};
use crate::{ActionToken, ReplicaRun, Result, Store, UsageCounts, UserPatch};

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
            .await
            .map_err(in_use(USER_IN_USE))?;
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
        .bind(instance.id)
        .bind(instance.owner_id)
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
        .bind(instance.created_at)
        .bind(instance.updated_at)
        .bind(instance.last_activity_at)
        .bind(instance.running_since)
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
        .bind(instance_id)
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
        .bind(instance_id)
        .bind(owner_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::instance(&row))
        .transpose()
    }

    async fn list_instances(&self, owner_id: Option<Uuid>) -> Result<Vec<Instance>> {
        let mut q =
            QueryBuilder::<Postgres>::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances"));
        if let Some(owner_id) = owner_id {
            q.push(" WHERE owner_id = ").push_bind(owner_id);
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
        .bind(instance_id)
        .bind(codec::desired_str(desired))
        .bind(now)
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
        .bind(instance_id)
        .bind(i64::from(settings.idle_timeout_seconds))
        .bind(i64::from(settings.min_replicas))
        .bind(i64::from(settings.max_replicas))
        .bind(settings.wake_on_request)
        .bind(now)
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
        // The conditional UPDATE row-locks the instance until commit, so a concurrent
        // transition waits, then re-checks `state` and matches nothing.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(TRANSITION_SQL)
            .bind(instance_id)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(reason)
            .bind(now)
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
        .bind(instance_id)
        .bind(now)
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
                .bind(instance_id)
                .bind(i64::from(replicas))
                .bind(now)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_instance(&self, instance_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM instances WHERE id = $1")
            .bind(instance_id)
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
        .bind(instance_id)
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
        .bind(replica.id)
        .bind(replica.instance_id)
        .bind(&replica.driver_ref)
        .bind(&replica.endpoint)
        .bind(codec::replica_state_str(replica.state))
        .bind(i64::from(replica.restarts))
        .bind(replica.started_at)
        .bind(replica.updated_at)
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
        .bind(replica.id)
        .bind(&replica.driver_ref)
        .bind(&replica.endpoint)
        .bind(codec::replica_state_str(replica.state))
        .bind(i64::from(replica.restarts))
        .bind(replica.started_at)
        .bind(replica.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_replica(&self, replica_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(replica_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_replicas(&self, instance_id: Uuid) -> Result<Vec<Replica>> {
        sqlx::query(&format!(
            "SELECT {REPLICA_COLUMNS} FROM replicas WHERE instance_id = $1 \
             ORDER BY started_at, id"
        ))
        .bind(instance_id)
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
        .bind(run.id)
        .bind(run.replica_id)
        .bind(run.instance_id)
        .bind(run.owner_id)
        .bind(&run.model_id)
        .bind(&run.driver)
        .bind(&run.driver_ref)
        .bind(codec::compute_json(&run.compute)?)
        .bind(run.started_at)
        .bind(run.ended_at)
        .execute(&self.pool)
        .await
        .map_err(write_error("replica run", "replica run"))?;
        Ok(())
    }

    async fn end_run(&self, instance_id: Uuid, replica_id: Uuid, at: DateTime<Utc>) -> Result<u64> {
        // `ended_at IS NULL` makes a second call a no-op: a run is closed once.
        let done = sqlx::query(
            "UPDATE replica_runs SET ended_at = GREATEST(started_at, $3) \
             WHERE instance_id = $1 AND replica_id = $2 AND ended_at IS NULL",
        )
        .bind(instance_id)
        .bind(replica_id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn runs_for_instance(&self, instance_id: Uuid) -> Result<Vec<ReplicaRun>> {
        sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM replica_runs WHERE instance_id = $1 \
             ORDER BY started_at, id"
        ))
        .bind(instance_id)
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
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {RUN_COLUMNS} FROM replica_runs WHERE 1 = 1"
        ));
        if let Some(owner_id) = owner_id {
            q.push(" AND owner_id = ").push_bind(owner_id);
        }
        if let Some(since) = since {
            q.push(" AND (ended_at IS NULL OR ended_at > ")
                .push_bind(since)
                .push(")");
        }
        if let Some(until) = until {
            q.push(" AND started_at < ").push_bind(until);
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
        .bind(sample.owner_id)
        .bind(sample.instance_id)
        .bind(&sample.model_id)
        .bind(codec::hour_start(sample.at))
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
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {USAGE_COLUMNS} FROM usage_hourly WHERE 1 = 1"
        ));
        if let Some(owner_id) = owner_id {
            q.push(" AND owner_id = ").push_bind(owner_id);
        }
        if let Some(since) = since {
            q.push(" AND hour >= ").push_bind(since);
        }
        if let Some(until) = until {
            q.push(" AND hour < ").push_bind(until);
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
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query(
        "INSERT INTO instance_events (instance_id, from_state, to_state, message, at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(instance_id)
    .bind(states.map(|(from, _)| from.as_str()))
    .bind(states.map(|(_, to)| to.as_str()))
    .bind(message)
    .bind(at)
    .execute(conn)
    .await
    .map_err(write_error("instance event", "instance"))?;
    Ok(())
}

/// `transition`'s compare-and-set. $6: `to` starts the cost clock, $7: `to` stops it.
/// Every right-hand side reads the row as it was before this update.
const TRANSITION_SQL: &str = "UPDATE instances SET state = $3, state_reason = $4, updated_at = $5, \
    running_seconds = running_seconds + CASE WHEN $7 AND running_since IS NOT NULL \
        THEN GREATEST(0, FLOOR(EXTRACT(EPOCH FROM ($5 - running_since)))::BIGINT) ELSE 0 END, \
    running_since = CASE WHEN $7 THEN NULL WHEN $6 THEN COALESCE(running_since, $5) \
        ELSE running_since END \
    WHERE id = $1 AND state = $2";
