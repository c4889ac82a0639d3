//! The one conformance suite every `Store` backend must pass (see `tests/conformance.rs`).
//!
//! Each check is a public function, independent of the others: it makes its own users
//! (unique e-mails), actors, action prefixes and recipients, so the checks can share one
//! database with each other and with earlier runs. Times are whole microseconds, the
//! precision both backends keep.

use chrono::{DateTime, Duration, Utc};
use corral_core::catalog::builtin_models;
use corral_core::{
    Admission, ApiKey, AuditFilter, CatalogModel, ComputeSpec, ComputeType, Desired, Instance,
    InstanceSettings, Membership, ModelSource, NewAuditEntry, OutboxMessage, Outcome,
    RefreshSession, Replica, ReplicaState, Role, State, Team, TeamMember, TeamRole, TokenPurpose,
    UsageRow, UsageSample, User,
};
use uuid::Uuid;

use crate::{
    ActionToken, DesiredChange, Error, JobOutcome, JobStatus, Lease, LoginAttempt, OutboundJob,
    ReplicaRun, Store, UserPatch,
};

mod quota;
pub use quota::*;

/// Runs every check against `store`, naming each on stderr so a failure is easy to place.
pub async fn run_all(store: &dyn Store) {
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$(
            eprintln!("conformance [{}]: {}", store.backend(), stringify!($check));
            $check(store).await;
        )*};
    }
    run!(
        ping,
        user_round_trip,
        duplicate_email_conflicts,
        list_and_count_users,
        update_user_patch,
        delete_user_cascades,
        totp_step_reuse_refused,
        login_failures_lock_and_clear,
        login_attempts_concurrently_count,
        last_active_admin_is_kept,
        password_change_spends_reset_tokens,
        session_family_liveness,
        delete_user_api_keys,
        action_tokens_single_use,
        session_round_trip,
        rotate_session_is_conditional,
        rotate_session_concurrently_wins_once,
        revoke_session_family,
        revoke_user_sessions,
        api_keys_owner_scoped,
        touch_api_key,
        audit_filters,
        audit_paging_and_limit,
        outbox_filter,
        jobs_claimed_retried_and_finished,
        jobs_concurrent_claims_never_overlap,
        delete_user_with_instances_refused,
        models_round_trip_and_upsert,
        builtin_models_seed_idempotently,
        delete_model_in_use_refused,
        instance_round_trip,
        instance_references_checked,
        list_instances_owner_scoped,
        set_desired_and_activity,
        update_instance_settings,
        transition_is_compare_and_set,
        transition_meters_running_time,
        transition_concurrently_wins_once,
        touch_activity_only_forward,
        set_target_replicas,
        delete_instance_cascades,
        events_timeline,
        replicas_round_trip,
        usage_rolls_up_per_hour,
        usage_filters_and_order,
        usage_counts_several_requests,
        usage_concurrent_requests_all_count,
        runs_round_trip_and_outlive_instances,
        end_run_closes_once,
        end_run_concurrently_closes_once,
        runs_overlapping_window,
        teams_round_trip_and_unique_names,
        team_members_roles_and_cascades,
        team_instances_and_delete_refused,
        lease_two_contenders_one_wins,
        lease_renews_and_passes_on_after_expiry,
        lease_release_needs_the_current_token,
        quota_documents_round_trip,
        concurrent_creates_stop_at_max_instances,
        allocation_counters_exact_after_mixed_operations,
        refusals_change_nothing,
        set_desired_concurrently_wins_once,
    );
}

// --- fixtures ---

/// No limits: the checks that are not about quotas admit everything.
fn free() -> Admission {
    Admission::unlimited()
}

/// Now, truncated to what the databases store.
fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).expect("in range")
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", Uuid::now_v7().simple())
}

fn email() -> String {
    format!("{}@example.test", unique("user"))
}

async fn new_user(store: &dyn Store) -> User {
    let user = User::new(&email(), "$argon2id$fake".into(), Role::User, now());
    store.create_user(&user).await.expect("create user");
    user
}

fn session(user: &User, family_id: Uuid, at: DateTime<Utc>) -> RefreshSession {
    RefreshSession {
        id: Uuid::now_v7(),
        user_id: user.id,
        family_id,
        token_hash: unique("refresh"),
        created_at: at,
        expires_at: at + Duration::days(30),
        replaced_at: None,
        revoked_at: None,
        ip: Some("127.0.0.1".into()),
        user_agent: Some("conformance".into()),
    }
}

fn api_key(owner: &User, at: DateTime<Utc>) -> ApiKey {
    ApiKey {
        id: Uuid::now_v7(),
        owner_id: owner.id,
        name: unique("key"),
        prefix: "crl_AbCd".into(),
        key_hash: unique("keyhash"),
        created_at: at,
        expires_at: Some(at + Duration::days(90)),
        last_used_at: None,
    }
}

fn action_token(user: &User, purpose: TokenPurpose, expires_at: DateTime<Utc>) -> ActionToken {
    ActionToken {
        token_hash: unique("action"),
        user_id: user.id,
        purpose,
        created_at: now(),
        expires_at,
    }
}

// --- checks ---

pub async fn ping(store: &dyn Store) {
    store.ping().await.expect("ping");
    assert!(matches!(
        store.backend(),
        "sqlite" | "postgres" | "dynamodb"
    ));
}

pub async fn user_round_trip(store: &dyn Store) {
    let t = now();
    // Every optional field set, so each column is proven to round-trip.
    let user = User {
        display_name: "Ada Lovelace".into(),
        role: Role::Viewer,
        email_verified: true,
        disabled: true,
        totp_secret: Some("JBSWY3DPEHPK3PXP".into()),
        totp_enabled: true,
        totp_last_step: Some(58_000_000),
        updated_at: t + Duration::seconds(1),
        last_login_at: Some(t + Duration::seconds(2)),
        ..User::new(&email(), "$argon2id$v=19$x".into(), Role::Admin, t)
    };
    store.create_user(&user).await.unwrap();
    assert_eq!(store.user_by_id(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(store.user_by_email(&user.email).await.unwrap(), Some(user));

    let minimal = new_user(store).await;
    assert_eq!(store.user_by_id(minimal.id).await.unwrap(), Some(minimal));

    assert_eq!(store.user_by_id(Uuid::now_v7()).await.unwrap(), None);
    assert_eq!(store.user_by_email(&email()).await.unwrap(), None);
}

pub async fn duplicate_email_conflicts(store: &dyn Store) {
    let first = new_user(store).await;
    let again = User::new(&first.email, "$argon2id$other".into(), Role::Admin, now());
    let err = store.create_user(&again).await.unwrap_err();
    assert!(matches!(err, Error::Conflict("user")), "{err:?}");
    // The first account is untouched and the second was not created.
    assert_eq!(
        store.user_by_email(&first.email).await.unwrap(),
        Some(first)
    );
    assert_eq!(store.user_by_id(again.id).await.unwrap(), None);
}

pub async fn list_and_count_users(store: &dyn Store) {
    let base = now();
    let mut mine = Vec::new();
    for i in 0..3 {
        let user = User::new(
            &email(),
            "h".into(),
            Role::User,
            base + Duration::seconds(i),
        );
        store.create_user(&user).await.unwrap();
        mine.push(user);
    }

    // Page through everything two at a time; pages must not overlap or skip.
    let mut all = Vec::new();
    loop {
        let page = store.list_users(all.len() as u32, 2).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let ids: Vec<Uuid> = all.iter().map(|u| u.id).collect();
    let mut unique_ids = ids.clone();
    unique_ids.sort();
    unique_ids.dedup();
    assert_eq!(unique_ids.len(), ids.len(), "pages overlap");
    assert!(all.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    let positions: Vec<usize> = mine
        .iter()
        .map(|u| ids.iter().position(|id| *id == u.id).expect("listed"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "oldest first");
    assert_eq!(all[positions[0]], mine[0]);

    assert!(store.count_users().await.unwrap() >= all.len() as u64);
    // A zero limit is clamped up to one row rather than meaning "everything".
    assert_eq!(store.list_users(0, 0).await.unwrap().len(), 1);
}

pub async fn update_user_patch(store: &dyn Store) {
    let user = new_user(store).await;
    let t1 = user.created_at + Duration::seconds(10);

    // An empty patch changes nothing but `updated_at`.
    let same = store
        .update_user(user.id, &UserPatch::default(), t1)
        .await
        .unwrap()
        .expect("user exists");
    assert_eq!(
        same,
        User {
            updated_at: t1,
            ..user.clone()
        }
    );

    let t2 = t1 + Duration::seconds(10);
    let patch = UserPatch {
        display_name: Some("New Name".into()),
        password_hash: Some("$argon2id$new".into()),
        role: Some(Role::Admin),
        email_verified: Some(true),
        disabled: Some(true),
        totp_secret: Some(Some("SECRETSECRET".into())),
        totp_enabled: Some(true),
        last_login_at: Some(t2),
    };
    let changed = store
        .update_user(user.id, &patch, t2)
        .await
        .unwrap()
        .unwrap();
    let expected = User {
        display_name: "New Name".into(),
        password_hash: "$argon2id$new".into(),
        role: Role::Admin,
        email_verified: true,
        disabled: true,
        totp_secret: Some("SECRETSECRET".into()),
        totp_enabled: true,
        last_login_at: Some(t2),
        updated_at: t2,
        ..user.clone()
    };
    assert_eq!(changed, expected);
    assert_eq!(
        store.user_by_id(user.id).await.unwrap(),
        Some(expected.clone())
    );

    // `None` leaves the secret alone; `Some(None)` clears it.
    let t3 = t2 + Duration::seconds(10);
    let kept = UserPatch {
        disabled: Some(false),
        ..UserPatch::default()
    };
    let kept = store
        .update_user(user.id, &kept, t3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.totp_secret.as_deref(), Some("SECRETSECRET"));
    assert!(!kept.disabled);
    let cleared = UserPatch {
        totp_secret: Some(None),
        totp_enabled: Some(false),
        ..UserPatch::default()
    };
    let cleared = store
        .update_user(user.id, &cleared, t3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cleared.totp_secret, None);
    assert!(!cleared.totp_enabled);
    assert_eq!(cleared.display_name, "New Name");

    let missing = store.update_user(Uuid::now_v7(), &patch, t3).await.unwrap();
    assert_eq!(missing, None);
}

pub async fn delete_user_cascades(store: &dyn Store) {
    let t = now();
    let doomed = new_user(store).await;
    let other = new_user(store).await;
    let doomed_session = session(&doomed, Uuid::now_v7(), t);
    let other_session = session(&other, Uuid::now_v7(), t);
    let doomed_key = api_key(&doomed, t);
    let other_key = api_key(&other, t);
    let token = action_token(&doomed, TokenPurpose::ResetPassword, t + Duration::hours(1));
    for s in [&doomed_session, &other_session] {
        store.create_session(s).await.unwrap();
    }
    for k in [&doomed_key, &other_key] {
        store.create_api_key(k).await.unwrap();
    }
    store.create_action_token(&token).await.unwrap();

    assert!(store.delete_user(doomed.id).await.unwrap());
    assert_eq!(store.user_by_id(doomed.id).await.unwrap(), None);
    let hash = &doomed_session.token_hash;
    assert_eq!(store.session_by_hash(hash).await.unwrap(), None);
    assert_eq!(
        store.api_key_by_hash(&doomed_key.key_hash).await.unwrap(),
        None
    );
    assert_eq!(store.list_api_keys(doomed.id).await.unwrap(), vec![]);
    let purpose = TokenPurpose::ResetPassword;
    let used = store
        .consume_action_token(&token.token_hash, purpose, t)
        .await;
    assert_eq!(used.unwrap(), None);

    // Nothing of the other user's went with it.
    let other_hash = &other_session.token_hash;
    assert_eq!(
        store.session_by_hash(other_hash).await.unwrap(),
        Some(other_session)
    );
    assert_eq!(
        store.list_api_keys(other.id).await.unwrap(),
        vec![other_key]
    );

    assert!(!store.delete_user(doomed.id).await.unwrap(), "already gone");
}

pub async fn totp_step_reuse_refused(store: &dyn Store) {
    let user = new_user(store).await;
    assert!(store.consume_totp_step(user.id, 100).await.unwrap());
    assert!(
        !store.consume_totp_step(user.id, 100).await.unwrap(),
        "same step twice"
    );
    assert!(
        !store.consume_totp_step(user.id, 99).await.unwrap(),
        "older step"
    );
    assert!(store.consume_totp_step(user.id, 101).await.unwrap());
    let stored = store.user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(stored.totp_last_step, Some(101));
    assert!(
        !store.consume_totp_step(Uuid::now_v7(), 1).await.unwrap(),
        "no such user"
    );
}

pub async fn login_failures_lock_and_clear(store: &dyn Store) {
    // No account has this address: lockout must not depend on one existing.
    let addr = email();
    let other = email();
    let lock_for = Duration::minutes(15);
    let t = now();
    assert_eq!(store.login_failures(&addr).await.unwrap(), None);

    let open = LoginAttempt::Allowed { locked_until: None };
    for n in 1..=4 {
        let attempt = store
            .count_login_attempt(&addr, 5, lock_for, t)
            .await
            .unwrap();
        assert_eq!(attempt, open);
        let state = store.login_failures(&addr).await.unwrap().unwrap();
        assert_eq!((state.email.as_str(), state.count), (addr.as_str(), n));
        assert_eq!(state.locked_until, None);
    }
    store
        .count_login_attempt(&other, 5, lock_for, t)
        .await
        .unwrap();

    // The fifth attempt is allowed, and locks.
    let t5 = t + Duration::seconds(5);
    let last = store
        .count_login_attempt(&addr, 5, lock_for, t5)
        .await
        .unwrap();
    assert_eq!(
        last,
        LoginAttempt::Allowed {
            locked_until: Some(t5 + lock_for)
        }
    );
    let locked = store.login_failures(&addr).await.unwrap().unwrap();
    assert_eq!(locked.count, 0, "count restarts once locked");
    assert_eq!(locked.locked_until, Some(t5 + lock_for));

    // While locked nothing is counted: every attempt is refused.
    let t6 = t5 + Duration::seconds(1);
    for _ in 0..3 {
        let refused = store
            .count_login_attempt(&addr, 5, lock_for, t6)
            .await
            .unwrap();
        assert_eq!(
            refused,
            LoginAttempt::Locked {
                until: t5 + lock_for
            }
        );
    }
    assert_eq!(store.login_failures(&addr).await.unwrap(), Some(locked));

    // After the lock, counting starts again; the old lock stays until the next one.
    let after = t5 + lock_for + Duration::seconds(1);
    let next = store
        .count_login_attempt(&addr, 5, lock_for, after)
        .await
        .unwrap();
    assert_eq!(next, open);
    let state = store.login_failures(&addr).await.unwrap().unwrap();
    assert_eq!((state.count, state.locked_until), (1, Some(t5 + lock_for)));

    let others = store.login_failures(&other).await.unwrap().unwrap();
    assert_eq!((others.count, others.locked_until), (1, None));

    store.clear_login_failures(&addr).await.unwrap();
    assert_eq!(store.login_failures(&addr).await.unwrap(), None);
    store.clear_login_failures(&addr).await.unwrap(); // clearing nothing is fine
    assert!(store.login_failures(&other).await.unwrap().is_some());

    // A threshold of one locks on the first attempt.
    let single = email();
    let attempt = store
        .count_login_attempt(&single, 1, lock_for, t)
        .await
        .unwrap();
    assert_eq!(
        attempt,
        LoginAttempt::Allowed {
            locked_until: Some(t + lock_for)
        }
    );
}

/// Twenty attempts at once get exactly five through (the threshold), whatever the
/// interleaving: the count is taken before the secret is checked.
pub async fn login_attempts_concurrently_count(store: &dyn Store) {
    let addr = email();
    let lock_for = Duration::minutes(15);
    let t = now();
    let attempts = (0..20).map(|_| store.count_login_attempt(&addr, 5, lock_for, t));
    let outcomes = futures_util::future::join_all(attempts).await;
    let allowed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(LoginAttempt::Allowed { .. })))
        .count();
    let locked = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(LoginAttempt::Locked { .. })))
        .count();
    assert_eq!((allowed, locked), (5, 15), "{outcomes:?}");
}

/// The last active admin cannot be demoted, disabled or deleted, and two admins
/// removing each other at once cannot both win.
pub async fn last_active_admin_is_kept(store: &dyn Store) {
    let t = now();
    let admin = |user: &User| {
        let patch = UserPatch {
            role: Some(Role::Admin),
            disabled: Some(false),
            ..UserPatch::default()
        };
        (user.id, patch)
    };
    let (a, b) = (new_user(store).await, new_user(store).await);
    for user in [&a, &b] {
        let (id, patch) = admin(user);
        store.update_user(id, &patch, t).await.unwrap().unwrap();
    }
    // Every other active admin (from other checks sharing the database) steps down, so
    // that `a` and `b` are the last two.
    let demote = UserPatch {
        role: Some(Role::User),
        ..UserPatch::default()
    };
    for other in store.list_users(0, 500).await.unwrap() {
        if other.role.is_admin() && !other.disabled && other.id != a.id && other.id != b.id {
            store.update_user(other.id, &demote, t).await.unwrap();
        }
    }

    // Each demotes the other at once: one wins, the other is refused.
    let (first, second) = tokio::join!(
        store.update_user(a.id, &demote, t),
        store.update_user(b.id, &demote, t)
    );
    let wins = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Ok(Some(_))))
        .count();
    let refused = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(Error::LastAdmin)))
        .count();
    assert_eq!((wins, refused), (1, 1), "{first:?} / {second:?}");
    let last = if first.is_ok() { &b } else { &a };

    // The last one: not demoted, disabled or deleted; nothing written.
    let disable = UserPatch {
        disabled: Some(true),
        ..UserPatch::default()
    };
    for patch in [&demote, &disable] {
        match store
            .update_user(last.id, patch, t + Duration::seconds(1))
            .await
        {
            Err(Error::LastAdmin) => {}
            other => panic!("last admin changed: {other:?}"),
        }
    }
    assert!(matches!(
        store.delete_user(last.id).await,
        Err(Error::LastAdmin)
    ));
    let kept = store.user_by_id(last.id).await.unwrap().unwrap();
    assert!(kept.role.is_admin() && !kept.disabled);
    assert_eq!(kept.updated_at, t, "a refused change writes nothing");
    // Other changes to the last admin go through.
    let renamed = UserPatch {
        display_name: Some("Still Admin".into()),
        ..UserPatch::default()
    };
    assert!(
        store
            .update_user(last.id, &renamed, t)
            .await
            .unwrap()
            .is_some()
    );

    // With a second admin again, the first can go.
    let (c, patch) = admin(&new_user(store).await);
    store.update_user(c, &patch, t).await.unwrap().unwrap();
    assert!(
        store
            .update_user(last.id, &disable, t)
            .await
            .unwrap()
            .is_some()
    );
    assert!(matches!(store.delete_user(c).await, Err(Error::LastAdmin)));
    // Removing a user who is no active admin is never refused.
    assert!(store.delete_user(last.id).await.unwrap());
}

