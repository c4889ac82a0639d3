//! The store, written once for both databases: every method of `Store` over a
//! `Dialect` (see `mod.rs`). Values are bound with `.param(..)` (not sqlx's `.bind`),
//! ids and times as `DbId`/`DbTime`, and rows are read by `rows`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::quota::Charge;
use corral_core::{
    Admission, Allocation, ApiKey, AuditEntry, AuditFilter, CatalogModel, Desired, Instance,
    InstanceEvent, InstanceSettings, LoginFailures, Membership, NewAuditEntry, OutboxMessage,
    Quota, RefreshSession, Refusal, Replica, State, Subject, Team, TeamMember, TokenPurpose,
    UsageRow, UsageSample, User,
};
use sqlx::{Executor, IntoArguments, QueryBuilder};
use tracing::instrument;
use uuid::Uuid;

use super::rows::{self, RowExt};
use super::value::{DbId, DbTime};
use super::{BuilderExt, Dialect, QueryExt, SqlStore};
use crate::codec::{
    self, API_KEY_COLUMNS, EVENT_COLUMNS, INSTANCE_COLUMNS, JOB_COLUMNS, MODEL_COLUMNS,
    REPLICA_COLUMNS, RUN_COLUMNS, SESSION_COLUMNS, TEAM_COLUMNS, TEAM_MEMBER_COLUMNS,
    USAGE_COLUMNS, USER_COLUMNS, conflict, in_use, page_limit, write_error,
};
use crate::{
    ActionToken, DesiredChange, Error, JobOutcome, Lease, LoginAttempt, OutboundJob, ReplicaRun,
    Result, Store, TEAM_IN_USE, UsageCounts, UserPatch, apply_desired, check_desired_change,
    check_settings, clamp_target,
};

