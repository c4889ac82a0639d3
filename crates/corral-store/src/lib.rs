//! Persistence for Corral behind one `Store` trait, with a backend per database.
//! Every backend runs the same conformance suite (`conformance`), so the API can be
//! written once against the trait.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use corral_core::{
    Admission, Allocation, ApiKey, AuditEntry, AuditFilter, CatalogModel, ComputeSpec, Desired,
    Instance, InstanceEvent, InstanceSettings, LoginFailures, Membership, NewAuditEntry,
    OutboxMessage, Quota, RefreshSession, Replica, Role, State, Subject, Team, TeamMember,
    TokenPurpose, UsageRow, UsageSample, User,
};
use uuid::Uuid;

mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod postgres;
mod sql;
pub mod sqlite;

pub use error::{Error, Result};
pub use postgres::PostgresStore;
pub use sql::{Dialect, SqlStore};
pub use sqlite::SqliteStore;

/// Opens the store a URL names: `sqlite://PATH` or a plain path is SQLite (file and
/// parent folders are created), `postgres://` or `postgresql://` is PostgreSQL.
/// Migrations run before this returns, so the schema is always current.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(PostgresStore::connect(url).await?));
    }
    let path = sqlite_path(url)?.ok_or_else(|| Error::UnsupportedUrl(url.to_string()))?;
    Ok(std::sync::Arc::new(SqliteStore::open(path).await?))
}

/// The database file a SQLite URL (`sqlite://PATH`, `sqlite:PATH` or a plain path)
/// names; `None` for a PostgreSQL URL. `corral serve` needs the file to lock it: SQLite
/// serves one process only.
pub fn sqlite_path(url: &str) -> Result<Option<&std::path::Path>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(None);
    }
    let path = match url.split_once("://") {
        Some(("sqlite", path)) => path,
        Some((scheme, _)) => return Err(Error::UnsupportedUrl(scheme.to_string())),
        None => url.strip_prefix("sqlite:").unwrap_or(url),
    };
    if path.is_empty() {
        return Err(Error::UnsupportedUrl("sqlite:// with no path".into()));
    }
    Ok(Some(std::path::Path::new(path)))
}

/// `Error::InUse`'s sentence for deleting a team that still owns instances (every
/// backend says the same).
pub const TEAM_IN_USE: &str = "the team still owns instances: stop and delete them first";

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

impl Lease {
    /// What `acquire_lease` writes when `current` is stored (the rule every backend
    /// keeps): the lease for `holder` until `expires_at` if it is free, expired at
    /// `now`, or already `holder`'s; `None` while another holds it. A new holder gets
    /// the next token, a renewal keeps it.
    pub fn next(
        current: Option<&Lease>,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Option<Lease> {
        let token = match current {
            None => 1,
            Some(c) if c.holder == holder => c.token,
            Some(c) if c.expires_at <= now => c.token + 1,
            Some(_) => return None,
        };
        Some(Lease {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
            expires_at,
        })
    }
}

/// A job of the outbound queue: work that leaves Corral and may fail or be slow (mail
/// now; webhook deliveries later use the same table with their own `kind`). Jobs are
/// claimed with a lease, so that several `corral serve` sharing the store never run one
/// job twice at the same time, and retried with back-off until they succeed or fail for
/// good.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundJob {
    pub id: Uuid,
    /// Which worker handles it, e.g. `mail`.
    pub kind: String,
    /// The job's input as the worker reads it (JSON text); no secrets in clear.
    pub payload: String,
    pub status: JobStatus,
    /// Claims so far (each claim is one attempt).
    pub attempts: u32,
    /// Not claimed before this time (back-off between attempts).
    pub next_attempt_at: DateTime<Utc>,
    /// While `Claimed`: the claim is the claimer's until then; after, another worker may
    /// claim the job again (its worker died).
    pub lease_until: Option<DateTime<Utc>>,
    /// The claim that holds the job (a new id per `claim_jobs` call).
    pub claim_id: Option<Uuid>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OutboundJob {
    /// A new job, due at once.
    pub fn new(kind: &str, payload: String, now: DateTime<Utc>) -> Self {
        OutboundJob {
            id: Uuid::now_v7(),
            kind: kind.to_string(),
            payload,
            status: JobStatus::Pending,
            attempts: 0,
            next_attempt_at: now,
            lease_until: None,
            claim_id: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for its `next_attempt_at`.
    Pending,
    /// A worker holds it until `lease_until`.
    Claimed,
    /// Done: delivered.
    Sent,
    /// Done: gave up after the last attempt (`last_error` says why).
    Failed,
    /// Done: nothing to deliver (e.g. a reset asked for an address with no account).
    Dropped,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Claimed => "claimed",
            JobStatus::Sent => "sent",
            JobStatus::Failed => "failed",
            JobStatus::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => JobStatus::Pending,
            "claimed" => JobStatus::Claimed,
            "sent" => JobStatus::Sent,
            "failed" => JobStatus::Failed,
            "dropped" => JobStatus::Dropped,
            other => return Err(Error::Corrupt(format!("job status {other:?}"))),
        })
    }