/// A password change spends the user's unused reset tokens (not verification ones).
pub async fn password_change_spends_reset_tokens(store: &dyn Store) {
    let user = new_user(store).await;
    let other = new_user(store).await;
    let t = now();
    let later = t + Duration::hours(1);
    let reset = action_token(&user, TokenPurpose::ResetPassword, later);
    let verify = action_token(&user, TokenPurpose::VerifyEmail, later);
    let others = action_token(&other, TokenPurpose::ResetPassword, later);
    for token in [&reset, &verify, &others] {
        store.create_action_token(token).await.unwrap();
    }
    let rename = UserPatch {
        display_name: Some("Renamed".into()),
        ..UserPatch::default()
    };
    store.update_user(user.id, &rename, t).await.unwrap();
    let password = UserPatch {
        password_hash: Some("$argon2id$changed".into()),
        ..UserPatch::default()
    };
    store.update_user(user.id, &password, t).await.unwrap();
    let purpose = TokenPurpose::ResetPassword;
    assert_eq!(
        store
            .consume_action_token(&reset.token_hash, purpose, t)
            .await
            .unwrap(),
        None,
        "spent by the password change"
    );
    assert_eq!(
        store
            .consume_action_token(&verify.token_hash, TokenPurpose::VerifyEmail, t)
            .await
            .unwrap(),
        Some(user.id)
    );
    assert_eq!(
        store
            .consume_action_token(&others.token_hash, purpose, t)
            .await
            .unwrap(),
        Some(other.id)
    );
    // A token issued after the change works.
    let fresh = action_token(&user, purpose, later);
    store.create_action_token(&fresh).await.unwrap();
    assert_eq!(
        store
            .consume_action_token(&fresh.token_hash, purpose, t)
            .await
            .unwrap(),
        Some(user.id)
    );
}

pub async fn action_tokens_single_use(store: &dyn Store) {
    let user = new_user(store).await;
    let t = now();
    let verify = TokenPurpose::VerifyEmail;
    let reset = TokenPurpose::ResetPassword;

    let token = action_token(&user, verify, t + Duration::hours(1));
    store.create_action_token(&token).await.unwrap();
    let hash = token.token_hash.as_str();
    assert_eq!(
        store.consume_action_token(hash, reset, t).await.unwrap(),
        None,
        "wrong purpose"
    );
    assert_eq!(
        store.consume_action_token(hash, verify, t).await.unwrap(),
        Some(user.id)
    );
    assert_eq!(
        store.consume_action_token(hash, verify, t).await.unwrap(),
        None,
        "used"
    );

    // Expiry is exclusive: at `expires_at` the token is already dead.
    let expiring = action_token(&user, reset, t + Duration::minutes(30));
    store.create_action_token(&expiring).await.unwrap();
    let hash = expiring.token_hash.as_str();
    let at_expiry = expiring.expires_at;
    assert_eq!(
        store
            .consume_action_token(hash, reset, at_expiry)
            .await
            .unwrap(),
        None
    );
    let before = at_expiry - Duration::microseconds(1);
    assert_eq!(
        store
            .consume_action_token(hash, reset, before)
            .await
            .unwrap(),
        Some(user.id)
    );

    let unknown = unique("nope");
    assert_eq!(
        store
            .consume_action_token(&unknown, reset, t)
            .await
            .unwrap(),
        None
    );

    let err = store.create_action_token(&token).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
}

pub async fn session_round_trip(store: &dyn Store) {
    let user = new_user(store).await;
    let s = RefreshSession {
        ip: None,
        user_agent: None,
        ..session(&user, Uuid::now_v7(), now())
    };
    store.create_session(&s).await.unwrap();
    assert_eq!(
        store.session_by_hash(&s.token_hash).await.unwrap(),
        Some(s.clone())
    );
    let full = session(&user, Uuid::now_v7(), now());
    store.create_session(&full).await.unwrap();
    assert_eq!(
        store.session_by_hash(&full.token_hash).await.unwrap(),
        Some(full)
    );
    assert_eq!(store.session_by_hash(&unique("nope")).await.unwrap(), None);

    let dup = RefreshSession {
        id: Uuid::now_v7(),
        ..s
    };
    let err = store.create_session(&dup).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
}