#[async_trait]
impl<DB: Dialect> Store for SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    fn backend(&self) -> &'static str {
        DB::BACKEND
    }

    #[instrument(skip_all)]
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn create_user(&self, user: &User) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO users ({USER_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .param(DbId(user.id))
        .param(&user.email)
        .param(&user.display_name)
        .param(&user.password_hash)
        .param(user.role.as_str())
        .param(user.email_verified)
        .param(user.disabled)
        .param(&user.totp_secret)
        .param(user.totp_enabled)
        .param(user.totp_last_step)
        .param(DbTime(user.created_at))
        .param(DbTime(user.updated_at))
        .param(DbTime::opt(user.last_login_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("user"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn user_by_id(&self, user_id: Uuid) -> Result<Option<User>> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .param(DbId(user_id))
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::user(&row))
            .transpose()
    }

    #[instrument(skip_all)]
    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .param(email)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::user(&row))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn list_users(&self, offset: u32, limit: u32) -> Result<Vec<User>> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2"
        ))
        .param(page_limit(limit))
        .param(i64::from(offset))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::user)
        .collect()
    }

    #[instrument(skip_all)]
    async fn count_users(&self) -> Result<u64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<i64>("n")?.unsigned_abs())
    }

    #[instrument(skip_all)]
    async fn update_user(
        &self,
        user_id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>> {
        let removes_admin =
            patch.role.is_some_and(|r| !r.is_admin()) || patch.disabled == Some(true);
        let mut tx = self.pool.begin().await?;
        if removes_admin && let Some(lock) = DB::LOCK_ACTIVE_ADMINS {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        // One statement, so a patch applies whole or not at all; NULL means "unchanged"
        // except for the TOTP secret, whose "set" flag ($7) allows setting it to NULL.
        // $12: the patch demotes or disables, so the row must not be the last active
        // admin (`LAST_ADMIN_GUARD`).
        let updated = sqlx::query(&format!(
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
             WHERE id = $1 AND (NOT $12 OR {LAST_ADMIN_GUARD}) RETURNING {USER_COLUMNS}"
        ))
        .param(DbId(user_id))
        .param(&patch.display_name)
        .param(&patch.password_hash)
        .param(patch.role.map(|r| r.as_str()))
        .param(patch.email_verified)
        .param(patch.disabled)
        .param(patch.totp_secret.is_some())
        .param(patch.totp_secret.clone().flatten())
        .param(patch.totp_enabled)
        .param(DbTime::opt(patch.last_login_at))
        .param(DbTime(now))
        .param(removes_admin)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = updated else {
            return refused_or_missing(&mut *tx, user_id).await.map(|()| None);
        };
        if patch.password_hash.is_some() {
            // A reset link mailed before this change must not set the password again.
            sqlx::query(
                "UPDATE action_tokens SET used_at = $2 \
                 WHERE user_id = $1 AND purpose = $3 AND used_at IS NULL",
            )
            .param(DbId(user_id))
            .param(DbTime(now))
            .param(TokenPurpose::ResetPassword.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        rows::user(&row).map(Some)
    }

    #[instrument(skip_all)]
    async fn delete_user(&self, user_id: Uuid) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        if let Some(lock) = DB::LOCK_ACTIVE_ADMINS {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        let done = sqlx::query(&format!(
            "DELETE FROM users WHERE id = $1 AND {LAST_ADMIN_GUARD}"
        ))
        .param(DbId(user_id))
        .execute(&mut *tx)
        .await
        .map_err(in_use(USER_IN_USE))?;
        if DB::rows_affected(&done) != 1 {
            return refused_or_missing(&mut *tx, user_id).await.map(|()| false);
        }
        tx.commit().await?;
        Ok(true)
    }

    #[instrument(skip_all)]
    async fn consume_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = $2 \
             WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
        )
        .param(DbId(user_id))
        .param(step)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn count_login_attempt(
        &self,
        email: &str,
        max_failures: u32,
        lock_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<LoginAttempt> {
        // One upsert: concurrent attempts at one address each count, and none counts
        // while the address is locked (the UPDATE arm's WHERE, evaluated on the row as
        // it is once this statement holds it). In the UPDATE arm, `login_failures.count`
        // is the value before this attempt.
        let counted = sqlx::query(
            "INSERT INTO login_failures (email, count, locked_until, updated_at) \
             VALUES ($1, CASE WHEN 1 >= $2 THEN 0 ELSE 1 END, \
                     CASE WHEN 1 >= $2 THEN $3 END, $4) \
             ON CONFLICT (email) DO UPDATE SET \
               count = CASE WHEN login_failures.count + 1 >= $2 THEN 0 \
                            ELSE login_failures.count + 1 END, \
               locked_until = CASE WHEN login_failures.count + 1 >= $2 THEN $3 \
                                   ELSE login_failures.locked_until END, \
               updated_at = $4 \
             WHERE login_failures.locked_until IS NULL OR login_failures.locked_until <= $4 \
             RETURNING email, count, locked_until",
        )
        .param(email)
        .param(i64::from(max_failures))
        .param(DbTime(now + lock_for))
        .param(DbTime(now))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = counted {
            return Ok(LoginAttempt::counted(&rows::login_failures(&row)?, now));
        }
        // Not counted: locked. Until when (a lock lifted in between reads as "now").
        let until = self
            .login_failures(email)
            .await?
            .and_then(|f| f.locked_until)
            .unwrap_or(now);
        Ok(LoginAttempt::Locked { until })
    }

    #[instrument(skip_all)]
    async fn login_failures(&self, email: &str) -> Result<Option<LoginFailures>> {
        sqlx::query("SELECT email, count, locked_until FROM login_failures WHERE email = $1")
            .param(email)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::login_failures(&row))
            .transpose()
    }

    #[instrument(skip_all)]
    async fn clear_login_failures(&self, email: &str) -> Result<()> {
        sqlx::query("DELETE FROM login_failures WHERE email = $1")
            .param(email)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn create_action_token(&self, token: &ActionToken) -> Result<()> {
        sqlx::query(
            "INSERT INTO action_tokens (token_hash, user_id, purpose, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .param(&token.token_hash)
        .param(DbId(token.user_id))
        .param(token.purpose.as_str())
        .param(DbTime(token.created_at))
        .param(DbTime(token.expires_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("action token"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn consume_action_token(
        &self,
        token_hash: &str,
        purpose: TokenPurpose,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>> {
        // The conditions live in the UPDATE itself, so two concurrent uses cannot both win.
        sqlx::query(
            "UPDATE action_tokens SET used_at = $3 \
             WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
             RETURNING user_id",
        )
        .param(token_hash)
        .param(purpose.as_str())
        .param(DbTime(now))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| row.id("user_id"))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn create_session(&self, session: &RefreshSession) -> Result<()> {
        insert_session(&self.pool, session).await
    }

    #[instrument(skip_all)]
    async fn session_by_hash(&self, token_hash: &str) -> Result<Option<RefreshSession>> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM refresh_sessions WHERE token_hash = $1"
        ))
        .param(token_hash)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::session(&row))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn rotate_session(
        &self,
        old_id: Uuid,
        next: &RefreshSession,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // The conditional UPDATE is the first statement, so the check cannot go stale
        // before the insert: SQLite's transaction takes the write lock at once;
        // PostgreSQL row-locks the old session until commit, so a concurrent rotation
        // waits, then re-checks the condition and matches nothing.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE refresh_sessions SET replaced_at = $2 \
             WHERE id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .param(DbId(old_id))
        .param(DbTime(now))
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&done) != 1 {
            return Ok(false); // dropping `tx` rolls back
        }
        insert_session(&mut *tx, next).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[instrument(skip_all)]
    async fn revoke_session_family(&self, family_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE refresh_sessions SET revoked_at = $2 \
             WHERE family_id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .param(DbId(family_id))
        .param(DbTime(now))
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done))
    }

    #[instrument(skip_all)]
    async fn revoke_user_sessions(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE refresh_sessions SET revoked_at = $2 \
             WHERE user_id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .param(DbId(user_id))
        .param(DbTime(now))
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done))
    }

    #[instrument(skip_all)]
    async fn session_family_live(&self, family_id: Uuid) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM refresh_sessions \
             WHERE family_id = $1 AND replaced_at IS NULL AND revoked_at IS NULL",
        )
        .param(DbId(family_id))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64>("n")? > 0)
    }

    #[instrument(skip_all)]
    async fn create_api_key(&self, key: &ApiKey) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .param(DbId(key.id))
        .param(DbId(key.owner_id))
        .param(&key.name)
        .param(&key.prefix)
        .param(&key.key_hash)
        .param(DbTime(key.created_at))
        .param(DbTime::opt(key.expires_at))
        .param(DbTime::opt(key.last_used_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("api key"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn list_api_keys(&self, owner_id: Uuid) -> Result<Vec<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE owner_id = $1 \
             ORDER BY created_at DESC, id DESC"
        ))
        .param(DbId(owner_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::api_key)
        .collect()
    }

    #[instrument(skip_all)]
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>> {
        sqlx::query(&format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"
        ))
        .param(key_hash)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::api_key(&row))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn delete_api_key(&self, owner_id: Uuid, key_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND owner_id = $2")
            .param(DbId(key_id))
            .param(DbId(owner_id))
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn touch_api_key(&self, key_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        // Never moves backwards when concurrent requests finish out of order.
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .param(DbId(key_id))
        .param(DbTime(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn delete_user_api_keys(&self, owner_id: Uuid) -> Result<u64> {
        let done = sqlx::query("DELETE FROM api_keys WHERE owner_id = $1")
            .param(DbId(owner_id))
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    #[instrument(skip_all)]
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log \
               (actor_id, actor_email, action, target, ip, outcome, detail, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .param(DbId::opt(entry.actor_id))
        .param(&entry.actor_email)
        .param(&entry.action)
        .param(&entry.target)
        .param(&entry.ip)
        .param(entry.outcome.as_str())
        .param(&entry.detail)
        .param(DbTime(entry.at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut q = QueryBuilder::<DB>::new(
            "SELECT id, actor_id, actor_email, action, target, ip, outcome, detail, at \
             FROM audit_log WHERE 1 = 1",
        );
        if let Some(actor) = filter.actor_id {
            q.push(" AND actor_id = ").push_param(DbId(actor));
        }
        if let Some(prefix) = &filter.action {
            q.push(DB::PREFIX_MATCH)
                .push_param(DB::prefix_pattern(prefix));
        }
        if let Some(outcome) = filter.outcome {
            q.push(" AND outcome = ").push_param(outcome.as_str());
        }
        if let Some(since) = filter.since {
            q.push(" AND at >= ").push_param(DbTime(since));
        }
        if let Some(before) = filter.before_id {
            q.push(" AND id < ").push_param(before);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_param(i64::from(filter.effective_limit()));
        DB::fetch_all(q, &self.pool)
            .await?
            .iter()
            .map(rows::audit_entry)
            .collect()
    }

    #[instrument(skip_all)]
    async fn push_outbox(&self, message: &OutboxMessage) -> Result<()> {
        sqlx::query(
            "INSERT INTO outbox (id, to_addr, subject, body, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .param(DbId(message.id))
        .param(&message.to)
        .param(&message.subject)
        .param(&message.body)
        .param(DbTime(message.created_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("outbox message"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn list_outbox(&self, to: Option<&str>, limit: u32) -> Result<Vec<OutboxMessage>> {
        let mut q =
            QueryBuilder::<DB>::new("SELECT id, to_addr, subject, body, created_at FROM outbox");
        if let Some(to) = to {
            q.push(" WHERE to_addr = ").push_param(to);
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_param(page_limit(limit));
        DB::fetch_all(q, &self.pool)
            .await?
            .iter()
            .map(rows::outbox_message)
            .collect()
    }

    // --- outbound job queue ---

    #[instrument(skip_all)]
    async fn enqueue_job(&self, job: &OutboundJob) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO outbound_jobs ({JOB_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .param(DbId(job.id))
        .param(&job.kind)
        .param(&job.payload)
        .param(job.status.as_str())
        .param(i64::from(job.attempts))
        .param(DbTime(job.next_attempt_at))
        .param(DbTime::opt(job.lease_until))
        .param(DbId::opt(job.claim_id))
        .param(&job.last_error)
        .param(DbTime(job.created_at))
        .param(DbTime(job.updated_at))
        .execute(&self.pool)
        .await
        .map_err(conflict("outbound job"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn claim_jobs(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: u32,
    ) -> Result<Vec<OutboundJob>> {
        // The due condition is both in the subquery (which jobs, oldest first) and in
        // the UPDATE's own WHERE: on PostgreSQL a concurrent claimer that picked the
        // same rows waits for their lock, then re-checks that WHERE on the claimed row
        // and skips it; SQLite runs one writer at a time.
        let due = "kind = $1 AND ((status = 'pending' AND next_attempt_at <= $2) \
                   OR (status = 'claimed' AND lease_until <= $2))";
        sqlx::query(&format!(
            "UPDATE outbound_jobs SET status = 'claimed', claim_id = $3, lease_until = $4, \
               attempts = attempts + 1, updated_at = $2 \
             WHERE id IN (SELECT id FROM outbound_jobs WHERE {due} \
                          ORDER BY next_attempt_at, id LIMIT $5) \
               AND {due} \
             RETURNING {JOB_COLUMNS}"
        ))
        .param(kind)
        .param(DbTime(now))
        .param(DbId(Uuid::now_v7()))
        .param(DbTime(now + lease))
        .param(i64::from(limit.clamp(1, 100)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::job)
        .collect::<Result<Vec<_>>>()
        .map(codec::oldest_due_first)
    }

    #[instrument(skip_all)]
    async fn finish_job(
        &self,
        id: Uuid,
        claim_id: Uuid,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (status, next_attempt_at, error) = codec::job_outcome(outcome);
        let done = sqlx::query(
            "UPDATE outbound_jobs SET status = $3, \
               next_attempt_at = COALESCE($4, next_attempt_at), \
               last_error = COALESCE($5, last_error), lease_until = NULL, updated_at = $6 \
             WHERE id = $1 AND claim_id = $2 AND status = 'claimed'",
        )
        .param(DbId(id))
        .param(DbId(claim_id))
        .param(status.as_str())
        .param(DbTime::opt(next_attempt_at))
        .param(error)
        .param(DbTime(now))
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn list_jobs(&self, kind: &str, limit: u32) -> Result<Vec<OutboundJob>> {
        sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM outbound_jobs WHERE kind = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .param(kind)
        .param(page_limit(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::job)
        .collect()
    }

    // --- model catalog ---

    #[instrument(skip_all)]
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
        .param(&model.id)
        .param(&model.family)
        .param(&model.size)
        .param(model.cpu_supported)
        .param(model.gpu_supported)
        .param(i64::from(model.memory_required))
        .param(i64::from(model.expected_deploy_seconds))
        .param(codec::source_json(&model.source)?)
        .param(
            model
                .weights_bytes
                .map(|b| codec::signed(b, "weights_bytes"))
                .transpose()?,
        )
        .param(model.builtin)
        .execute(&self.pool)
        .await
        .map_err(write_error("model", "model"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn model(&self, model_id: &str) -> Result<Option<CatalogModel>> {
        sqlx::query(&format!("SELECT {MODEL_COLUMNS} FROM models WHERE id = $1"))
            .param(model_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::model(&row))
            .transpose()
    }

    #[instrument(skip_all)]
    async fn list_models(&self) -> Result<Vec<CatalogModel>> {
        sqlx::query(&format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::model)
            .collect()
    }

    #[instrument(skip_all)]
    async fn delete_model(&self, model_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM models WHERE id = $1")
            .param(model_id)
            .execute(&self.pool)
            .await
            .map_err(in_use(MODEL_IN_USE))?;
        Ok(DB::rows_affected(&done) == 1)
    }

    // --- teams ---

    #[instrument(skip_all)]
    async fn create_team(&self, team: &Team) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO teams ({TEAM_COLUMNS}, name_key) VALUES ($1, $2, $3, $4)"
        ))
        .param(DbId(team.id))
        .param(&team.name)
        .param(DbTime(team.created_at))
        .param(Team::name_key(&team.name))
        .execute(&self.pool)
        .await
        .map_err(conflict("team"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn team(&self, team_id: Uuid) -> Result<Option<Team>> {
        sqlx::query(&format!("SELECT {TEAM_COLUMNS} FROM teams WHERE id = $1"))
            .param(DbId(team_id))
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::team(&row))
            .transpose()
    }

    #[instrument(skip_all)]
    async fn list_teams(&self) -> Result<Vec<Team>> {
        sqlx::query(&format!(
            "SELECT {TEAM_COLUMNS} FROM teams ORDER BY name_key, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::team)
        .collect()
    }

    #[instrument(skip_all)]
    async fn rename_team(&self, team_id: Uuid, name: &str) -> Result<Option<Team>> {
        sqlx::query(&format!(
            "UPDATE teams SET name = $2, name_key = $3 WHERE id = $1 RETURNING {TEAM_COLUMNS}"
        ))
        .param(DbId(team_id))
        .param(name)
        .param(Team::name_key(name))
        .fetch_optional(&self.pool)
        .await
        .map_err(conflict("team"))?
        .map(|row| rows::team(&row))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn delete_team(&self, team_id: Uuid) -> Result<bool> {
        // Memberships cascade; instances RESTRICT (see 0004_teams.sql).
        let done = sqlx::query("DELETE FROM teams WHERE id = $1")
            .param(DbId(team_id))
            .execute(&self.pool)
            .await
            .map_err(in_use(TEAM_IN_USE))?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn set_team_member(&self, member: &TeamMember) -> Result<TeamMember> {
        // One upsert: a role change keeps the first `added_at`.
        let row = sqlx::query(&format!(
            "INSERT INTO team_members ({TEAM_MEMBER_COLUMNS}) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (team_id, user_id) DO UPDATE SET role = excluded.role \
             RETURNING {TEAM_MEMBER_COLUMNS}"
        ))
        .param(DbId(member.team_id))
        .param(DbId(member.user_id))
        .param(member.role.as_str())
        .param(DbTime(member.added_at))
        .fetch_one(&self.pool)
        .await
        .map_err(write_error("team member", "team or user"))?;
        rows::team_member(&row)
    }

    #[instrument(skip_all)]
    async fn remove_team_member(&self, team_id: Uuid, user_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .param(DbId(team_id))
            .param(DbId(user_id))
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn team_members(&self, team_id: Uuid) -> Result<Vec<TeamMember>> {
        sqlx::query(&format!(
            "SELECT {TEAM_MEMBER_COLUMNS} FROM team_members WHERE team_id = $1 \
             ORDER BY added_at, user_id"
        ))
        .param(DbId(team_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::team_member)
        .collect()
    }

    #[instrument(skip_all)]
    async fn user_teams(&self, user_id: Uuid) -> Result<Vec<Membership>> {
        sqlx::query(
            "SELECT t.id, t.name, t.created_at, m.role \
             FROM team_members m JOIN teams t ON t.id = m.team_id \
             WHERE m.user_id = $1 ORDER BY t.name_key, t.id",
        )
        .param(DbId(user_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::membership)
        .collect()
    }

    // --- instances ---

    #[instrument(skip_all)]
    async fn create_instance(&self, instance: &Instance, admission: &Admission) -> Result<()> {
        let (compute, settings) = (&instance.compute, &instance.settings);
        // Counters first: the first write takes SQLite's lock (PostgreSQL's row lock on
        // the counters), so concurrent creates are admitted one after the other.
        let mut tx = self.pool.begin().await?;
        charge::<DB>(&mut tx, &admission.charges(None, Some(instance))).await?;
        sqlx::query(&format!(
            "INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)"
        ))
        .param(DbId(instance.id))
        .param(DbId(instance.owner_id))
        .param(&instance.model_id)
        .param(&instance.driver)
        .param(compute.compute_type.as_str())
        .param(compute.cpu)
        .param(i64::from(compute.memory))
        .param(i64::from(compute.gpu_count))
        .param(&compute.instance_type)
        .param(compute.spot)
        .param(i64::from(settings.idle_timeout_seconds))
        .param(i64::from(settings.min_replicas))
        .param(i64::from(settings.max_replicas))
        .param(settings.wake_on_request)
        .param(codec::desired_str(instance.desired))
        .param(instance.state.as_str())
        .param(&instance.state_reason)
        .param(i64::from(instance.target_replicas))
        .param(DbTime(instance.created_at))
        .param(DbTime(instance.updated_at))
        .param(DbTime(instance.last_activity_at))
        .param(DbTime::opt(instance.running_since))
        .param(instance.running_seconds)
        .param(DbId::opt(instance.team_id))
        .execute(&mut *tx)
        .await
        .map_err(write_error("instance", "owner, model or team"))?;
        tx.commit().await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn instance(&self, instance_id: Uuid) -> Result<Option<Instance>> {
        sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
        ))
        .param(DbId(instance_id))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::instance(&row))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn instance_for_owner(
        &self,
        instance_id: Uuid,
        owner_id: Uuid,
    ) -> Result<Option<Instance>> {
        sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1 AND owner_id = $2"
        ))
        .param(DbId(instance_id))
        .param(DbId(owner_id))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::instance(&row))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn list_instances(&self, owner_id: Option<Uuid>) -> Result<Vec<Instance>> {
        let mut q = QueryBuilder::<DB>::new(format!("SELECT {INSTANCE_COLUMNS} FROM instances"));
        if let Some(owner_id) = owner_id {
            q.push(" WHERE owner_id = ").push_param(DbId(owner_id));
        }
        q.push(" ORDER BY created_at DESC, id DESC");
        DB::fetch_all(q, &self.pool)
            .await?
            .iter()
            .map(rows::instance)
            .collect()
    }

    #[instrument(skip_all)]
    async fn list_team_instances(&self, team_id: Uuid) -> Result<Vec<Instance>> {
        sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE team_id = $1 \
             ORDER BY created_at DESC, id DESC"
        ))
        .param(DbId(team_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::instance)
        .collect()
    }

    #[instrument(skip_all)]
    async fn set_desired(
        &self,
        instance_id: Uuid,
        from: Desired,
        to: Desired,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<Option<DesiredChange>> {
        check_desired_change(from, to)?;
        let changed = self
            .modify_instance(instance_id, admission, |inst| {
                if inst.desired != from {
                    return false;
                }
                apply_desired(inst, to, now);
                true
            })
            .await?;
        Ok(changed.map(|(inst, written)| {
            if written {
                DesiredChange::Set(inst)
            } else {
                DesiredChange::Stale(inst)
            }
        }))
    }

    #[instrument(skip_all)]
    async fn update_instance_settings(
        &self,
        instance_id: Uuid,
        settings: &InstanceSettings,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<Option<Instance>> {
        check_settings(settings)?;
        let changed = self
            .modify_instance(instance_id, admission, |inst| {
                inst.target_replicas = clamp_target(inst.target_replicas, settings);
                inst.settings = settings.clone();
                inst.updated_at = now;
                true
            })
            .await?;
        Ok(changed.map(|(inst, _)| inst))
    }

    #[instrument(skip_all)]
    async fn transition(
        &self,
        instance_id: Uuid,
        from: State,
        to: State,
        reason: Option<&str>,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        // The conditional UPDATE is the first statement, so the check cannot go stale
        // before the event is written: SQLite's transaction takes the write lock at
        // once; PostgreSQL row-locks the instance until commit, so a concurrent
        // transition waits, then re-checks `state` and matches nothing.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(&transition_sql::<DB>())
            .param(DbId(instance_id))
            .param(from.as_str())
            .param(to.as_str())
            .param(reason)
            .param(DbTime(now))
            .param(codec::starts_clock(to))
            .param(codec::stops_clock(to))
            .execute(&mut *tx)
            .await?;
        if DB::rows_affected(&done) != 1 {
            return Ok(false); // dropping `tx` rolls back
        }
        insert_event(&mut *tx, instance_id, Some((from, to)), message, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[instrument(skip_all)]
    async fn touch_activity(&self, instance_id: Uuid, now: DateTime<Utc>) -> Result<()> {
        // Never moves backwards when concurrent requests finish out of order.
        sqlx::query(
            "UPDATE instances SET last_activity_at = $2 \
             WHERE id = $1 AND last_activity_at < $2",
        )
        .param(DbId(instance_id))
        .param(DbTime(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn set_target_replicas(
        &self,
        instance_id: Uuid,
        replicas: u32,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let changed = self
            .modify_instance(instance_id, admission, |inst| {
                inst.target_replicas = replicas;
                inst.updated_at = now;
                true
            })
            .await?;
        Ok(changed.is_some())
    }

    #[instrument(skip_all)]
    async fn delete_instance(&self, instance_id: Uuid, admission: &Admission) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let Some(old) = lock_instance::<DB>(&mut tx, instance_id).await? else {
            return Ok(false);
        };
        charge::<DB>(&mut tx, &admission.charges(Some(&old), None)).await?;
        let done = sqlx::query("DELETE FROM instances WHERE id = $1")
            .param(DbId(instance_id))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    // --- quotas and admission counters ---

    #[instrument(skip_all)]
    async fn quota(&self, subject: &Subject) -> Result<Option<Quota>> {
        sqlx::query("SELECT quota FROM quotas WHERE subject = $1")
            .param(subject.key())
            .fetch_optional(&self.pool)
            .await?
            .map(|row| codec::quota_from_json(&row.get::<String>("quota")?))
            .transpose()
    }

    #[instrument(skip_all)]
    async fn set_quota(&self, subject: &Subject, quota: &Quota, now: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "INSERT INTO quotas (subject, quota, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (subject) DO UPDATE SET quota = excluded.quota, \
               updated_at = excluded.updated_at",
        )
        .param(subject.key())
        .param(codec::quota_json(quota)?)
        .param(DbTime(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn allocation(&self, subject: &Subject) -> Result<Allocation> {
        read_allocation::<DB, _>(&self.pool, &subject.key()).await
    }

    // --- instance events ---

    #[instrument(skip_all)]
    async fn append_event(
        &self,
        instance_id: Uuid,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        insert_event(&self.pool, instance_id, None, message, now).await
    }

    #[instrument(skip_all)]
    async fn list_events(&self, instance_id: Uuid, limit: u32) -> Result<Vec<InstanceEvent>> {
        // The latest `limit`, then turned back into recording order.
        sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM ( \
               SELECT {EVENT_COLUMNS} FROM instance_events WHERE instance_id = $1 \
               ORDER BY id DESC LIMIT $2 \
             ) AS latest ORDER BY id"
        ))
        .param(DbId(instance_id))
        .param(page_limit(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::event)
        .collect()
    }

    // --- replicas ---

    #[instrument(skip_all)]
    async fn create_replica(&self, replica: &Replica) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO replicas ({REPLICA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .param(DbId(replica.id))
        .param(DbId(replica.instance_id))
        .param(&replica.driver_ref)
        .param(&replica.endpoint)
        .param(codec::replica_state_str(replica.state))
        .param(i64::from(replica.restarts))
        .param(DbTime(replica.started_at))
        .param(DbTime(replica.updated_at))
        .execute(&self.pool)
        .await
        .map_err(write_error("replica", "instance"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn update_replica(&self, replica: &Replica) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE replicas SET driver_ref = $2, endpoint = $3, state = $4, restarts = $5, \
               started_at = $6, updated_at = $7 \
             WHERE id = $1",
        )
        .param(DbId(replica.id))
        .param(&replica.driver_ref)
        .param(&replica.endpoint)
        .param(codec::replica_state_str(replica.state))
        .param(i64::from(replica.restarts))
        .param(DbTime(replica.started_at))
        .param(DbTime(replica.updated_at))
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn delete_replica(&self, replica_id: Uuid) -> Result<bool> {
        let done = sqlx::query("DELETE FROM replicas WHERE id = $1")
            .param(DbId(replica_id))
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn list_replicas(&self, instance_id: Uuid) -> Result<Vec<Replica>> {
        sqlx::query(&format!(
            "SELECT {REPLICA_COLUMNS} FROM replicas WHERE instance_id = $1 \
             ORDER BY started_at, id"
        ))
        .param(DbId(instance_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::replica)
        .collect()
    }

    #[instrument(skip_all)]
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

    #[instrument(skip_all)]
    async fn start_run(&self, run: &ReplicaRun) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO replica_runs ({RUN_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .param(DbId(run.id))
        .param(DbId(run.replica_id))
        .param(DbId(run.instance_id))
        .param(DbId(run.owner_id))
        .param(&run.model_id)
        .param(&run.driver)
        .param(&run.driver_ref)
        .param(codec::compute_json(&run.compute)?)
        .param(DbTime(run.started_at))
        .param(DbTime::opt(run.ended_at))
        .execute(&self.pool)
        .await
        .map_err(write_error("replica run", "replica run"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn end_run(&self, instance_id: Uuid, replica_id: Uuid, at: DateTime<Utc>) -> Result<u64> {
        // `ended_at IS NULL` makes a second call a no-op: a run is closed once.
        let done = sqlx::query(&format!(
            "UPDATE replica_runs SET ended_at = {}(started_at, $3) \
             WHERE instance_id = $1 AND replica_id = $2 AND ended_at IS NULL",
            DB::GREATEST
        ))
        .param(DbId(instance_id))
        .param(DbId(replica_id))
        .param(DbTime(at))
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done))
    }

    #[instrument(skip_all)]
    async fn runs_for_instance(&self, instance_id: Uuid) -> Result<Vec<ReplicaRun>> {
        sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM replica_runs WHERE instance_id = $1 \
             ORDER BY started_at, id"
        ))
        .param(DbId(instance_id))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::run)
        .collect()
    }

    #[instrument(skip_all)]
    async fn runs_overlapping(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<ReplicaRun>> {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT {RUN_COLUMNS} FROM replica_runs WHERE 1 = 1"
        ));
        if let Some(owner_id) = owner_id {
            q.push(" AND owner_id = ").push_param(DbId(owner_id));
        }
        if let Some(since) = since {
            q.push(" AND (ended_at IS NULL OR ended_at > ")
                .push_param(DbTime(since))
                .push(")");
        }
        if let Some(until) = until {
            q.push(" AND started_at < ").push_param(DbTime(until));
        }
        q.push(" ORDER BY started_at, id");
        DB::fetch_all(q, &self.pool)
            .await?
            .iter()
            .map(rows::run)
            .collect()
    }

    // --- usage ---

    #[instrument(skip_all)]
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
        .param(DbId(sample.owner_id))
        .param(DbId(sample.instance_id))
        .param(&sample.model_id)
        .param(DbTime(codec::hour_start(sample.at)))
        .param(counts.requests)
        .param(counts.prompt_tokens)
        .param(counts.completion_tokens)
        .execute(&self.pool)
        .await
        .map_err(write_error("usage", "usage"))?;
        Ok(())
    }

    #[instrument(skip_all)]
    async fn usage(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<UsageRow>> {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT {USAGE_COLUMNS} FROM usage_hourly WHERE 1 = 1"
        ));
        if let Some(owner_id) = owner_id {
            q.push(" AND owner_id = ").push_param(DbId(owner_id));
        }
        if let Some(since) = since {
            q.push(" AND hour >= ").push_param(DbTime(since));
        }
        if let Some(until) = until {
            q.push(" AND hour < ").push_param(DbTime(until));
        }
        q.push(" ORDER BY hour, instance_id, model_id, owner_id");
        DB::fetch_all(q, &self.pool)
            .await?
            .iter()
            .map(rows::usage_row)
            .collect()
    }

    #[instrument(skip_all)]
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Lease>> {
        // One statement: the insert, the takeover of an expired lease and the renewal
        // are all decided by the database, so two contenders cannot both win. A
        // conflicting row the WHERE refuses returns nothing.
        sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
                 token = CASE WHEN leases.holder = excluded.holder \
                     THEN leases.token ELSE leases.token + 1 END, \
                 holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= $4 \
             RETURNING name, holder, token, expires_at",
        )
        .param(name)
        .param(holder)
        .param(DbTime(expires_at))
        .param(DbTime(now))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| rows::lease(&row))
        .transpose()
    }

    #[instrument(skip_all)]
    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        token: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at = $4 \
             WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > $4",
        )
        .param(name)
        .param(holder)
        .param(token)
        .param(DbTime(now))
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    #[instrument(skip_all)]
    async fn lease(&self, name: &str) -> Result<Option<Lease>> {
        sqlx::query("SELECT name, holder, token, expires_at FROM leases WHERE name = $1")
            .param(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| rows::lease(&row))
            .transpose()
    }
}

/// Shared by `create_session` and `rotate_session` (inside its transaction).
async fn insert_session<'c, DB: Dialect, E>(conn: E, session: &RefreshSession) -> Result<()>
where
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    sqlx::query(&format!(
        "INSERT INTO refresh_sessions ({SESSION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .param(DbId(session.id))
    .param(DbId(session.user_id))
    .param(DbId(session.family_id))
    .param(&session.token_hash)
    .param(DbTime(session.created_at))
    .param(DbTime(session.expires_at))
    .param(DbTime::opt(session.replaced_at))
    .param(DbTime::opt(session.revoked_at))
    .param(&session.ip)
    .param(&session.user_agent)
    .execute(conn)
    .await
    .map_err(conflict("session"))?;
    Ok(())
}

/// True unless the `users` row the statement is on is the last active admin (role
/// admin, not disabled): it is not one, or another one exists.
const LAST_ADMIN_GUARD: &str = "(NOT (role = 'admin' AND NOT disabled) OR EXISTS ( \
     SELECT 1 FROM users AS other \
     WHERE other.role = 'admin' AND NOT other.disabled AND other.id <> users.id))";

/// After a guarded write matched no row: `Error::LastAdmin` if the user exists (the
/// guard refused), else Ok (no such user). The caller's transaction rolls back.
async fn refused_or_missing<'c, DB: Dialect, E>(conn: E, user_id: Uuid) -> Result<()>
where
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    let found = sqlx::query("SELECT id FROM users WHERE id = $1")
        .param(DbId(user_id))
        .fetch_optional(conn)
        .await?;
    match found {
        Some(_) => Err(crate::Error::LastAdmin),
        None => Ok(()),
    }
}

const MODEL_IN_USE: &str = "the model is deployed by instances: delete them first";
const USER_IN_USE: &str = "the user still owns instances: stop and delete them first";

/// Shared by `append_event` (a note) and `transition` (inside its transaction).
async fn insert_event<'c, DB: Dialect, E>(
    conn: E,
    instance_id: Uuid,
    states: Option<(State, State)>,
    message: &str,
    at: DateTime<Utc>,
) -> Result<()>
where
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    sqlx::query(
        "INSERT INTO instance_events (instance_id, from_state, to_state, message, at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .param(DbId(instance_id))
    .param(states.map(|(from, _)| from.as_str()))
    .param(states.map(|(_, to)| to.as_str()))
    .param(message)
    .param(DbTime(at))
    .execute(conn)
    .await
    .map_err(write_error("instance event", "instance"))?;
    Ok(())
}

/// `transition`'s compare-and-set. $6: `to` starts the cost clock, $7: `to` stops it.
/// Every right-hand side reads the row as it was before this update.
fn transition_sql<DB: Dialect>() -> String {
    format!(
        "UPDATE instances SET state = $3, state_reason = $4, updated_at = $5, \
    running_seconds = running_seconds + CASE WHEN $7 AND running_since IS NOT NULL \
        THEN {}(0, {}) ELSE 0 END, \
    running_since = CASE WHEN $7 THEN NULL WHEN $6 THEN COALESCE(running_since, $5) \
        ELSE running_since END \
    WHERE id = $1 AND state = $2",
        DB::GREATEST,
        DB::whole_seconds_between("running_since", "$5"),
    )
}

impl<DB: Dialect> SqlStore<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    /// Read-modify-write of one instance in one transaction: the row is locked, read,
    /// changed by `change` (false: leave it, nothing written), the allocation
    /// difference charged to the counters (`Error::Refused` rolls everything back),
    /// and the fields these methods change written back. None if absent; else the
    /// instance as it is now and whether this call wrote it.
    async fn modify_instance(
        &self,
        instance_id: Uuid,
        admission: &Admission,
        change: impl FnOnce(&mut Instance) -> bool + Send,
    ) -> Result<Option<(Instance, bool)>> {
        let mut tx = self.pool.begin().await?;
        let Some(old) = lock_instance::<DB>(&mut tx, instance_id).await? else {
            return Ok(None);
        };
        let mut inst = old.clone();
        if !change(&mut inst) {
            return Ok(Some((old, false)));
        }
        charge::<DB>(&mut tx, &admission.charges(Some(&old), Some(&inst))).await?;
        let s = &inst.settings;
        sqlx::query(
            "UPDATE instances SET desired = $2, idle_timeout_seconds = $3, min_replicas = $4, \
               max_replicas = $5, wake_on_request = $6, target_replicas = $7, \
               updated_at = $8, last_activity_at = $9 \
             WHERE id = $1",
        )
        .param(DbId(instance_id))
        .param(codec::desired_str(inst.desired))
        .param(i64::from(s.idle_timeout_seconds))
        .param(i64::from(s.min_replicas))
        .param(i64::from(s.max_replicas))
        .param(s.wake_on_request)
        .param(i64::from(inst.target_replicas))
        .param(DbTime(inst.updated_at))
        .param(DbTime(inst.last_activity_at))
        .execute(&mut *tx)
        .await
        .map_err(write_error("instance", "instance"))?;
        tx.commit().await?;
        Ok(Some((inst, true)))
    }
}

/// Locks an instance's row for the rest of the transaction, then reads it. The lock
/// is a write (a no-op update), so that SQLite's transaction takes the write lock
/// before it reads (a read first could not be upgraded once another writer
/// committed) and PostgreSQL holds the row until commit.
async fn lock_instance<DB: Dialect>(
    tx: &mut sqlx::Transaction<'_, DB>,
    instance_id: Uuid,
) -> Result<Option<Instance>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    let done = sqlx::query("UPDATE instances SET updated_at = updated_at WHERE id = $1")
        .param(DbId(instance_id))
        .execute(&mut **tx)
        .await?;
    if DB::rows_affected(&done) != 1 {
        return Ok(None);
    }
    sqlx::query(&format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
    ))
    .param(DbId(instance_id))
    .fetch_optional(&mut **tx)
    .await?
    .map(|row| rows::instance(&row))
    .transpose()
}

/// Applies each charge to its subject's counters, refusing (`Error::Refused`) when a
/// counter that grows would pass its limit. The condition lives in the UPDATE, so
/// concurrent charges are checked against each other's results (PostgreSQL re-checks
/// it on the row a concurrent transaction committed). Counters never go below zero:
/// giving back more than is held (a host renamed in the configuration) leaves 0.
async fn charge<DB: Dialect>(tx: &mut sqlx::Transaction<'_, DB>, charges: &[Charge]) -> Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    for c in charges {
        let key = c.subject.key();
        sqlx::query(
            "INSERT INTO allocations (subject) VALUES ($1) ON CONFLICT (subject) DO NOTHING",
        )
        .param(&key)
        .execute(&mut **tx)
        .await?;
        let (d, l) = (c.delta, c.limits);
        let g = DB::GREATEST;
        let done = sqlx::query(&format!(
            "UPDATE allocations SET \
               instances = {g}(0, instances + $2), replicas = {g}(0, replicas + $3), \
               milli_vcpu = {g}(0, milli_vcpu + $4), memory_mib = {g}(0, memory_mib + $5), \
               gpus = {g}(0, gpus + $6) \
             WHERE subject = $1 \
               AND ($2 <= 0 OR $7 IS NULL OR instances + $2 <= $7) \
               AND ($3 <= 0 OR $8 IS NULL OR replicas + $3 <= $8) \
               AND ($4 <= 0 OR $9 IS NULL OR milli_vcpu + $4 <= $9) \
               AND ($5 <= 0 OR $10 IS NULL OR memory_mib + $5 <= $10) \
               AND ($6 <= 0 OR $11 IS NULL OR gpus + $6 <= $11)"
        ))
        .param(&key)
        .param(d.instances)
        .param(d.replicas)
        .param(d.milli_vcpu)
        .param(d.memory_mib)
        .param(d.gpus)
        .param(l.instances)
        .param(l.replicas)
        .param(l.milli_vcpu)
        .param(l.memory_mib)
        .param(l.gpus)
        .execute(&mut **tx)
        .await?;
        if DB::rows_affected(&done) != 1 {
            let in_use = read_allocation::<DB, _>(&mut **tx, &key).await?;
            return Err(match Refusal::new(c.kind, c.limits, in_use, c.delta) {
                Some(refusal) => Error::Refused(refusal),
                None => Error::Corrupt(format!("counters of {key} refused a charge")),
            });
        }
    }
    Ok(())
}

async fn read_allocation<'c, DB: Dialect, E>(conn: E, key: &str) -> Result<Allocation>
where
    E: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    let Some(row) = sqlx::query(
        "SELECT instances, replicas, milli_vcpu, memory_mib, gpus FROM allocations \
         WHERE subject = $1",
    )
    .param(key)
    .fetch_optional(conn)
    .await?
    else {
        return Ok(Allocation::default());
    };
    Ok(Allocation {
        instances: row.get("instances")?,
        replicas: row.get("replicas")?,
        milli_vcpu: row.get("milli_vcpu")?,
        memory_mib: row.get("memory_mib")?,
        gpus: row.get("gpus")?,
    })
}