    /// Whether the job is finished (no worker will take it again).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            JobStatus::Sent | JobStatus::Failed | JobStatus::Dropped
        )
    }
}

/// How an attempt at a claimed job ended (`Store::finish_job`).
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Sent,
    Dropped,
    /// Failed; try again from `at`.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// Failed for good.
    Failed {
        error: String,
    },
}

/// The outcome of `Store::count_login_attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Counted: go on and check the secret. `locked_until` is set when this attempt was
    /// the last one before the lock (a failure then answers "locked").
    Allowed { locked_until: Option<DateTime<Utc>> },
    /// The address is locked until then; nothing was counted.
    Locked { until: DateTime<Utc> },
}

impl LoginAttempt {
    /// The outcome of an attempt that was counted, from the state after counting: a
    /// lock that ends after `now` was set by this very attempt.
    pub fn counted(state: &LoginFailures, now: DateTime<Utc>) -> Self {
        LoginAttempt::Allowed {
            locked_until: state.locked_until.filter(|&until| until > now),
        }
    }
}

/// One run of a replica: from the driver's launch until the replica was stopped,
/// replaced, or found dead or lost. A replica that is restarted in place (same
/// replica id, new process or task) has one run per launch. Runs are the durable
/// history behind cost and behind the logs of instances that no longer run: they
/// copy what they need from the instance (owner, model, compute) and have no foreign
/// keys, so they outlive the replica, the instance and the user.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRun {
    /// The run's own id (a replica restarted in place has several runs).
    pub id: Uuid,
    pub replica_id: Uuid,
    pub instance_id: Uuid,
    pub owner_id: Uuid,
    pub model_id: String,
    /// Name of the compute driver that launched it (`local`, `ecs`).
    pub driver: String,
    /// What that driver needs to read the run's logs again (log file, task ARN).
    pub driver_ref: String,
    /// The instance's compute at launch: the run is priced with it.
    pub compute: ComputeSpec,
    /// When the driver launched it (billing starts at launch, as AWS bills).
    pub started_at: DateTime<Utc>,
    /// None while it runs.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A usage sample's counts as the signed 64-bit integers every backend stores, checked
/// the same way by each: a sample counts at least one request (zero would create an
/// hourly row that no request made), and no count may exceed `i64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageCounts {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl UsageCounts {
    pub fn of(sample: &UsageSample) -> Result<Self> {
        if sample.requests == 0 {
            return Err(Error::Invalid(
                "a usage sample counts at least one request".into(),
            ));
        }
        Ok(UsageCounts {
            requests: codec::signed(sample.requests, "requests")?,
            prompt_tokens: codec::signed(sample.prompt_tokens, "prompt_tokens")?,
            completion_tokens: codec::signed(sample.completion_tokens, "completion_tokens")?,
        })
    }
}