pub async fn rotate_session_is_conditional(store: &dyn Store) {
    let user = new_user(store).await;
    let family = Uuid::now_v7();
    let t = now();
    let first = session(&user, family, t);
    store.create_session(&first).await.unwrap();

    let t1 = t + Duration::seconds(1);
    let second = session(&user, family, t1);
    assert!(store.rotate_session(first.id, &second, t1).await.unwrap());
    let old = store
        .session_by_hash(&first.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((old.replaced_at, old.revoked_at), (Some(t1), None));
    assert_eq!(
        store.session_by_hash(&second.token_hash).await.unwrap(),
        Some(second.clone())
    );

    // The old link is spent: a second rotation of it fails and inserts nothing.
    let t2 = t1 + Duration::seconds(1);
    let stale = session(&user, family, t2);
    assert!(!store.rotate_session(first.id, &stale, t2).await.unwrap());
    assert_eq!(
        store.session_by_hash(&stale.token_hash).await.unwrap(),
        None
    );
    let old_again = store
        .session_by_hash(&first.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old_again.replaced_at, Some(t1), "first replacement kept");

    // Revoked links cannot rotate either, nor can ids that do not exist.
    store.revoke_user_sessions(user.id, t2).await.unwrap();
    let after_revoke = session(&user, family, t2);
    assert!(
        !store
            .rotate_session(second.id, &after_revoke, t2)
            .await
            .unwrap()
    );
    assert!(
        !store
            .rotate_session(Uuid::now_v7(), &after_revoke, t2)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .session_by_hash(&after_revoke.token_hash)
            .await
            .unwrap(),
        None
    );
}

pub async fn rotate_session_concurrently_wins_once(store: &dyn Store) {
    let user = new_user(store).await;
    let family = Uuid::now_v7();
    let t = now();
    let first = session(&user, family, t);
    store.create_session(&first).await.unwrap();

    // Four requests race to rotate the same token; exactly one may succeed.
    let next: Vec<RefreshSession> = (0..4).map(|_| session(&user, family, t)).collect();
    let (a, b, c, d) = tokio::join!(
        store.rotate_session(first.id, &next[0], t),
        store.rotate_session(first.id, &next[1], t),
        store.rotate_session(first.id, &next[2], t),
        store.rotate_session(first.id, &next[3], t),
    );
    let won: Vec<bool> = [a, b, c, d].into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    for (s, won) in next.iter().zip(won) {
        let stored = store.session_by_hash(&s.token_hash).await.unwrap();
        assert_eq!(stored.is_some(), won, "only the winner's session exists");
    }
}

pub async fn revoke_session_family(store: &dyn Store) {
    let user = new_user(store).await;
    let (family, other_family) = (Uuid::now_v7(), Uuid::now_v7());
    let t = now();
    let first = session(&user, family, t);
    let second = session(&user, family, t);
    let bystander = session(&user, other_family, t);
    store.create_session(&first).await.unwrap();
    store.create_session(&bystander).await.unwrap();
    assert!(store.rotate_session(first.id, &second, t).await.unwrap());

    // Only the live link (`second`) needed revoking; `first` was already replaced.
    let t1 = t + Duration::seconds(1);
    assert_eq!(store.revoke_session_family(family, t1).await.unwrap(), 1);
    let revoked = store
        .session_by_hash(&second.token_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(t1));
    let by_hash = store.session_by_hash(&bystander.token_hash).await.unwrap();
    assert_eq!(by_hash, Some(bystander), "another family is untouched");

    assert_eq!(store.revoke_session_family(family, t1).await.unwrap(), 0);
    let after = session(&user, family, t1);
    assert!(!store.rotate_session(second.id, &after, t1).await.unwrap());
}

pub async fn revoke_user_sessions(store: &dyn Store) {
    let user = new_user(store).await;
    let other = new_user(store).await;
    let t = now();
    let mine = [
        session(&user, Uuid::now_v7(), t),
        session(&user, Uuid::now_v7(), t),
    ];
    let theirs = session(&other, Uuid::now_v7(), t);
    for s in mine.iter().chain([&theirs]) {
        store.create_session(s).await.unwrap();
    }

    let t1 = t + Duration::seconds(1);
    assert_eq!(store.revoke_user_sessions(user.id, t1).await.unwrap(), 2);
    for s in &mine {
        let stored = store.session_by_hash(&s.token_hash).await.unwrap().unwrap();
        assert_eq!(stored.revoked_at, Some(t1));
    }
    assert_eq!(
        store.session_by_hash(&theirs.token_hash).await.unwrap(),
        Some(theirs)
    );
    assert_eq!(store.revoke_user_sessions(user.id, t1).await.unwrap(), 0);
}

pub async fn api_keys_owner_scoped(store: &dyn Store) {
    let alice = new_user(store).await;
    let bob = new_user(store).await;
    let t = now();
    let older = ApiKey {
        expires_at: None,
        ..api_key(&alice, t)
    };
    let newer = api_key(&alice, t + Duration::seconds(1));
    let bobs = api_key(&bob, t);
    for k in [&older, &newer, &bobs] {
        store.create_api_key(k).await.unwrap();
    }

    let listed = store.list_api_keys(alice.id).await.unwrap();
    assert_eq!(listed, vec![newer.clone(), older.clone()], "newest first");
    assert_eq!(
        store.list_api_keys(bob.id).await.unwrap(),
        vec![bobs.clone()]
    );
    assert_eq!(
        store.api_key_by_hash(&older.key_hash).await.unwrap(),
        Some(older.clone())
    );
    assert_eq!(store.api_key_by_hash(&unique("nope")).await.unwrap(), None);

    // Bob cannot delete Alice's key by id, and learns nothing but "false".
    assert!(!store.delete_api_key(bob.id, older.id).await.unwrap());
    assert_eq!(
        store.api_key_by_hash(&older.key_hash).await.unwrap(),
        Some(older.clone())
    );

    assert!(store.delete_api_key(alice.id, older.id).await.unwrap());
    assert!(
        !store.delete_api_key(alice.id, older.id).await.unwrap(),
        "already gone"
    );
    assert_eq!(
        store.list_api_keys(alice.id).await.unwrap(),
        vec![newer.clone()]
    );

    let dup = ApiKey {
        id: Uuid::now_v7(),
        ..newer
    };
    let err = store.create_api_key(&dup).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
}

pub async fn touch_api_key(store: &dyn Store) {
    let owner = new_user(store).await;
    let t = now();
    let key = api_key(&owner, t);
    store.create_api_key(&key).await.unwrap();

    let used = t + Duration::minutes(5);
    store.touch_api_key(key.id, used).await.unwrap();
    let stored = store.api_key_by_hash(&key.key_hash).await.unwrap().unwrap();
    assert_eq!(
        stored,
        ApiKey {
            last_used_at: Some(used),
            ..key.clone()
        }
    );

    // A request that finishes late with an older time does not move it back.
    store
        .touch_api_key(key.id, t + Duration::minutes(1))
        .await
        .unwrap();
    let stored = store.api_key_by_hash(&key.key_hash).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(used));

    store.touch_api_key(Uuid::now_v7(), used).await.unwrap(); // unknown id: no error
}

pub async fn session_family_liveness(store: &dyn Store) {
    let user = new_user(store).await;
    let t = now();
    let family = Uuid::now_v7();
    assert!(!store.session_family_live(family).await.unwrap(), "unknown");
    let first = session(&user, family, t);
    store.create_session(&first).await.unwrap();
    assert!(store.session_family_live(family).await.unwrap());
    // Rotation keeps the login alive; logging out (revoking the family) ends it.
    let second = session(&user, family, t);
    assert!(store.rotate_session(first.id, &second, t).await.unwrap());
    assert!(store.session_family_live(family).await.unwrap());
    let other = Uuid::now_v7();
    store
        .create_session(&session(&user, other, t))
        .await
        .unwrap();
    assert_eq!(store.revoke_session_family(family, t).await.unwrap(), 1);
    assert!(!store.session_family_live(family).await.unwrap());
    assert!(
        store.session_family_live(other).await.unwrap(),
        "other login"
    );
    store.revoke_user_sessions(user.id, t).await.unwrap();
    assert!(!store.session_family_live(other).await.unwrap());
}

pub async fn delete_user_api_keys(store: &dyn Store) {
    let t = now();
    let (owner, other) = (new_user(store).await, new_user(store).await);
    let keys = [api_key(&owner, t), api_key(&owner, t), api_key(&other, t)];
    for key in &keys {
        store.create_api_key(key).await.unwrap();
    }
    assert_eq!(store.delete_user_api_keys(owner.id).await.unwrap(), 2);
    assert_eq!(store.list_api_keys(owner.id).await.unwrap(), vec![]);
    for key in &keys[..2] {
        assert_eq!(store.api_key_by_hash(&key.key_hash).await.unwrap(), None);
    }
    assert_eq!(
        store.list_api_keys(other.id).await.unwrap(),
        vec![keys[2].clone()]
    );
    assert_eq!(store.delete_user_api_keys(owner.id).await.unwrap(), 0);
}

pub async fn jobs_claimed_retried_and_finished(store: &dyn Store) {
    let kind = unique("kind");
    let t = now();
    let lease = Duration::seconds(60);
    let first = OutboundJob::new(&kind, r#"{"n":1}"#.into(), t);
    let second = OutboundJob::new(&kind, r#"{"n":2}"#.into(), t);
    let later = OutboundJob {
        next_attempt_at: t + Duration::seconds(30),
        ..OutboundJob::new(&kind, r#"{"n":3}"#.into(), t)
    };
    let other_kind = OutboundJob::new(&unique("kind"), "{}".into(), t);
    for job in [&first, &second, &later, &other_kind] {
        store.enqueue_job(job).await.unwrap();
    }
    assert!(matches!(
        store.enqueue_job(&first).await,
        Err(Error::Conflict(_))
    ));

    // The two due jobs of this kind, oldest first, claimed with a lease.
    let claimed = store.claim_jobs(&kind, t, lease, 10).await.unwrap();
    let ids: Vec<Uuid> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![first.id, second.id]);
    for job in &claimed {
        assert_eq!(job.status, JobStatus::Claimed);
        assert_eq!((job.attempts, job.lease_until), (1, Some(t + lease)));
        assert!(job.claim_id.is_some());
    }
    assert_eq!(claimed[0].payload, first.payload);
    assert_eq!(
        store.claim_jobs(&kind, t, lease, 10).await.unwrap(),
        vec![],
        "held"
    );

    // Finished only by the claim that holds it.
    let claim = claimed[0].claim_id.unwrap();
    let sent = JobOutcome::Sent;
    assert!(
        !store
            .finish_job(first.id, Uuid::now_v7(), &sent, t)
            .await
            .unwrap()
    );
    assert!(store.finish_job(first.id, claim, &sent, t).await.unwrap());
    assert!(
        !store.finish_job(first.id, claim, &sent, t).await.unwrap(),
        "once"
    );

    // A retry waits for its time, then counts another attempt.
    let retry = JobOutcome::Retry {
        at: t + Duration::seconds(10),
        error: "smtp: connection refused".into(),
    };
    let second_claim = claimed[1].claim_id.unwrap();
    assert!(
        store
            .finish_job(second.id, second_claim, &retry, t)
            .await
            .unwrap()
    );
    let at_5 = t + Duration::seconds(5);
    assert_eq!(
        store.claim_jobs(&kind, at_5, lease, 10).await.unwrap(),
        vec![]
    );
    let at_10 = t + Duration::seconds(10);
    let again = store.claim_jobs(&kind, at_10, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (second.id, 2));
    assert_eq!(
        again[0].last_error.as_deref(),
        Some("smtp: connection refused")
    );

    // A claim whose lease ended (its worker died) is taken over; the old claim is void.
    let at_70 = at_10 + lease;
    let taken = store.claim_jobs(&kind, at_70, lease, 10).await.unwrap();
    let taken_ids: Vec<Uuid> = taken.iter().map(|j| j.id).collect();
    assert_eq!(taken_ids, vec![second.id, later.id]);
    assert_eq!(taken[0].attempts, 3);
    let old_claim = again[0].claim_id.unwrap();
    assert!(
        !store
            .finish_job(second.id, old_claim, &sent, at_70)
            .await
            .unwrap()
    );
    let failed = JobOutcome::Failed {
        error: "gave up".into(),
    };
    let new_claim = taken[0].claim_id.unwrap();
    assert!(
        store
            .finish_job(second.id, new_claim, &failed, at_70)
            .await
            .unwrap()
    );
    let dropped = JobOutcome::Dropped;
    let later_claim = taken[1].claim_id.unwrap();
    assert!(
        store
            .finish_job(later.id, later_claim, &dropped, at_70)
            .await
            .unwrap()
    );
    // Finished jobs are never claimed again.
    let far = t + Duration::days(1);
    assert_eq!(
        store.claim_jobs(&kind, far, lease, 10).await.unwrap(),
        vec![]
    );

    let listed = store.list_jobs(&kind, 10).await.unwrap();
    let statuses: Vec<(Uuid, JobStatus)> = listed.iter().map(|j| (j.id, j.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (later.id, JobStatus::Dropped),
            (second.id, JobStatus::Failed),
            (first.id, JobStatus::Sent),
        ],
        "newest first"
    );
    assert_eq!(listed[1].last_error.as_deref(), Some("gave up"));
    assert_eq!(listed[1].lease_until, None);
    assert_eq!(store.list_jobs(&kind, 1).await.unwrap().len(), 1);
}

/// Claimers racing for the same jobs never get one twice.
pub async fn jobs_concurrent_claims_never_overlap(store: &dyn Store) {
    let kind = unique("kind");
    let t = now();
    let lease = Duration::seconds(60);
    let mut all = Vec::new();
    for n in 0..20 {
        let job = OutboundJob::new(&kind, format!(r#"{{"n":{n}}}"#), t);
        store.enqueue_job(&job).await.unwrap();
        all.push(job.id);
    }
    let (a, b, c, d) = tokio::join!(
        store.claim_jobs(&kind, t, lease, 5),
        store.claim_jobs(&kind, t, lease, 5),
        store.claim_jobs(&kind, t, lease, 5),
        store.claim_jobs(&kind, t, lease, 5),
    );
    let mut claimed: Vec<Uuid> = [a, b, c, d]
        .into_iter()
        .flat_map(|r| r.unwrap())
        .map(|j| j.id)
        .collect();
    // Whatever the race left is claimed afterwards.
    claimed.extend(
        store
            .claim_jobs(&kind, t, lease, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id),
    );
    claimed.sort();
    all.sort();
    assert_eq!(claimed, all, "every job claimed exactly once");
}

fn audit(
    prefix: &str,
    action: &str,
    actor: Option<Uuid>,
    outcome: Outcome,
    at: DateTime<Utc>,
) -> NewAuditEntry {
    NewAuditEntry {
        actor_id: actor,
        actor_email: Some(email()),
        action: format!("{prefix}{action}"),
        target: Some(Uuid::now_v7().to_string()),
        ip: Some("192.0.2.1".into()),
        outcome,
        detail: Some("401".into()),
        at,
    }
}

pub async fn audit_filters(store: &dyn Store) {
    // A unique prefix scopes every query to this check's rows.
    let p = format!("{}.", unique("t"));
    let actor = Uuid::now_v7();
    let t = now();
    let entries = [
        audit(&p, "auth.login", Some(actor), Outcome::Success, t),
        audit(
            &p,
            "auth.login",
            Some(actor),
            Outcome::Failure,
            t + Duration::seconds(1),
        ),
        audit(
            &p,
            "keys.create",
            Some(actor),
            Outcome::Success,
            t + Duration::seconds(2),
        ),
        NewAuditEntry {
            actor_id: None,
            target: None,
            ip: None,
            detail: None,
            ..audit(
                &p,
                "auth.login",
                None,
                Outcome::Failure,
                t + Duration::seconds(3),
            )
        },
    ];
    for e in &entries {
        store.append_audit(e).await.unwrap();
    }
    let list = |filter: AuditFilter| async move { store.list_audit(&filter).await.unwrap() };
    let by_prefix = |action: &str| AuditFilter {
        action: Some(format!("{p}{action}")),
        ..AuditFilter::default()
    };

    // Everything comes back intact, newest first.
    let all = list(by_prefix("")).await;
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    for (got, want) in all.iter().zip(entries.iter().rev()) {
        let got = NewAuditEntry {
            actor_id: got.actor_id,
            actor_email: got.actor_email.clone(),
            action: got.action.clone(),
            target: got.target.clone(),
            ip: got.ip.clone(),
            outcome: got.outcome,
            detail: got.detail.clone(),
            at: got.at,
        };
        assert_eq!(&got, want);
    }

    assert_eq!(list(by_prefix("auth.")).await.len(), 3);
    assert_eq!(list(by_prefix("keys.create")).await.len(), 1);
    // The prefix is literal and case-sensitive: no wildcards, no case folding.
    assert_eq!(list(by_prefix("auth_")).await.len(), 0);
    assert_eq!(list(by_prefix("%")).await.len(), 0);
    assert_eq!(list(by_prefix("*")).await.len(), 0);
    assert_eq!(list(by_prefix("AUTH.")).await.len(), 0);

    let by_actor = AuditFilter {
        actor_id: Some(actor),
        ..AuditFilter::default()
    };
    assert_eq!(list(by_actor.clone()).await.len(), 3);
    let successes = AuditFilter {
        outcome: Some(Outcome::Success),
        ..by_actor
    };
    let got = list(successes).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| e.outcome == Outcome::Success));
    let failures = AuditFilter {
        outcome: Some(Outcome::Failure),
        ..by_prefix("auth.")
    };
    assert_eq!(list(failures).await.len(), 2);

    // `since` is inclusive.
    let recent = AuditFilter {
        since: Some(t + Duration::seconds(2)),
        ..by_prefix("")
    };
    let got = list(recent).await;
    assert_eq!(
        got.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![entries[3].at, entries[2].at]
    );
}

pub async fn audit_paging_and_limit(store: &dyn Store) {
    let p = format!("{}.", unique("t"));
    let t = now();
    let entries: Vec<NewAuditEntry> = (0..5)
        .map(|i| audit(&p, "page", None, Outcome::Success, t + Duration::seconds(i)))
        .collect();
    for e in &entries {
        store.append_audit(e).await.unwrap();
    }
    let page = |before_id: Option<i64>| {
        let filter = AuditFilter {
            action: Some(p.clone()),
            before_id,
            limit: Some(2),
            ..AuditFilter::default()
        };
        async move { store.list_audit(&filter).await.unwrap() }
    };

    // Walk back two at a time with `before_id`: 2 + 2 + 1, newest first, no repeats.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let got = page(before).await;
        if got.is_empty() {
            break;
        }
        before = got.last().map(|e| e.id);
        seen.extend(got);
    }
    let times: Vec<_> = seen.iter().map(|e| e.at).collect();
    let expected: Vec<_> = entries.iter().rev().map(|e| e.at).collect();
    assert_eq!(times, expected);

    // Limits are clamped to 1..=500.
    let zero = AuditFilter {
        action: Some(p.clone()),
        limit: Some(0),
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&zero).await.unwrap().len(), 1);
    let p_big = format!("{}.", unique("t"));
    for i in 0..501 {
        let e = audit(
            &p_big,
            "bulk",
            None,
            Outcome::Success,
            t + Duration::milliseconds(i),
        );
        store.append_audit(&e).await.unwrap();
    }
    let huge = AuditFilter {
        action: Some(p_big.clone()),
        limit: Some(10_000),
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&huge).await.unwrap().len(), 500);
    let default = AuditFilter {
        action: Some(p_big),
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&default).await.unwrap().len(), 100);
}

