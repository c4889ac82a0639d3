//! The one conformance suite every `Store` backend must pass (see `tests/conformance.rs`).
//!
//! Each check is a public function, independent of the others: it makes its own users
//! (unique e-mails), actors, action prefixes and recipients, so the checks can share one
//! database with each other and with earlier runs. Times are whole microseconds, the
//! precision both backends keep.

use chrono::{DateTime, Duration, Utc};
use corral_core::{
    ApiKey, AuditFilter, NewAuditEntry, OutboxMessage, Outcome, RefreshSession, Role, TokenPurpose,
    User,
};
use uuid::Uuid;

use crate::{ActionToken, Error, Store, UserPatch};

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
    );
}

// --- fixtures ---

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
    assert!(matches!(store.backend(), "sqlite" | "postgres"));
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

    for n in 1..=4 {
        let state = store
            .record_login_failure(&addr, 5, lock_for, t)
            .await
            .unwrap();
        assert_eq!((state.email.as_str(), state.count), (addr.as_str(), n));
        assert_eq!(state.locked_until, None);
    }
    store
        .record_login_failure(&other, 5, lock_for, t)
        .await
        .unwrap();

    let t5 = t + Duration::seconds(5);
    let locked = store
        .record_login_failure(&addr, 5, lock_for, t5)
        .await
        .unwrap();
    assert_eq!(locked.count, 0, "count restarts once locked");
    assert_eq!(locked.locked_until, Some(t5 + lock_for));
    assert_eq!(
        store.login_failures(&addr).await.unwrap(),
        Some(locked.clone())
    );

    // Counting goes on after the lock; the lock itself stays until the next one.
    let t6 = t5 + Duration::seconds(1);
    let next = store
        .record_login_failure(&addr, 5, lock_for, t6)
        .await
        .unwrap();
    assert_eq!((next.count, next.locked_until), (1, locked.locked_until));

    let others = store.login_failures(&other).await.unwrap().unwrap();
    assert_eq!((others.count, others.locked_until), (1, None));

    store.clear_login_failures(&addr).await.unwrap();
    assert_eq!(store.login_failures(&addr).await.unwrap(), None);
    store.clear_login_failures(&addr).await.unwrap(); // clearing nothing is fine
    assert!(store.login_failures(&other).await.unwrap().is_some());

    // A threshold of one locks on the first failure.
    let single = email();
    let state = store
        .record_login_failure(&single, 1, lock_for, t)
        .await
        .unwrap();
    assert_eq!((state.count, state.locked_until), (0, Some(t + lock_for)));
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