/// The outcome of `Store::set_desired`'s compare-and-set.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredChange {
    /// `desired` was the expected value and is now the new one: the instance after.
    Set(Instance),
    /// `desired` was something else (another request changed it first): nothing was
    /// written; the instance as it is.
    Stale(Instance),
}

/// The new `target_replicas` after a settings change: the old one brought within the
/// new bounds (a running instance has at least one replica), as the autoscaler would.
pub fn clamp_target(target: u32, settings: &InstanceSettings) -> u32 {
    let lo = settings.min_replicas.max(1);
    target.clamp(lo, settings.max_replicas.max(lo))
}

/// Refuses settings no instance may have (`min_replicas > max_replicas`), the same
/// way in every backend.
pub fn check_settings(settings: &InstanceSettings) -> Result<()> {
    if settings.min_replicas > settings.max_replicas {
        return Err(Error::Invalid(format!(
            "min_replicas {} is above max_replicas {}",
            settings.min_replicas, settings.max_replicas
        )));
    }
    Ok(())
}

/// Nothing leaves `Deleted` (#13.3): a deleted instance's compute is being removed,
/// and no wake, start or idle check may bring it back.
pub fn check_desired_change(from: Desired, to: Desired) -> Result<()> {
    if from == Desired::Deleted && to != Desired::Deleted {
        return Err(Error::Invalid(format!(
            "a deleted instance cannot become {to:?}"
        )));
    }
    Ok(())
}