pub async fn outbox_filter(store: &dyn Store) {
    let (alice, bob) = (email(), email());
    let t = now();
    let message = |to: &str, secs: i64| OutboxMessage {
        id: Uuid::now_v7(),
        to: to.to_string(),
        subject: unique("subject"),
        body: "Your code is 123456.\nLine two.".into(),
        created_at: t + Duration::seconds(secs),
    };
    let (a1, b1, a2) = (message(&alice, 0), message(&bob, 1), message(&alice, 2));
    for m in [&a1, &b1, &a2] {
        store.push_outbox(m).await.unwrap();
    }

    assert_eq!(
        store.list_outbox(Some(&alice), 10).await.unwrap(),
        vec![a2.clone(), a1.clone()]
    );
    assert_eq!(
        store.list_outbox(Some(&bob), 10).await.unwrap(),
        vec![b1.clone()]
    );
    assert_eq!(
        store.list_outbox(Some(&alice), 1).await.unwrap(),
        vec![a2.clone()]
    );
    assert_eq!(store.list_outbox(Some(&email()), 10).await.unwrap(), vec![]);

    // Unfiltered: all three, newest first relative to each other.
    let all = store.list_outbox(None, 500).await.unwrap();
    let pos = |m: &OutboxMessage| all.iter().position(|x| x == m).expect("listed");
    assert!(pos(&a2) < pos(&b1) && pos(&b1) < pos(&a1));
    assert_eq!(store.list_outbox(None, 1).await.unwrap().len(), 1);
}

// --- deployments: fixtures ---

/// A catalog entry with a unique id, so checks never touch each other's models.
fn catalog_model(source: ModelSource) -> CatalogModel {
    CatalogModel {
        id: unique("model"),
        family: "Test".into(),
        size: "1B".into(),
        cpu_supported: true,
        gpu_supported: false,
        memory_required: 2048,
        expected_deploy_seconds: 30,
        source,
        weights_bytes: Some(98_000_000),
        builtin: false,
    }
}

async fn new_model(store: &dyn Store) -> CatalogModel {
    let model = catalog_model(ModelSource::File {
        path: "models/test.gguf".into(),
    });
    store.upsert_model(&model).await.expect("upsert model");
    model
}

fn local_spec() -> ComputeSpec {
    ComputeSpec {
        compute_type: ComputeType::Local,
        cpu: 2.0,
        memory: 4096,
        gpu_count: 0,
        instance_type: None,
        spot: false,
    }
}

fn instance(owner: &User, model: &CatalogModel, at: DateTime<Utc>) -> Instance {
    Instance {
        id: Uuid::now_v7(),
        owner_id: owner.id,
        model_id: model.id.clone(),
        driver: "local".into(),
        compute: local_spec(),
        settings: InstanceSettings::default(),
        desired: Desired::Running,
        state: State::Pending,
        state_reason: None,
        target_replicas: 1,
        created_at: at,
        updated_at: at,
        last_activity_at: at,
        running_since: None,
        running_seconds: 0,
        team_id: None,
    }
}

/// A new user owning one new pending instance of a new model.
async fn new_instance(store: &dyn Store) -> (User, CatalogModel, Instance) {
    let owner = new_user(store).await;
    let model = new_model(store).await;
    let inst = instance(&owner, &model, now());
    store
        .create_instance(&inst, &free())
        .await
        .expect("create instance");
    (owner, model, inst)
}

async fn get_instance(store: &dyn Store, id: Uuid) -> Instance {
    store.instance(id).await.unwrap().expect("instance exists")
}

fn replica(instance: &Instance, at: DateTime<Utc>) -> Replica {
    Replica {
        id: Uuid::now_v7(),
        instance_id: instance.id,
        driver_ref: format!("pid:{}", unique("p")),
        endpoint: None,
        state: ReplicaState::Starting,
        restarts: 0,
        started_at: at,
        updated_at: at,
    }
}

/// A fixed, whole hour (far from any other check's `now()`-based rows) plus minutes.
fn hour(h: i64, minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 - 1_700_000_000 % 3600, 0).unwrap()
        + Duration::hours(h)
        + Duration::minutes(minutes)
}

fn sample(owner: Uuid, instance: Uuid, model: &str, at: DateTime<Utc>) -> UsageSample {
    UsageSample {
        owner_id: owner,
        instance_id: instance,
        model_id: model.into(),
        at,
        requests: 1,
        prompt_tokens: 10,
        completion_tokens: 100,
    }
}

// --- deployments: checks ---

pub async fn delete_user_with_instances_refused(store: &dyn Store) {
    let (owner, _, inst) = new_instance(store).await;
    let t = now();
    let key = api_key(&owner, t);
    let sess = session(&owner, Uuid::now_v7(), t);
    store.create_api_key(&key).await.unwrap();
    store.create_session(&sess).await.unwrap();

    let err = store.delete_user(owner.id).await.unwrap_err();
    assert!(matches!(err, Error::InUse(_)), "{err:?}");
    assert!(err.to_string().contains("instances"), "{err}");
    // Nothing went: not the user, not their credentials, not the instance.
    assert_eq!(
        store.user_by_id(owner.id).await.unwrap(),
        Some(owner.clone())
    );
    assert_eq!(store.list_api_keys(owner.id).await.unwrap(), vec![key]);
    assert_eq!(
        store.session_by_hash(&sess.token_hash).await.unwrap(),
        Some(sess)
    );
    assert_eq!(store.instance(inst.id).await.unwrap(), Some(inst.clone()));

    // Once the instance is deleted the user can go; usage history stays behind.
    let usage = sample(owner.id, inst.id, &inst.model_id, hour(0, 1));
    store.record_usage(&usage).await.unwrap();
    assert!(store.delete_instance(inst.id, &free()).await.unwrap());
    assert!(store.delete_user(owner.id).await.unwrap());
    assert_eq!(store.user_by_id(owner.id).await.unwrap(), None);
    assert_eq!(
        store.usage(Some(owner.id), None, None).await.unwrap().len(),
        1
    );
}

pub async fn models_round_trip_and_upsert(store: &dyn Store) {
    // One entry per kind of source, and one with every optional field empty.
    let ollama = catalog_model(ModelSource::Ollama {
        name: "library/llama2:7b".into(),
    });
    let url = CatalogModel {
        gpu_supported: true,
        builtin: true,
        ..catalog_model(ModelSource::Url {
            url: "https://example.test/m.gguf".into(),
            sha256: "ab".repeat(32),
        })
    };
    let file = CatalogModel {
        weights_bytes: None,
        cpu_supported: false,
        memory_required: u32::MAX,
        expected_deploy_seconds: 0,
        ..catalog_model(ModelSource::File {
            path: "/var/lib/corral/models/x.gguf".into(),
        })
    };
    for m in [&ollama, &url, &file] {
        store.upsert_model(m).await.unwrap();
        assert_eq!(store.model(&m.id).await.unwrap(), Some(m.clone()));
    }
    assert_eq!(store.model(&unique("nope")).await.unwrap(), None);

    // Upsert overwrites every field of an existing entry.
    let changed = CatalogModel {
        family: "Changed".into(),
        size: "13B".into(),
        cpu_supported: false,
        gpu_supported: true,
        memory_required: 8192,
        expected_deploy_seconds: 300,
        source: ModelSource::File {
            path: "imported.gguf".into(),
        },
        weights_bytes: Some(u64::try_from(i64::MAX).unwrap()),
        builtin: true,
        ..ollama.clone()
    };
    store.upsert_model(&changed).await.unwrap();
    assert_eq!(
        store.model(&ollama.id).await.unwrap(),
        Some(changed.clone())
    );

    // Ordered by id.
    let all = store.list_models().await.unwrap();
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
    for m in [&changed, &url, &file] {
        assert!(all.contains(m), "{} listed", m.id);
    }

    assert!(store.delete_model(&url.id).await.unwrap());
    assert!(!store.delete_model(&url.id).await.unwrap(), "already gone");
    assert_eq!(store.model(&url.id).await.unwrap(), None);
    assert!(!store.list_models().await.unwrap().contains(&url));

    // A size the database cannot hold is refused, not wrapped.
    let huge = CatalogModel {
        weights_bytes: Some(u64::MAX),
        ..catalog_model(ModelSource::File { path: "h".into() })
    };
    let err = store.upsert_model(&huge).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert_eq!(store.model(&huge.id).await.unwrap(), None);
}

pub async fn builtin_models_seed_idempotently(store: &dyn Store) {
    // What the server does at every start.
    for _ in 0..2 {
        for m in builtin_models() {
            store.upsert_model(&m).await.unwrap();
        }
    }
    let all = store.list_models().await.unwrap();
    for m in builtin_models() {
        assert_eq!(all.iter().filter(|x| x.id == m.id).count(), 1, "{}", m.id);
        assert_eq!(store.model(&m.id).await.unwrap(), Some(m));
    }
}

pub async fn delete_model_in_use_refused(store: &dyn Store) {
    let (_, model, inst) = new_instance(store).await;
    let err = store.delete_model(&model.id).await.unwrap_err();
    assert!(matches!(err, Error::InUse(_)), "{err:?}");
    assert_eq!(store.model(&model.id).await.unwrap(), Some(model.clone()));

    assert!(store.delete_instance(inst.id, &free()).await.unwrap());
    assert!(store.delete_model(&model.id).await.unwrap());
}

pub async fn instance_round_trip(store: &dyn Store) {
    let owner = new_user(store).await;
    let model = new_model(store).await;
    let t = now();
    // Every optional field set, so each column is proven to round-trip.
    let full = Instance {
        driver: "ecs".into(),
        compute: ComputeSpec {
            compute_type: ComputeType::Gpu,
            cpu: 4.0,
            memory: 16384,
            gpu_count: 1,
            instance_type: Some("g5.xlarge".into()),
            spot: true,
        },
        settings: InstanceSettings {
            idle_timeout_seconds: 0,
            min_replicas: 0,
            max_replicas: 4,
            wake_on_request: false,
        },
        desired: Desired::Sleeping,
        state: State::Failed,
        state_reason: Some("image pull failed".into()),
        target_replicas: 3,
        updated_at: t + Duration::seconds(1),
        last_activity_at: t + Duration::seconds(2),
        running_since: Some(t + Duration::microseconds(3)),
        running_seconds: 12_345,
        ..instance(&owner, &model, t)
    };
    let fargate = Instance {
        compute: ComputeSpec {
            compute_type: ComputeType::Fargate,
            cpu: 0.25,
            memory: 512,
            ..local_spec()
        },
        ..instance(&owner, &model, t)
    };
    let minimal = instance(&owner, &model, t);
    for i in [&full, &fargate, &minimal] {
        store.create_instance(i, &free()).await.unwrap();
        assert_eq!(store.instance(i.id).await.unwrap(), Some(i.clone()));
    }
    assert_eq!(store.instance(Uuid::now_v7()).await.unwrap(), None);

    // Owner-scoped lookup: someone else's instance looks exactly like a missing one.
    let stranger = new_user(store).await;
    assert_eq!(
        store.instance_for_owner(full.id, owner.id).await.unwrap(),
        Some(full.clone())
    );
    assert_eq!(
        store
            .instance_for_owner(full.id, stranger.id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .instance_for_owner(Uuid::now_v7(), owner.id)
            .await
            .unwrap(),
        None
    );

    let dup = Instance {
        model_id: model.id.clone(),
        ..minimal.clone()
    };
    let err = store.create_instance(&dup, &free()).await.unwrap_err();
    assert!(matches!(err, Error::Conflict("instance")), "{err:?}");
}

pub async fn instance_references_checked(store: &dyn Store) {
    let owner = new_user(store).await;
    let model = new_model(store).await;
    let t = now();

    let no_model = Instance {
        model_id: unique("missing"),
        ..instance(&owner, &model, t)
    };
    let err = store.create_instance(&no_model, &free()).await.unwrap_err();
    assert!(matches!(err, Error::UnknownReference(_)), "{err:?}");

    let ghost = User::new(&email(), "h".into(), Role::User, t);
    let no_owner = instance(&ghost, &model, t);
    let err = store.create_instance(&no_owner, &free()).await.unwrap_err();
    assert!(matches!(err, Error::UnknownReference(_)), "{err:?}");

    let inverted = Instance {
        settings: InstanceSettings {
            min_replicas: 3,
            max_replicas: 2,
            ..InstanceSettings::default()
        },
        ..instance(&owner, &model, t)
    };
    let err = store.create_instance(&inverted, &free()).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");

    for i in [&no_model, &no_owner, &inverted] {
        assert_eq!(store.instance(i.id).await.unwrap(), None);
    }
}

pub async fn list_instances_owner_scoped(store: &dyn Store) {
    let alice = new_user(store).await;
    let bob = new_user(store).await;
    let model = new_model(store).await;
    let t = now();
    let a1 = instance(&alice, &model, t);
    let b1 = instance(&bob, &model, t + Duration::seconds(1));
    let a2 = instance(&alice, &model, t + Duration::seconds(2));
    for i in [&a1, &b1, &a2] {
        store.create_instance(i, &free()).await.unwrap();
    }

    assert_eq!(
        store.list_instances(Some(alice.id)).await.unwrap(),
        vec![a2.clone(), a1.clone()],
        "own only, newest first"
    );
    assert_eq!(
        store.list_instances(Some(bob.id)).await.unwrap(),
        vec![b1.clone()]
    );
    let nobody = Uuid::now_v7();
    assert_eq!(store.list_instances(Some(nobody)).await.unwrap(), vec![]);

    // Everyone's: all three, newest first relative to each other.
    let all = store.list_instances(None).await.unwrap();
    let pos = |i: &Instance| all.iter().position(|x| x == i).expect("listed");
    assert!(pos(&a2) < pos(&b1) && pos(&b1) < pos(&a1));
    assert!(all.windows(2).all(|w| w[0].created_at >= w[1].created_at));
}

pub async fn set_desired_and_activity(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let t1 = inst.created_at + Duration::seconds(10);
    let set = |from, to, at| async move {
        match store.set_desired(inst.id, from, to, &free(), at).await {
            Ok(Some(DesiredChange::Set(i))) => i,
            other => panic!("{from:?} -> {to:?}: {other:?}"),
        }
    };

    // Stopping is not activity.
    let stopped = set(Desired::Running, Desired::Stopped, t1).await;
    let expected = Instance {
        desired: Desired::Stopped,
        updated_at: t1,
        ..inst.clone()
    };
    assert_eq!(stopped, expected);
    assert_eq!(get_instance(store, inst.id).await, expected);

    // Compare-and-set: from a value it no longer has, nothing is written and the
    // instance as it is comes back.
    let stale = store
        .set_desired(inst.id, Desired::Running, Desired::Sleeping, &free(), t1)
        .await
        .unwrap();
    assert_eq!(stale, Some(DesiredChange::Stale(expected.clone())));
    assert_eq!(get_instance(store, inst.id).await, expected);

    // Asking for Running again counts as activity, so it is not idle-stopped at once.
    let t2 = t1 + Duration::hours(2);
    let running = set(Desired::Stopped, Desired::Running, t2).await;
    assert_eq!(
        (
            running.desired,
            running.updated_at,
            running.last_activity_at
        ),
        (Desired::Running, t2, t2)
    );
    assert_eq!(running.state, State::Pending, "state is the reconciler's");

    // ...but never moves activity backwards.
    let earlier = t2 - Duration::minutes(1);
    let again = set(Desired::Running, Desired::Running, earlier).await;
    assert_eq!(again.last_activity_at, t2);

    let deleted = set(Desired::Running, Desired::Deleted, t2).await;
    assert_eq!(deleted.desired, Desired::Deleted);
    assert!(store.list_instances(None).await.unwrap().contains(&deleted));
    // Nothing leaves deleted.
    for to in [Desired::Running, Desired::Sleeping, Desired::Stopped] {
        let err = store
            .set_desired(inst.id, Desired::Deleted, to, &free(), t2)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
    assert_eq!(get_instance(store, inst.id).await.desired, Desired::Deleted);

    let missing = store
        .set_desired(
            Uuid::now_v7(),
            Desired::Running,
            Desired::Stopped,
            &free(),
            t2,
        )
        .await;
    assert_eq!(missing.unwrap(), None);
    // No event: only transitions and notes are on the timeline.
    assert_eq!(store.list_events(inst.id, 100).await.unwrap(), vec![]);
}

pub async fn update_instance_settings(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let t1 = inst.created_at + Duration::seconds(10);
    let settings = InstanceSettings {
        idle_timeout_seconds: 5,
        min_replicas: 0,
        max_replicas: 3,
        wake_on_request: false,
    };
    let updated = store
        .update_instance_settings(inst.id, &settings, &free(), t1)
        .await
        .unwrap()
        .expect("exists");
    let expected = Instance {
        settings: settings.clone(),
        updated_at: t1,
        ..inst.clone()
    };
    assert_eq!(updated, expected);
    assert_eq!(get_instance(store, inst.id).await, expected);

    let inverted = InstanceSettings {
        min_replicas: 4,
        max_replicas: 1,
        ..settings.clone()
    };
    let t2 = t1 + Duration::seconds(1);
    let err = store
        .update_instance_settings(inst.id, &inverted, &free(), t2)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert_eq!(get_instance(store, inst.id).await, expected, "unchanged");

    let missing = store
        .update_instance_settings(Uuid::now_v7(), &settings, &free(), t2)
        .await;
    assert_eq!(missing.unwrap(), None);
}

pub async fn transition_is_compare_and_set(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let t = inst.created_at;
    let t1 = t + Duration::seconds(1);

    // From the wrong state: refused, and nothing at all is written.
    let moved = store
        .transition(inst.id, State::Starting, State::Ready, None, "ready", t1)
        .await
        .unwrap();
    assert!(!moved);
    assert_eq!(get_instance(store, inst.id).await, inst);
    assert_eq!(store.list_events(inst.id, 100).await.unwrap(), vec![]);

    let moved = store
        .transition(
            inst.id,
            State::Pending,
            State::Provisioning,
            None,
            "launching 1 replica",
            t1,
        )
        .await
        .unwrap();
    assert!(moved);
    let got = get_instance(store, inst.id).await;
    assert_eq!(
        got,
        Instance {
            state: State::Provisioning,
            updated_at: t1,
            ..inst.clone()
        }
    );

    // A reason is stored with the state, and the next transition replaces or clears it.
    let t2 = t1 + Duration::seconds(1);
    let reason = Some("exit code 137 (out of memory?)");
    let to_failed = store
        .transition(
            inst.id,
            State::Provisioning,
            State::Failed,
            reason,
            "failed",
            t2,
        )
        .await;
    assert!(to_failed.unwrap());
    let got = get_instance(store, inst.id).await;
    assert_eq!(
        (got.state, got.state_reason.as_deref()),
        (State::Failed, reason)
    );
    let t3 = t2 + Duration::seconds(1);
    let retry = store
        .transition(inst.id, State::Failed, State::Pending, None, "retry", t3)
        .await;
    assert!(retry.unwrap());
    let got = get_instance(store, inst.id).await;
    assert_eq!((got.state, got.state_reason), (State::Pending, None));

    // Each transition is one event, oldest first, with its states, message and time.
    let events = store.list_events(inst.id, 100).await.unwrap();
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.from_state, e.to_state, e.message.as_str(), e.at))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Some(State::Pending),
                Some(State::Provisioning),
                "launching 1 replica",
                t1
            ),
            (Some(State::Provisioning), Some(State::Failed), "failed", t2),
            (Some(State::Failed), Some(State::Pending), "retry", t3),
        ]
    );
    assert!(events.iter().all(|e| e.instance_id == inst.id));

    let unknown = store
        .transition(
            Uuid::now_v7(),
            State::Pending,
            State::Provisioning,
            None,
            "x",
            t3,
        )
        .await;
    assert!(!unknown.unwrap());
}