/// What `set_desired` writes once its comparison held.
pub fn apply_desired(inst: &mut Instance, to: Desired, now: DateTime<Utc>) {
    inst.desired = to;
    inst.updated_at = now;
    if to == Desired::Running && inst.last_activity_at < now {
        inst.last_activity_at = now;
    }
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
    /// Fails with `Error::LastAdmin` (and writes nothing) when the patch would demote
    /// or disable the last active admin (role admin, not disabled); concurrent patches
    /// of two admins cannot both pass that check. A patch that sets `password_hash`
    /// also spends every unused password-reset token of the user, so a reset link
    /// mailed before a password change no longer works.
    async fn update_user(
        &self,
        id: Uuid,
        patch: &UserPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<User>>;
    /// Deletes the user and their credentials (sessions, keys, tokens). False if absent.
    /// Fails with `Error::InUse` (and deletes nothing) while the user still owns
    /// instances, in any state: those stand for compute that must be stopped and
    /// deleted first, so nothing is orphaned. Their usage history stays. Fails with
    /// `Error::LastAdmin` (deleting nothing) for the last active admin, atomically as
    /// `update_user`.
    async fn delete_user(&self, id: Uuid) -> Result<bool>;
    /// Records a TOTP step as used if it is newer than the last one; false means the
    /// code was already used (or an older one), or there is no such user, and must be
    /// refused. Atomic.
    async fn consume_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool>;

    // --- lockout ---
    /// Counts an attempt at `email`'s secret (password, TOTP code) *before* it is
    /// checked, in one atomic step, so that concurrent attempts cannot all pass the
    /// lock check before any of them is counted. While the address is locked
    /// (`locked_until > now`) nothing is counted and the attempt is refused. Otherwise
    /// the count goes up; the attempt that brings it to `max_failures` is still allowed
    /// (it is the last guess) but locks the address until `now + lock_for` and the count
    /// restarts. A successful attempt is undone with `clear_login_failures`.
    async fn count_login_attempt(
        &self,
        email: &str,
        max_failures: u32,
        lock_for: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<LoginAttempt>;
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
    /// Whether the login `family_id` (a session family, the `sid` of access tokens)
    /// still has a live link (neither replaced nor revoked): false once it was logged
    /// out or revoked (reuse, logout everywhere, password change, lock), and for an
    /// unknown family. Read consistently: a revocation is seen by the next call.
    async fn session_family_live(&self, family_id: Uuid) -> Result<bool>;

    // --- API keys ---
    async fn create_api_key(&self, key: &ApiKey) -> Result<()>;
    /// The owner's keys, newest first.
    async fn list_api_keys(&self, owner_id: Uuid) -> Result<Vec<ApiKey>>;
    async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>>;
    /// Owner-scoped: deleting another user's key id returns false and changes nothing.
    async fn delete_api_key(&self, owner_id: Uuid, id: Uuid) -> Result<bool>;
    /// Sets `last_used_at` to `now` unless it is already later.
    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;
    /// Deletes every API key of the owner (password change or reset, logout
    /// everywhere). Returns how many.
    async fn delete_user_api_keys(&self, owner_id: Uuid) -> Result<u64>;

    // --- audit log ---
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<()>;
    /// Newest first, filtered.
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;

    // --- mail outbox ---
    async fn push_outbox(&self, message: &OutboxMessage) -> Result<()>;
    /// Newest first; `to` filters by recipient; `limit` is clamped to 1..=500.
    async fn list_outbox(&self, to: Option<&str>, limit: u32) -> Result<Vec<OutboxMessage>>;

    // --- outbound job queue (mail; later webhooks) ---
    /// Inserts the job as given (normally `OutboundJob::new`).
    /// `Error::Conflict("outbound job")` for a duplicate id.
    async fn enqueue_job(&self, job: &OutboundJob) -> Result<()>;
    /// Claims up to `limit` (clamped to 1..=100) jobs of `kind` that are due: pending
    /// with `next_attempt_at <= now`, or claimed with a lease that ended (`lease_until
    /// <= now`: their worker died). Each becomes `Claimed` with a new `claim_id` (one
    /// per call), `lease_until = now + lease`, one more attempt. Atomic: concurrent
    /// calls, from any number of servers, never claim the same job. Oldest due first.
    async fn claim_jobs(
        &self,
        kind: &str,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: u32,
    ) -> Result<Vec<OutboundJob>>;
    /// Records how the attempt of claim `claim_id` ended: `Sent`, `Dropped` or `Failed`
    /// finish the job; `Retry` makes it pending again from `at`. Only while that claim
    /// still holds the job (status `Claimed`, same `claim_id`): false (nothing written)
    /// once another worker re-claimed it after the lease ended.
    async fn finish_job(
        &self,
        id: Uuid,
        claim_id: Uuid,
        outcome: &JobOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// The jobs of `kind`, newest first; `limit` is clamped to 1..=500.
    async fn list_jobs(&self, kind: &str, limit: u32) -> Result<Vec<OutboundJob>>;

    // --- model catalog ---
    /// Inserts the entry, or overwrites every field of the entry with that id.
    /// Idempotent: the server seeds `corral_core::catalog::builtin_models()` with it at
    /// every start.
    async fn upsert_model(&self, model: &CatalogModel) -> Result<()>;
    async fn model(&self, id: &str) -> Result<Option<CatalogModel>>;
    /// The whole catalog, ordered by id.
    async fn list_models(&self) -> Result<Vec<CatalogModel>>;
    /// False if absent. Fails with `Error::InUse` (and deletes nothing) while any
    /// instance, in any state, is of this model.
    async fn delete_model(&self, id: &str) -> Result<bool>;

    // --- teams ---
    /// Inserts the team as given (`name` already validated, see
    /// `corral_core::validate_team_name`). `Error::Conflict("team")` if the id or the
    /// name, ignoring case (`Team::name_key`), is taken.
    async fn create_team(&self, team: &Team) -> Result<()>;
    async fn team(&self, id: Uuid) -> Result<Option<Team>>;
    /// Every team, ordered by `Team::name_key`, then id.
    async fn list_teams(&self) -> Result<Vec<Team>>;
    /// Renames the team; returns it (None if absent). `Error::Conflict("team")` (and
    /// nothing changed) if another team has the name, ignoring case; a team may change
    /// the case of its own name.
    async fn rename_team(&self, id: Uuid, name: &str) -> Result<Option<Team>>;
    /// Deletes the team and its memberships. False if absent. Fails with
    /// `Error::InUse` (and deletes nothing) while the team owns instances, in any
    /// state, as for users.
    async fn delete_team(&self, id: Uuid) -> Result<bool>;
    /// Adds the user to the team with `member.role`, or changes the role of a member
    /// (then `added_at` stays the first one). Returns the membership as stored.
    /// `Error::UnknownReference("team or user")` if either does not exist. Deleting
    /// the user removes their memberships.
    async fn set_team_member(&self, member: &TeamMember) -> Result<TeamMember>;
    /// False if the user was not a member.
    async fn remove_team_member(&self, team_id: Uuid, user_id: Uuid) -> Result<bool>;
    /// The members of one team, in the order they were added (then user id); empty for
    /// an unknown team.
    async fn team_members(&self, team_id: Uuid) -> Result<Vec<TeamMember>>;
    /// The teams a user belongs to, with their role, ordered like `list_teams`. Read
    /// consistently: a membership just granted or removed is seen at once, since it
    /// decides what the user may use.
    async fn user_teams(&self, user_id: Uuid) -> Result<Vec<Membership>>;

    // --- instances ---
    /// Inserts the instance as given and adds its allocation (`Allocation::of`) to the
    /// counters of the subjects `admission` charges, in one transaction.
    /// `Error::Conflict("instance")` for a duplicate id; `Error::UnknownReference` if
    /// the owner, the model or the team does not exist; `Error::Invalid` if
    /// `settings.min_replicas > settings.max_replicas`; `Error::Refused` (nothing
    /// written) if a counter would pass its limit.
    ///
    /// Every method below that changes an instance's allocation (`set_desired`,
    /// `update_instance_settings`, `set_target_replicas`, `delete_instance`) adjusts
    /// the counters the same way in the same transaction; only growth is refused.
    async fn create_instance(&self, instance: &Instance, admission: &Admission) -> Result<()>;
    /// Any owner's instance: for the reconciler, the gateway's routing and admins.
    async fn instance(&self, id: Uuid) -> Result<Option<Instance>>;
    /// Owner-scoped lookup in one query: None both when there is no such instance
    /// and when it belongs to someone else (answer 404 either way; no IDOR).
    async fn instance_for_owner(&self, id: Uuid, owner_id: Uuid) -> Result<Option<Instance>>;
    /// `Some(owner)`: the instances that user deployed (for themselves or for a
    /// team); `None`: everyone's (admins, the reconciler). Newest first. Instances whose `desired` is `Deleted` are listed
    /// until the reconciler has removed them.
    async fn list_instances(&self, owner_id: Option<Uuid>) -> Result<Vec<Instance>>;
    /// The instances of one team, newest first (read like `list_instances`).
    async fn list_team_instances(&self, team_id: Uuid) -> Result<Vec<Instance>>;
    /// Compare-and-set of what the user asked for: only if `desired` is `from` is it
    /// set to `to` (with `updated_at`; asking for `Running` also counts as activity,
    /// `last_activity_at` moves forward to `now`, so a restarted instance is not
    /// idle-stopped at once). None if absent. Nothing ever leaves `Deleted`: `from`
    /// `Deleted` with another `to` is `Error::Invalid`. Growth (waking, starting) is
    /// admitted like `create_instance`. Records no event (callers may `append_event`).
    async fn set_desired(
        &self,
        id: Uuid,
        from: Desired,
        to: Desired,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<Option<DesiredChange>>;
    /// Replaces the tunable settings, brings `target_replicas` within the new bounds
    /// (`clamp_target`, admitted like `create_instance`) and bumps `updated_at`;
    /// returns the new row (None if absent). `Error::Invalid` if `min_replicas >
    /// max_replicas` (validate first).
    async fn update_instance_settings(
        &self,
        id: Uuid,
        settings: &InstanceSettings,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<Option<Instance>>;
    /// The reconciler's atomic compare-and-set of the observed state. Only if the
    /// stored `state` is `from` (else false and nothing is written), in one
    /// transaction:
    /// * `state = to`, `state_reason = reason` (None clears it), `updated_at = now`;
    /// * an event `(from, to, message)` at `now` is appended to the timeline;
    /// * cost time: entering `Ready`/`Scaling` sets `running_since = now` unless it is
    ///   already set; entering `Stopping`/`Stopped`/`Sleeping`/`Failed` adds the whole
    ///   seconds since `running_since` to `running_seconds` and clears it. Other
    ///   targets (e.g. `Ready → Starting` to replace replicas) leave both alone.
    ///
    /// The lifecycle rule (`from.can_move_to(to)`) is the caller's to check; the store
    /// only guarantees that concurrent transitions from one state cannot both win.
    /// False also when there is no such instance.
    async fn transition(
        &self,
        id: Uuid,
        from: State,
        to: State,
        reason: Option<&str>,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Sets `last_activity_at` to `now` unless it is already later (requests finishing
    /// out of order never move it back). Does not bump `updated_at`. Unknown id: no-op.
    async fn touch_activity(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;
    /// The autoscaler's decision; bumps `updated_at`. False if absent. Growth is
    /// admitted like `create_instance` (`Error::Refused` at the quota).
    async fn set_target_replicas(
        &self,
        id: Uuid,
        replicas: u32,
        admission: &Admission,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Deletes the instance with its replicas and events, releasing what it still
    /// holds; its usage rows stay (billing history). False if absent. The reconciler
    /// calls this once the compute is gone. `admission` names the host (its limits
    /// are not used: this only gives back).
    async fn delete_instance(&self, id: Uuid, admission: &Admission) -> Result<bool>;

    // --- quotas and admission counters ---
    /// What an admin set for a subject (None: nothing, every field is the default).
    async fn quota(&self, subject: &Subject) -> Result<Option<Quota>>;
    /// Replaces a subject's quota document (validate it first).
    async fn set_quota(&self, subject: &Subject, quota: &Quota, now: DateTime<Utc>) -> Result<()>;
    /// What a subject holds now (zero when it never held anything).
    async fn allocation(&self, subject: &Subject) -> Result<Allocation>;

    // --- instance events (the timeline) ---
    /// A note that is not a state change (`from_state`/`to_state` are None), e.g.
    /// "replica 2 restarted (exit code 137)". `Error::UnknownReference("instance")`
    /// if the instance does not exist.
    async fn append_event(
        &self,
        instance_id: Uuid,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// The latest `limit` events (clamped to 1..=500), returned oldest first, in the
    /// order they were recorded.
    async fn list_events(&self, instance_id: Uuid, limit: u32) -> Result<Vec<InstanceEvent>>;

    // --- replicas ---
    /// `Error::Conflict("replica")` for a duplicate id,
    /// `Error::UnknownReference("instance")` if the instance is gone.
    async fn create_replica(&self, replica: &Replica) -> Result<()>;
    /// Writes every field but `id` and `instance_id` (driver_ref, endpoint, state,
    /// restarts, started_at, updated_at) of the replica with that id. False if absent.
    async fn update_replica(&self, replica: &Replica) -> Result<bool>;
    async fn delete_replica(&self, id: Uuid) -> Result<bool>;
    /// One instance's replicas, oldest first.
    async fn list_replicas(&self, instance_id: Uuid) -> Result<Vec<Replica>>;
    /// Every replica of every instance (to adopt them after a restart), grouped by
    /// instance, oldest first within one.
    async fn all_replicas(&self) -> Result<Vec<Replica>>;

    // --- replica runs (history for cost and logs) ---
    /// Records a run as given (normally with `ended_at` None).
    /// `Error::Conflict("replica run")` for a duplicate run id; nothing else is
    /// checked (no foreign keys: the history must outlive instances and users).
    async fn start_run(&self, run: &ReplicaRun) -> Result<()>;
    /// Closes every open run (`ended_at` None) of that replica of that instance at
    /// `at` (an `at` before a run's `started_at` closes it at its start, so a run is
    /// never negative). Runs already closed keep their end: calling it again is a
    /// no-op, so a run is closed exactly once. Returns how many runs were closed.
    async fn end_run(&self, instance_id: Uuid, replica_id: Uuid, at: DateTime<Utc>) -> Result<u64>;
    /// Every run of one instance, oldest first (`started_at`, then `id`); also after
    /// the instance was deleted.
    async fn runs_for_instance(&self, instance_id: Uuid) -> Result<Vec<ReplicaRun>>;
    /// The runs of one owner or (None) everyone that overlap `[since, until)`: started
    /// before `until` and not ended by `since` (open runs overlap any later window).
    /// Either bound optional. Ordered by `started_at`, then `id`.
    async fn runs_overlapping(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<ReplicaRun>>;

    // --- usage ---
    /// Adds the sample's requests (at least one: zero is `Error::Invalid`) and tokens
    /// to the hourly row of (owner, instance, model, start of the hour of `at`),
    /// creating it if needed. One atomic upsert whatever the count, so the gateway
    /// writes a bucket of n requests in one call, and concurrent calls never lose a
    /// count. No foreign keys: usage outlives instances and users.
    async fn record_usage(&self, sample: &UsageSample) -> Result<()>;
    /// Hourly rows with `since <= hour < until` (either bound optional), of one
    /// owner or (None) everyone, ordered by hour, then instance, model and owner.
    /// Bounds compare with the start of each row's hour.
    async fn usage(
        &self,
        owner_id: Option<Uuid>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<UsageRow>>;

    // --- leases ---
    /// Takes or renews the lease `name` for `holder` until `expires_at`, with one
    /// conditional write: granted when nobody holds it, when its holder's lease has
    /// expired at `now`, or when `holder` already holds it. The fencing token goes up
    /// by one every time the holder changes and stays the same on renewal, so a writer
    /// carrying an older token is known to be stale. Returns the lease when `holder`
    /// holds it afterwards, `None` when another process does.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<Lease>>;
    /// Ends the lease at `now` (a graceful stop hands it over at once), only if
    /// `holder` still holds it with `token`. Returns whether it did.
    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        token: i64,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// The lease as stored (expired or not), for health and metrics.
    async fn lease(&self, name: &str) -> Result<Option<Lease>>;
}

/// A named lease in the store: the control-plane leader holds `"leader"`. Whoever
/// holds it until `expires_at` may act; `token` fences writes of earlier holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    /// The holding process's id (unique per process start).
    pub holder: String,
    /// Fencing token: one more than the previous holder's.
    pub token: i64,
    pub expires_at: DateTime<Utc>,
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn lease_goes_to_the_first_renews_and_passes_on_only_after_expiry() {
        let t0 = Utc::now();
        let later = |s| t0 + chrono::Duration::seconds(s);
        let a = Lease::next(None, "leader", "a", t0, later(10)).unwrap();
        assert_eq!((a.holder.as_str(), a.token), ("a", 1));
        assert_eq!(
            Lease::next(Some(&a), "leader", "b", later(9), later(19)),
            None
        );
        let renewed = Lease::next(Some(&a), "leader", "a", later(9), later(19)).unwrap();
        assert_eq!((renewed.token, renewed.expires_at), (1, later(19)));
        let b = Lease::next(Some(&a), "leader", "b", later(10), later(20)).unwrap();
        assert_eq!((b.holder.as_str(), b.token), ("b", 2));
        // The old holder coming back after a takeover is a new term too.
        let back = Lease::next(Some(&b), "leader", "a", later(20), later(30)).unwrap();
        assert_eq!(back.token, 3);
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite:///srv/c.db").unwrap(),
            Some(Path::new("/srv/c.db"))
        );
        assert_eq!(sqlite_path("sqlite:c.db").unwrap(), Some(Path::new("c.db")));
        assert_eq!(sqlite_path("c.db").unwrap(), Some(Path::new("c.db")));
        assert_eq!(sqlite_path("postgres://u@h/db").unwrap(), None);
        assert_eq!(sqlite_path("postgresql://u@h/db").unwrap(), None);
        assert!(sqlite_path("sqlite://").is_err());
        assert!(sqlite_path("mysql://h/db").is_err());
    }
}