pub async fn transition_meters_running_time(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let t0 = inst.created_at;
    let step = |from: State, to: State, at: DateTime<Utc>| async move {
        let moved = store
            .transition(inst.id, from, to, None, to.as_str(), at)
            .await
            .unwrap();
        assert!(moved, "{from:?} -> {to:?}");
        let got = get_instance(store, inst.id).await;
        (got.running_since, got.running_seconds)
    };

    // Not running until ready.
    assert_eq!(
        step(State::Pending, State::Provisioning, t0).await,
        (None, 0)
    );
    assert_eq!(
        step(State::Provisioning, State::Starting, t0).await,
        (None, 0)
    );
    let ready_at = t0 + Duration::seconds(5);
    let running = (Some(ready_at), 0);
    assert_eq!(step(State::Starting, State::Ready, ready_at).await, running);
    // Scaling and back, or replacing replicas, keeps the clock where it started.
    let t = ready_at + Duration::seconds(10);
    assert_eq!(step(State::Ready, State::Scaling, t).await, running);
    assert_eq!(step(State::Scaling, State::Ready, t).await, running);
    assert_eq!(step(State::Ready, State::Starting, t).await, running);
    assert_eq!(step(State::Starting, State::Ready, t).await, running);

    // Stopping adds the whole seconds run (90.75 s -> 90) and stops the clock.
    let stop_at = ready_at + Duration::milliseconds(90_750);
    assert_eq!(
        step(State::Ready, State::Stopping, stop_at).await,
        (None, 90)
    );
    let later = stop_at + Duration::seconds(30);
    assert_eq!(
        step(State::Stopping, State::Sleeping, later).await,
        (None, 90)
    );

    // Waking runs the clock again; a failure stops it and adds that run too.
    assert_eq!(
        step(State::Sleeping, State::Pending, later).await,
        (None, 90)
    );
    assert_eq!(
        step(State::Pending, State::Provisioning, later).await,
        (None, 90)
    );
    assert_eq!(
        step(State::Provisioning, State::Starting, later).await,
        (None, 90)
    );
    let woke = later + Duration::seconds(1);
    assert_eq!(
        step(State::Starting, State::Ready, woke).await,
        (Some(woke), 90)
    );
    let failed_at = woke + Duration::seconds(3600);
    assert_eq!(
        step(State::Ready, State::Failed, failed_at).await,
        (None, 3690)
    );
    // Failing again (or stopping) while not running adds nothing.
    let t = failed_at + Duration::seconds(100);
    assert_eq!(step(State::Failed, State::Stopping, t).await, (None, 3690));
    assert_eq!(step(State::Stopping, State::Stopped, t).await, (None, 3690));

    // A clock that went backwards never subtracts.
    assert_eq!(step(State::Stopped, State::Pending, t).await, (None, 3690));
    assert_eq!(
        step(State::Pending, State::Provisioning, t).await,
        (None, 3690)
    );
    assert_eq!(
        step(State::Provisioning, State::Starting, t).await,
        (None, 3690)
    );
    assert_eq!(
        step(State::Starting, State::Ready, t).await,
        (Some(t), 3690)
    );
    let skewed = t - Duration::seconds(50);
    assert_eq!(
        step(State::Ready, State::Stopping, skewed).await,
        (None, 3690)
    );
}

pub async fn transition_concurrently_wins_once(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let t = now();
    // The reconciler and a failure report race to move the same pending instance.
    let (a, b, c, d) = tokio::join!(
        store.transition(inst.id, State::Pending, State::Provisioning, None, "a", t),
        store.transition(inst.id, State::Pending, State::Failed, Some("b"), "b", t),
        store.transition(inst.id, State::Pending, State::Provisioning, None, "c", t),
        store.transition(inst.id, State::Pending, State::Stopping, None, "d", t),
    );
    let won: Vec<bool> = [a, b, c, d].into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let events = store.list_events(inst.id, 100).await.unwrap();
    assert_eq!(events.len(), 1, "only the winner's event");
    let got = get_instance(store, inst.id).await;
    assert_eq!(Some(got.state), events[0].to_state);
}

pub async fn touch_activity_only_forward(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let used = inst.last_activity_at + Duration::minutes(5);
    store.touch_activity(inst.id, used).await.unwrap();
    assert_eq!(
        get_instance(store, inst.id).await,
        Instance {
            last_activity_at: used,
            ..inst.clone()
        },
        "activity alone does not bump updated_at"
    );
    let late = inst.last_activity_at + Duration::minutes(1);
    store.touch_activity(inst.id, late).await.unwrap();
    assert_eq!(get_instance(store, inst.id).await.last_activity_at, used);
    store.touch_activity(Uuid::now_v7(), used).await.unwrap(); // unknown id: no error
}

pub async fn set_target_replicas(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let t1 = inst.created_at + Duration::seconds(1);
    assert!(
        store
            .set_target_replicas(inst.id, 3, &free(), t1)
            .await
            .unwrap()
    );
    assert_eq!(
        get_instance(store, inst.id).await,
        Instance {
            target_replicas: 3,
            updated_at: t1,
            ..inst.clone()
        }
    );
    assert!(
        store
            .set_target_replicas(inst.id, 0, &free(), t1)
            .await
            .unwrap()
    );
    assert_eq!(get_instance(store, inst.id).await.target_replicas, 0);
    assert!(
        !store
            .set_target_replicas(Uuid::now_v7(), 1, &free(), t1)
            .await
            .unwrap()
    );
}

pub async fn delete_instance_cascades(store: &dyn Store) {
    let (owner, model, doomed) = new_instance(store).await;
    let other = instance(&owner, &model, now());
    store.create_instance(&other, &free()).await.unwrap();
    let t = now();
    let (r1, r2) = (replica(&doomed, t), replica(&other, t));
    store.create_replica(&r1).await.unwrap();
    store.create_replica(&r2).await.unwrap();
    store.append_event(doomed.id, "note", t).await.unwrap();
    store.append_event(other.id, "note", t).await.unwrap();
    let used = sample(owner.id, doomed.id, &model.id, hour(1, 0));
    store.record_usage(&used).await.unwrap();

    assert!(store.delete_instance(doomed.id, &free()).await.unwrap());
    assert_eq!(store.instance(doomed.id).await.unwrap(), None);
    assert_eq!(store.list_replicas(doomed.id).await.unwrap(), vec![]);
    assert!(!store.all_replicas().await.unwrap().contains(&r1));
    assert_eq!(store.list_events(doomed.id, 100).await.unwrap(), vec![]);
    // Usage is billing history: it outlives the instance.
    let rows = store.usage(Some(owner.id), None, None).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].instance_id, doomed.id);

    // The owner's other instance kept everything.
    assert_eq!(store.list_replicas(other.id).await.unwrap(), vec![r2]);
    assert_eq!(store.list_events(other.id, 100).await.unwrap().len(), 1);

    assert!(
        !store.delete_instance(doomed.id, &free()).await.unwrap(),
        "already gone"
    );
    // Writing to a deleted instance says so rather than failing obscurely.
    let err = store.append_event(doomed.id, "late", t).await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownReference("instance")),
        "{err:?}"
    );
    let err = store
        .create_replica(&replica(&doomed, t))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownReference("instance")),
        "{err:?}"
    );
}

pub async fn events_timeline(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let (_, _, other) = new_instance(store).await;
    let t = inst.created_at;
    let at = |s: i64| t + Duration::seconds(s);

    store
        .transition(
            inst.id,
            State::Pending,
            State::Provisioning,
            None,
            "launch",
            at(1),
        )
        .await
        .unwrap();
    store
        .append_event(inst.id, "replica 2 restarted (exit code 137)", at(2))
        .await
        .unwrap();
    store
        .transition(
            inst.id,
            State::Provisioning,
            State::Starting,
            None,
            "start",
            at(3),
        )
        .await
        .unwrap();
    store
        .append_event(other.id, "someone else's", at(2))
        .await
        .unwrap();

    let events = store.list_events(inst.id, 100).await.unwrap();
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.from_state, e.to_state, e.message.as_str(), e.at))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                Some(State::Pending),
                Some(State::Provisioning),
                "launch",
                at(1)
            ),
            (None, None, "replica 2 restarted (exit code 137)", at(2)),
            (
                Some(State::Provisioning),
                Some(State::Starting),
                "start",
                at(3)
            ),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));

    // A limit keeps the latest events, still oldest first.
    let latest = store.list_events(inst.id, 2).await.unwrap();
    assert_eq!(latest, events[1..].to_vec());
    assert_eq!(
        store.list_events(inst.id, 0).await.unwrap(),
        events[2..].to_vec()
    );
    assert_eq!(store.list_events(other.id, 100).await.unwrap().len(), 1);
    assert_eq!(
        store.list_events(Uuid::now_v7(), 100).await.unwrap(),
        vec![]
    );
}

pub async fn replicas_round_trip(store: &dyn Store) {
    let (_, _, inst) = new_instance(store).await;
    let (_, _, other) = new_instance(store).await;
    let t = now();
    let first = replica(&inst, t);
    let second = Replica {
        endpoint: Some("http://127.0.0.1:40001".into()),
        state: ReplicaState::Ready,
        restarts: 2,
        ..replica(&inst, t + Duration::seconds(1))
    };
    let theirs = replica(&other, t);
    for r in [&second, &first, &theirs] {
        store.create_replica(r).await.unwrap();
    }
    assert_eq!(
        store.list_replicas(inst.id).await.unwrap(),
        vec![first.clone(), second.clone()],
        "oldest first"
    );
    assert_eq!(
        store.list_replicas(other.id).await.unwrap(),
        vec![theirs.clone()]
    );

    let err = store.create_replica(&first).await.unwrap_err();
    assert!(matches!(err, Error::Conflict("replica")), "{err:?}");

    // Every field but the ids is written.
    let restarted = Replica {
        driver_ref: "pid:4242".into(),
        endpoint: Some("http://127.0.0.1:40002".into()),
        state: ReplicaState::Unhealthy,
        restarts: 1,
        started_at: t + Duration::seconds(30),
        updated_at: t + Duration::seconds(31),
        ..first.clone()
    };
    assert!(store.update_replica(&restarted).await.unwrap());
    let mine = store.list_replicas(inst.id).await.unwrap();
    assert_eq!(mine, vec![second.clone(), restarted.clone()]);
    for state in [
        ReplicaState::Starting,
        ReplicaState::Ready,
        ReplicaState::Unhealthy,
        ReplicaState::Stopping,
        ReplicaState::Exited,
        ReplicaState::Lost,
    ] {
        let r = Replica {
            state,
            endpoint: None,
            ..restarted.clone()
        };
        assert!(store.update_replica(&r).await.unwrap());
        assert!(store.list_replicas(inst.id).await.unwrap().contains(&r));
    }
    let ghost = replica(&inst, t);
    assert!(!store.update_replica(&ghost).await.unwrap());

    // Adoption sees every instance's replicas, grouped by instance.
    let all = store.all_replicas().await.unwrap();
    for r in [&second, &theirs] {
        assert!(all.contains(r));
    }
    let groups: Vec<Uuid> = all.iter().map(|r| r.instance_id).collect();
    let mut deduped = groups.clone();
    deduped.dedup();
    let mut sorted = deduped.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(deduped.len(), sorted.len(), "grouped by instance");

    assert!(store.delete_replica(second.id).await.unwrap());
    assert!(
        !store.delete_replica(second.id).await.unwrap(),
        "already gone"
    );
    assert_eq!(store.list_replicas(inst.id).await.unwrap().len(), 1);
}

pub async fn usage_rolls_up_per_hour(store: &dyn Store) {
    let owner = Uuid::now_v7(); // usage needs no user row: it outlives users
    let (inst, model) = (Uuid::now_v7(), unique("model"));
    let mut samples = vec![
        sample(owner, inst, &model, hour(0, 0)),
        sample(
            owner,
            inst,
            &model,
            hour(0, 59) + Duration::microseconds(59_999_999),
        ),
        UsageSample {
            prompt_tokens: 1,
            completion_tokens: 0,
            ..sample(owner, inst, &model, hour(0, 30))
        },
        sample(owner, inst, &model, hour(1, 0)),
    ];
    // The same hour through another model is its own row.
    let other_model = format!("{model}-b");
    samples.push(sample(owner, inst, &other_model, hour(0, 10)));
    for s in &samples {
        store.record_usage(s).await.unwrap();
    }

    let rows = store.usage(Some(owner), None, None).await.unwrap();
    let row = |model_id: &str, h: i64, requests, prompt, completion| UsageRow {
        owner_id: owner,
        instance_id: inst,
        model_id: model_id.into(),
        hour: hour(h, 0),
        requests,
        prompt_tokens: prompt,
        completion_tokens: completion,
    };
    assert_eq!(
        rows,
        vec![
            row(&model, 0, 3, 21, 200),
            row(&other_model, 0, 1, 10, 100),
            row(&model, 1, 1, 10, 100),
        ]
    );
}

pub async fn usage_filters_and_order(store: &dyn Store) {
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let mut ids = [Uuid::now_v7(), Uuid::now_v7()];
    ids.sort(); // both backends order ids as their hyphenated text sorts
    let [i1, i2] = ids;
    let model = unique("model");
    // Hours 10..13 of the fixed day, recorded out of order.
    for s in [
        sample(alice, i2, &model, hour(12, 5)),
        sample(bob, i1, &model, hour(11, 0)),
        sample(alice, i1, &model, hour(12, 40)),
        sample(alice, i1, &model, hour(10, 0)),
        sample(alice, i1, &model, hour(13, 0)),
    ] {
        store.record_usage(&s).await.unwrap();
    }
    let key = |r: &UsageRow| (r.owner_id, r.instance_id, r.hour);

    let mine = store.usage(Some(alice), None, None).await.unwrap();
    assert_eq!(
        mine.iter().map(key).collect::<Vec<_>>(),
        vec![
            (alice, i1, hour(10, 0)),
            (alice, i1, hour(12, 0)),
            (alice, i2, hour(12, 0)),
            (alice, i1, hour(13, 0)),
        ],
        "by hour, then instance"
    );

    // `since` is inclusive, `until` exclusive, both on the start of the hour.
    let window = store
        .usage(Some(alice), Some(hour(11, 0)), Some(hour(13, 0)))
        .await
        .unwrap();
    assert_eq!(
        window.iter().map(key).collect::<Vec<_>>(),
        vec![(alice, i1, hour(12, 0)), (alice, i2, hour(12, 0))]
    );
    let since = store
        .usage(Some(alice), Some(hour(12, 1)), None)
        .await
        .unwrap();
    assert_eq!(
        since.iter().map(key).collect::<Vec<_>>(),
        vec![(alice, i1, hour(13, 0))]
    );
    let until = store
        .usage(Some(alice), None, Some(hour(10, 59)))
        .await
        .unwrap();
    assert_eq!(
        until.iter().map(key).collect::<Vec<_>>(),
        vec![(alice, i1, hour(10, 0))]
    );
    assert_eq!(
        store.usage(Some(Uuid::now_v7()), None, None).await.unwrap(),
        vec![]
    );

    // Everyone's (admin): both owners, still ordered by hour.
    let all = store
        .usage(None, Some(hour(10, 0)), Some(hour(14, 0)))
        .await
        .unwrap();
    let ours: Vec<_> = all
        .iter()
        .filter(|r| r.model_id == model)
        .map(key)
        .collect();
    assert_eq!(
        ours,
        vec![
            (alice, i1, hour(10, 0)),
            (bob, i1, hour(11, 0)),
            (alice, i1, hour(12, 0)),
            (alice, i2, hour(12, 0)),
            (alice, i1, hour(13, 0)),
        ]
    );
    assert!(all.windows(2).all(|w| w[0].hour <= w[1].hour));
}

pub async fn usage_counts_several_requests(store: &dyn Store) {
    // The gateway writes a second's requests of one bucket as one sample.
    let owner = Uuid::now_v7();
    let (inst, model) = (Uuid::now_v7(), unique("model"));
    let five = UsageSample {
        requests: 5,
        prompt_tokens: 50,
        completion_tokens: 7,
        ..sample(owner, inst, &model, hour(3, 20))
    };
    store.record_usage(&five).await.unwrap();
    let row = |requests, prompt_tokens, completion_tokens| UsageRow {
        owner_id: owner,
        instance_id: inst,
        model_id: model.clone(),
        hour: hour(3, 0),
        requests,
        prompt_tokens,
        completion_tokens,
    };
    assert_eq!(
        store.usage(Some(owner), None, None).await.unwrap(),
        vec![row(5, 50, 7)]
    );
    // Added to the existing row, not replacing it.
    store
        .record_usage(&sample(owner, inst, &model, hour(3, 40)))
        .await
        .unwrap();
    assert_eq!(
        store.usage(Some(owner), None, None).await.unwrap(),
        vec![row(6, 60, 107)]
    );

    // Zero requests, or a count the schema cannot hold, is refused and changes nothing.
    for bad in [
        UsageSample {
            requests: 0,
            ..five.clone()
        },
        UsageSample {
            requests: u64::MAX,
            ..five.clone()
        },
        UsageSample {
            prompt_tokens: u64::MAX,
            ..five.clone()
        },
    ] {
        let err = store.record_usage(&bad).await.unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{bad:?}: {err:?}");
    }
    assert_eq!(
        store.usage(Some(owner), None, None).await.unwrap(),
        vec![row(6, 60, 107)]
    );
}

pub async fn usage_concurrent_requests_all_count(store: &dyn Store) {
    let owner = Uuid::now_v7();
    let inst = Uuid::now_v7();
    let model = unique("model");
    // Samples of 1 to 20 requests each, as the flushes of several servers would write.
    let samples: Vec<UsageSample> = (0..20)
        .map(|i| UsageSample {
            requests: i + 1,
            prompt_tokens: i,
            completion_tokens: 2 * i,
            ..sample(owner, inst, &model, hour(5, i as i64))
        })
        .collect();
    // All twenty race for the same hourly row.
    let results =
        futures_util::future::join_all(samples.iter().map(|s| store.record_usage(s))).await;
    for r in results {
        r.unwrap();
    }
    let rows = store.usage(Some(owner), None, None).await.unwrap();
    let total: u64 = (0..20).sum();
    assert_eq!(
        rows,
        vec![UsageRow {
            owner_id: owner,
            instance_id: inst,
            model_id: model,
            hour: hour(5, 0),
            requests: (1..=20).sum(),
            prompt_tokens: total,
            completion_tokens: 2 * total,
        }]
    );
}

// --- replica runs ---

fn fargate_spot_spec() -> ComputeSpec {
    ComputeSpec {
        compute_type: ComputeType::Fargate,
        cpu: 0.25,
        memory: 512,
        gpu_count: 0,
        instance_type: None,
        spot: true,
    }
}

fn gpu_spec() -> ComputeSpec {
    ComputeSpec {
        compute_type: ComputeType::Gpu,
        cpu: 4.0,
        memory: 16384,
        gpu_count: 1,
        instance_type: Some("g5.xlarge".into()),
        spot: false,
    }
}

/// An open run of a new replica of `instance_id` owned by `owner_id`.
fn run(owner_id: Uuid, instance_id: Uuid, started_at: DateTime<Utc>) -> ReplicaRun {
    ReplicaRun {
        id: Uuid::now_v7(),
        replica_id: Uuid::now_v7(),
        instance_id,
        owner_id,
        model_id: unique("model"),
        driver: "local".into(),
        driver_ref: format!("pid:{}", unique("p")),
        compute: local_spec(),
        started_at,
        ended_at: None,
    }
}

pub async fn runs_round_trip_and_outlive_instances(store: &dyn Store) {
    let (owner, model, inst) = new_instance(store).await;
    let t0 = now();
    // Two runs of one replica (restarted in place), written newest first, and one of
    // another replica; every compute kind survives the round trip.
    let mut first = run(owner.id, inst.id, t0);
    first.model_id = model.id.clone();
    first.compute = gpu_spec();
    first.ended_at = Some(t0 + Duration::seconds(30));
    let mut second = first.clone();
    second.id = Uuid::now_v7();
    second.driver_ref = format!("arn:aws:ecs:us-east-1:000000000000:task/c/{}", unique("t"));
    second.driver = "ecs".into();
    second.compute = fargate_spot_spec();
    second.started_at = t0 + Duration::seconds(31);
    second.ended_at = None;
    let mut other = run(owner.id, inst.id, t0 + Duration::seconds(10));
    other.model_id = model.id.clone();
    for r in [&second, &other, &first] {
        store.start_run(r).await.expect("start run");
    }
    assert_eq!(
        store.runs_for_instance(inst.id).await.unwrap(),
        vec![first.clone(), other.clone(), second.clone()],
        "oldest first, every field kept"
    );
    match store.start_run(&first).await {
        Err(Error::Conflict("replica run")) => {}
        other => panic!("duplicate run id: {other:?}"),
    }
    assert!(
        store
            .runs_for_instance(Uuid::now_v7())
            .await
            .unwrap()
            .is_empty(),
        "an unknown instance has no runs"
    );

    // No foreign keys: the history stays when the instance and its owner are deleted.
    assert!(store.delete_instance(inst.id, &free()).await.unwrap());
    assert!(store.delete_user(owner.id).await.unwrap());
    assert_eq!(store.runs_for_instance(inst.id).await.unwrap().len(), 3);
    let mine = store
        .runs_overlapping(Some(owner.id), None, None)
        .await
        .unwrap();
    assert_eq!(mine, vec![first, other, second]);
}

pub async fn end_run_closes_once(store: &dyn Store) {
    let (owner, instance_id) = (Uuid::now_v7(), Uuid::now_v7());
    let t0 = now();
    let mut closed = run(owner, instance_id, t0);
    closed.ended_at = Some(t0 + Duration::seconds(5));
    let mut open = closed.clone();
    open.id = Uuid::now_v7();
    open.started_at = t0 + Duration::seconds(6);
    open.ended_at = None;
    let sibling = run(owner, instance_id, t0);
    for r in [&closed, &open, &sibling] {
        store.start_run(r).await.unwrap();
    }

    // The wrong instance closes nothing.
    let end = t0 + Duration::seconds(20);
    assert_eq!(
        store
            .end_run(Uuid::now_v7(), open.replica_id, end)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .end_run(instance_id, open.replica_id, end)
            .await
            .unwrap(),
        1,
        "only the open run of that replica"
    );
    // Again, later: a no-op, the first end stays.
    assert_eq!(
        store
            .end_run(instance_id, open.replica_id, end + Duration::seconds(60))
            .await
            .unwrap(),
        0
    );
    let runs = store.runs_for_instance(instance_id).await.unwrap();
    let by_id = |id: Uuid| runs.iter().find(|r| r.id == id).unwrap().ended_at;
    assert_eq!(
        by_id(closed.id),
        closed.ended_at,
        "an earlier run keeps its end"
    );
    assert_eq!(by_id(open.id), Some(end));
    assert_eq!(by_id(sibling.id), None, "another replica's run stays open");

    // An end before the start (clock skew) closes the run at its start.
    assert_eq!(
        store
            .end_run(instance_id, sibling.replica_id, t0 - Duration::seconds(3))
            .await
            .unwrap(),
        1
    );
    let runs = store.runs_for_instance(instance_id).await.unwrap();
    let sib = runs.iter().find(|r| r.id == sibling.id).unwrap();
    assert_eq!(sib.ended_at, Some(sib.started_at));
}

pub async fn end_run_concurrently_closes_once(store: &dyn Store) {
    let r = run(Uuid::now_v7(), Uuid::now_v7(), now());
    store.start_run(&r).await.unwrap();
    let ends = (1..=8).map(|i| {
        store.end_run(
            r.instance_id,
            r.replica_id,
            r.started_at + Duration::seconds(i),
        )
    });
    let closed: Vec<u64> = futures_util::future::join_all(ends)
        .await
        .into_iter()
        .map(|n| n.unwrap())
        .collect();
    assert_eq!(
        closed.iter().sum::<u64>(),
        1,
        "exactly one call closes it: {closed:?}"
    );
    let ended = store.runs_for_instance(r.instance_id).await.unwrap()[0].ended_at;
    let winner = closed.iter().position(|n| *n == 1).unwrap() as i64 + 1;
    assert_eq!(
        ended,
        Some(r.started_at + Duration::seconds(winner)),
        "the winner's end"
    );
}

pub async fn runs_overlapping_window(store: &dyn Store) {
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let instance_id = Uuid::now_v7();
    // A fixed day far from `now()`: a closed run [10:00, 11:00), a short one
    // [11:30, 11:45), an open one from 12:00; and bob's [10:30, 10:40).
    let mut a = run(alice, instance_id, hour(10, 0));
    a.ended_at = Some(hour(11, 0));
    let mut b = run(alice, instance_id, hour(11, 30));
    b.ended_at = Some(hour(11, 45));
    let c = run(alice, instance_id, hour(12, 0));
    let mut d = run(bob, Uuid::now_v7(), hour(10, 30));
    d.ended_at = Some(hour(10, 40));
    for r in [&c, &d, &b, &a] {
        store.start_run(r).await.unwrap();
    }
    let ids = |runs: Vec<ReplicaRun>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let mine = |since, until| async move {
        ids(store
            .runs_overlapping(Some(alice), since, until)
            .await
            .unwrap())
    };

    assert_eq!(mine(None, None).await, vec![a.id, b.id, c.id], "by start");
    // A run that ended exactly at `since` does not overlap; one that started exactly
    // at `until` neither.
    assert_eq!(mine(Some(hour(11, 0)), Some(hour(12, 0))).await, vec![b.id]);
    assert_eq!(
        mine(Some(hour(10, 59)), Some(hour(11, 31))).await,
        vec![a.id, b.id]
    );
    // The open run overlaps every window after its start.
    assert_eq!(mine(Some(hour(1000, 0)), None).await, vec![c.id]);
    assert_eq!(mine(None, Some(hour(10, 0))).await, Vec::<Uuid>::new());
    assert_eq!(mine(None, Some(hour(11, 31))).await, vec![a.id, b.id]);

    // Everyone's (other checks' runs too): bob's is there, in start order.
    let all = ids(store
        .runs_overlapping(None, Some(hour(10, 0)), Some(hour(12, 1)))
        .await
        .unwrap());
    let ours: Vec<Uuid> = all
        .into_iter()
        .filter(|id| [a.id, b.id, c.id, d.id].contains(id))
        .collect();
    assert_eq!(ours, vec![a.id, d.id, b.id, c.id]);
    assert_eq!(
        ids(store.runs_overlapping(Some(bob), None, None).await.unwrap()),
        vec![d.id]
    );
}

// --- teams ---

async fn new_team(store: &dyn Store) -> Team {
    let team = Team {
        id: Uuid::now_v7(),
        name: unique("Team"),
        created_at: now(),
    };
    store.create_team(&team).await.expect("create team");
    team
}

fn member(team: &Team, user: &User, role: TeamRole, at: DateTime<Utc>) -> TeamMember {
    TeamMember {
        team_id: team.id,
        user_id: user.id,
        role,
        added_at: at,
    }
}

pub async fn teams_round_trip_and_unique_names(store: &dyn Store) {
    let t = now();
    let alpha = Team {
        id: Uuid::now_v7(),
        name: format!("Équipe {}", unique("a")),
        created_at: t,
    };
    store.create_team(&alpha).await.unwrap();
    assert_eq!(store.team(alpha.id).await.unwrap(), Some(alpha.clone()));
    assert_eq!(store.team(Uuid::now_v7()).await.unwrap(), None);

    // The same name in another case (non-ASCII included) is the same name.
    let shouting = Team {
        id: Uuid::now_v7(),
        name: alpha.name.to_uppercase(),
        created_at: t,
    };
    let err = store.create_team(&shouting).await.unwrap_err();
    assert!(matches!(err, Error::Conflict("team")), "{err:?}");
    assert_eq!(store.team(shouting.id).await.unwrap(), None);
    let same_id = Team {
        name: unique("other"),
        ..alpha.clone()
    };
    let err = store.create_team(&same_id).await.unwrap_err();
    assert!(matches!(err, Error::Conflict("team")), "{err:?}");

    // Listed by name ignoring case: "b-..." sorts before "C-..." and after "a-...".
    let tag = unique("");
    let names = [format!("b{tag}"), format!("C{tag}"), format!("a{tag}")];
    let mut made = Vec::new();
    for name in &names {
        let team = Team {
            id: Uuid::now_v7(),
            name: name.clone(),
            created_at: t,
        };
        store.create_team(&team).await.unwrap();
        made.push(team);
    }
    let listed: Vec<String> = store
        .list_teams()
        .await
        .unwrap()
        .into_iter()
        .filter(|team| made.iter().any(|m| m.id == team.id))
        .map(|team| team.name)
        .collect();
    assert_eq!(
        listed,
        vec![names[2].clone(), names[0].clone(), names[1].clone()]
    );

    // Renaming: to a free name, to a new case of its own name, not to another's name.
    let renamed = store
        .rename_team(made[0].id, &format!("renamed{tag}"))
        .await
        .unwrap()
        .expect("team exists");
    assert_eq!(renamed.name, format!("renamed{tag}"));
    assert_eq!(
        (renamed.id, renamed.created_at),
        (made[0].id, made[0].created_at)
    );
    assert_eq!(store.team(made[0].id).await.unwrap(), Some(renamed.clone()));
    // The old name is free again.
    let reuse = Team {
        id: Uuid::now_v7(),
        name: names[0].clone(),
        created_at: t,
    };
    store.create_team(&reuse).await.unwrap();
    let cased = store
        .rename_team(made[0].id, &format!("RENAMED{tag}"))
        .await
        .unwrap()
        .expect("team exists");
    assert_eq!(cased.name, format!("RENAMED{tag}"));
    let err = store
        .rename_team(made[0].id, &names[1].to_lowercase())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict("team")), "{err:?}");
    assert_eq!(store.team(made[0].id).await.unwrap(), Some(cased));
    assert_eq!(
        store
            .rename_team(Uuid::now_v7(), &unique("x"))
            .await
            .unwrap(),
        None
    );

    assert!(store.delete_team(made[1].id).await.unwrap());
    assert!(!store.delete_team(made[1].id).await.unwrap());
    assert_eq!(store.team(made[1].id).await.unwrap(), None);
    // Its name is free once it is gone.
    let again = Team {
        id: Uuid::now_v7(),
        name: names[1].clone(),
        created_at: t,
    };
    store.create_team(&again).await.unwrap();
}

pub async fn team_members_roles_and_cascades(store: &dyn Store) {
    let team = new_team(store).await;
    let other = new_team(store).await;
    let (ann, bob) = (new_user(store).await, new_user(store).await);
    let t = now();

    let first = member(&team, &ann, TeamRole::Owner, t);
    assert_eq!(store.set_team_member(&first).await.unwrap(), first);
    let second = member(&team, &bob, TeamRole::Member, t + Duration::seconds(1));
    store.set_team_member(&second).await.unwrap();
    store
        .set_team_member(&member(&other, &ann, TeamRole::Member, t))
        .await
        .unwrap();
    // A role change keeps the first `added_at`.
    let demoted = store
        .set_team_member(&member(
            &team,
            &ann,
            TeamRole::Member,
            t + Duration::hours(1),
        ))
        .await
        .unwrap();
    assert_eq!(
        demoted,
        TeamMember {
            role: TeamRole::Member,
            ..first.clone()
        }
    );
    assert_eq!(
        store.team_members(team.id).await.unwrap(),
        vec![demoted.clone(), second.clone()]
    );
    let mut expected = vec![
        Membership {
            team: team.clone(),
            role: TeamRole::Member,
        },
        Membership {
            team: other.clone(),
            role: TeamRole::Member,
        },
    ];
    expected.sort_by_key(|m| (Team::name_key(&m.team.name), m.team.id));
    assert_eq!(store.user_teams(ann.id).await.unwrap(), expected);
    assert_eq!(store.team_members(Uuid::now_v7()).await.unwrap(), vec![]);

    // Unknown team or user: refused, nothing written.
    let ghost = User::new(&email(), "h".into(), Role::User, t);
    let err = store
        .set_team_member(&member(&team, &ghost, TeamRole::Owner, t))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownReference(_)), "{err:?}");
    let ghost_team = Team {
        id: Uuid::now_v7(),
        name: unique("ghost"),
        created_at: t,
    };
    let err = store
        .set_team_member(&member(&ghost_team, &bob, TeamRole::Owner, t))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownReference(_)), "{err:?}");
    assert_eq!(store.user_teams(ghost.id).await.unwrap(), vec![]);
    assert_eq!(store.user_teams(bob.id).await.unwrap().len(), 1);

    // Removing a member.
    assert!(store.remove_team_member(team.id, bob.id).await.unwrap());
    assert!(!store.remove_team_member(team.id, bob.id).await.unwrap());
    assert_eq!(store.user_teams(bob.id).await.unwrap(), vec![]);

    // Deleting a user removes their memberships; deleting a team removes its own.
    store.set_team_member(&second).await.unwrap();
    assert!(store.delete_user(bob.id).await.unwrap());
    assert_eq!(store.team_members(team.id).await.unwrap(), vec![demoted]);
    assert!(store.delete_team(team.id).await.unwrap());
    assert_eq!(store.team_members(team.id).await.unwrap(), vec![]);
    assert_eq!(
        store.user_teams(ann.id).await.unwrap(),
        vec![Membership {
            team: other,
            role: TeamRole::Member,
        }]
    );
}

pub async fn team_instances_and_delete_refused(store: &dyn Store) {
    let team = new_team(store).await;
    let owner = new_user(store).await;
    let model = new_model(store).await;
    store
        .set_team_member(&member(&team, &owner, TeamRole::Member, now()))
        .await
        .unwrap();
    let older = Instance {
        team_id: Some(team.id),
        ..instance(&owner, &model, now())
    };
    let newer = Instance {
        team_id: Some(team.id),
        ..instance(&owner, &model, now() + Duration::seconds(1))
    };
    let private = instance(&owner, &model, now());
    for i in [&older, &newer, &private] {
        store.create_instance(i, &free()).await.unwrap();
    }
    assert_eq!(store.instance(older.id).await.unwrap(), Some(older.clone()));
    assert_eq!(
        store.list_team_instances(team.id).await.unwrap(),
        vec![newer.clone(), older.clone()]
    );
    assert_eq!(
        store.list_team_instances(Uuid::now_v7()).await.unwrap(),
        vec![]
    );
    // The deployer's own list includes what they deployed for the team.
    assert_eq!(store.list_instances(Some(owner.id)).await.unwrap().len(), 3);

    // A team that does not exist is refused like a missing owner.
    let orphan = Instance {
        team_id: Some(Uuid::now_v7()),
        ..instance(&owner, &model, now())
    };
    let err = store.create_instance(&orphan, &free()).await.unwrap_err();
    assert!(matches!(err, Error::UnknownReference(_)), "{err:?}");
    assert_eq!(store.instance(orphan.id).await.unwrap(), None);

    // The team cannot go while it owns instances; nothing is deleted.
    let err = store.delete_team(team.id).await.unwrap_err();
    assert!(matches!(err, Error::InUse(_)), "{err:?}");
    assert_eq!(store.team(team.id).await.unwrap(), Some(team.clone()));
    assert_eq!(store.team_members(team.id).await.unwrap().len(), 1);
    assert!(store.delete_instance(older.id, &free()).await.unwrap());
    let err = store.delete_team(team.id).await.unwrap_err();
    assert!(matches!(err, Error::InUse(_)), "{err:?}");
    assert!(store.delete_instance(newer.id, &free()).await.unwrap());
    assert!(store.delete_team(team.id).await.unwrap());
    assert_eq!(store.user_teams(owner.id).await.unwrap(), vec![]);
}

// --- leases ---

/// A lease name of its own, so checks and runs sharing a database do not meet.
fn lease_name() -> String {
    format!("leader-{}", Uuid::now_v7().simple())
}

fn whole_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).expect("in range")
}

pub async fn lease_two_contenders_one_wins(store: &dyn Store) {
    let name = lease_name();
    let now = whole_micros(Utc::now());
    let until = now + Duration::seconds(10);
    let (a, b) = tokio::join!(
        store.acquire_lease(&name, "a", now, until),
        store.acquire_lease(&name, "b", now, until),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let winner = match (&a, &b) {
        (Some(w), None) | (None, Some(w)) => w.clone(),
        _ => panic!("exactly one contender must win: {a:?} {b:?}"),
    };
    assert_eq!(winner.token, 1);
    assert_eq!(winner.expires_at, until);
    assert_eq!(store.lease(&name).await.unwrap(), Some(winner));
}

pub async fn lease_renews_and_passes_on_after_expiry(store: &dyn Store) {
    let name = lease_name();
    let t0 = whole_micros(Utc::now());
    let at = |s| t0 + Duration::seconds(s);
    let first = store.acquire_lease(&name, "a", t0, at(10)).await.unwrap();
    assert_eq!(first.map(|l| l.token), Some(1));
    assert_eq!(
        store
            .acquire_lease(&name, "b", at(5), at(15))
            .await
            .unwrap(),
        None,
        "held until it expires"
    );
    let renewed = store
        .acquire_lease(&name, "a", at(5), at(15))
        .await
        .unwrap();
    assert_eq!(
        renewed,
        Some(Lease {
            name: name.clone(),
            holder: "a".into(),
            token: 1,
            expires_at: at(15),
        }),
        "a renewal keeps the token"
    );
    assert_eq!(
        store
            .acquire_lease(&name, "b", at(14), at(24))
            .await
            .unwrap(),
        None
    );
    let taken = store
        .acquire_lease(&name, "b", at(15), at(25))
        .await
        .unwrap();
    assert_eq!(taken.map(|l| (l.holder, l.token)), Some(("b".into(), 2)));
    // The old holder waking up cannot renew what it lost.
    assert_eq!(
        store
            .acquire_lease(&name, "a", at(16), at(26))
            .await
            .unwrap(),
        None
    );
}

pub async fn lease_release_needs_the_current_token(store: &dyn Store) {
    let name = lease_name();
    let t0 = whole_micros(Utc::now());
    let at = |s| t0 + Duration::seconds(s);
    assert!(
        !store.release_lease(&name, "a", 1, t0).await.unwrap(),
        "no lease"
    );
    store
        .acquire_lease(&name, "a", t0, at(10))
        .await
        .unwrap()
        .unwrap();
    store
        .acquire_lease(&name, "b", at(10), at(20))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !store.release_lease(&name, "a", 1, at(11)).await.unwrap(),
        "a stale holder and token are refused"
    );
    assert!(!store.release_lease(&name, "b", 1, at(11)).await.unwrap());
    assert_eq!(store.lease(&name).await.unwrap().unwrap().holder, "b");
    assert!(store.release_lease(&name, "b", 2, at(11)).await.unwrap());
    // Released: the next contender takes it at once, with the next token.
    let next = store
        .acquire_lease(&name, "c", at(11), at(21))
        .await
        .unwrap();
    assert_eq!(next.map(|l| (l.holder, l.token)), Some(("c".into(), 3)));
}
