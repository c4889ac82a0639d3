//! Regression tests for issue 13, items 8 ("a stolen access token becomes permanent")
//! and 13 ("lockout and admin edge cases"), against the real server on both SQL stores.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{Backend, PASSWORD, TestApp, spawn_app, spawn_app_with_mailer};
use corral_api::mail::{MAIL_JOB, Mailer, SmtpSettings};
use corral_core::{AuditFilter, Role};
use corral_store::JobStatus;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

const NEW_PASSWORD: &str = "AnotherPass456?";

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn new_key(app: &TestApp, token: &str, extra: Value) -> Value {
    let mut body = json!({"name": "script", "password": PASSWORD});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, created) = app.post("/api/keys", Some(token), body).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn works(app: &TestApp, credential: &str) -> bool {
    let (status, body) = app.get("/api/user/profile", Some(credential)).await;
    assert!(status == 200 || status == 401, "{status} {body}");
    status == 200
}

/// The reset link in the newest mail to `email`.
async fn reset_token(app: &TestApp, email: &str) -> String {
    let before = app.mail_count(email).await;
    let (status, _) = app
        .post("/api/auth/reset-password", None, json!({"email": email}))
        .await;
    assert_eq!(status, 202);
    let mail = app.mail_after(email, before).await;
    let start = mail.body.find("token=").expect("a link") + "token=".len();
    mail.body[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Item 8: an access token alone mints no key and changes no MFA, keys expire by
/// default, and logout, logout everywhere, password change and reset end what a thief
/// may hold (access tokens of the ended sessions and API keys).
async fn stolen_access_token_becomes_permanent(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;

    // The password is required to create a key or to enrol MFA.
    for body in [
        json!({"name": "thief"}),
        json!({"name": "thief", "password": "Wrong1!aaaa"}),
    ] {
        let (status, body) = app.post("/api/keys", Some(&token), body).await;
        assert_eq!((status, code(&body)), (400, "wrong_password"), "{body}");
    }
    let (status, body) = app
        .post("/api/auth/mfa/enroll", Some(&token), json!({}))
        .await;
    assert_eq!((status, code(&body)), (400, "wrong_password"), "{body}");
    let (_, keys) = app.get("/api/keys", Some(&token)).await;
    assert_eq!(keys, json!([]), "refused requests created nothing");

    // New keys expire after 90 days unless "never" is asked for explicitly.
    let key = new_key(&app, &token, json!({})).await;
    let at = |v: &Value| v.as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    assert_eq!(
        at(&key["expires_at"]) - at(&key["created_at"]),
        Duration::days(90)
    );
    let forever = new_key(&app, &token, json!({"never_expires": true})).await;
    assert!(forever["expires_at"].is_null(), "{forever}");
    let (status, body) = app
        .post(
            "/api/keys",
            Some(&token),
            json!({"name": "x", "password": PASSWORD, "never_expires": true, "expires_in_days": 5}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_expiry"), "{body}");

    // Logging out a session refuses its access token at once.
    let (status, login) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200);
    let second = login["access_token"].as_str().unwrap();
    let refresh = login["refresh_token"].as_str().unwrap();
    assert!(works(&app, second).await);
    let (status, _) = app
        .post("/api/auth/logout", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 204);
    assert!(
        !works(&app, second).await,
        "access token of a logged-out session"
    );
    assert!(works(&app, &token).await, "the other session goes on");

    // Logging out everywhere ends every session and deletes the keys.
    let key = key["key"].as_str().unwrap().to_string();
    assert!(works(&app, &key).await);
    let (status, _) = app
        .post("/api/auth/logout", Some(&token), json!({"all": true}))
        .await;
    assert_eq!(status, 204);
    assert!(!works(&app, &token).await);
    assert!(
        !works(&app, &key).await,
        "keys are revoked by logout everywhere"
    );

    // A password change does the same.
    let token = app.login(&email, PASSWORD).await;
    let key = new_key(&app, &token, json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                   "confirmPassword": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!works(&app, &token).await);
    assert!(
        !works(&app, &key).await,
        "keys are revoked by a password change"
    );

    // A reset revokes keys by default, and keeps them when asked to.
    for (revoke, kept) in [(None, false), (Some(false), true), (Some(true), false)] {
        let token = app.login(&email, NEW_PASSWORD).await;
        let key = new_key(&app, &token, json!({"password": NEW_PASSWORD})).await["key"]
            .as_str()
            .unwrap()
            .to_string();
        let reset = reset_token(&app, &email).await;
        let mut body = json!({"token": reset, "password": NEW_PASSWORD,
                              "confirmPassword": NEW_PASSWORD});
        if let Some(revoke) = revoke {
            body["revoke_api_keys"] = json!(revoke);
        }
        let (status, answer) = app
            .post("/api/auth/reset-password/confirm", None, body)
            .await;
        assert_eq!(status, 200, "{answer}");
        assert!(!works(&app, &token).await, "sessions end with a reset");
        assert_eq!(
            works(&app, &key).await,
            kept,
            "revoke_api_keys = {revoke:?}"
        );
    }
}

/// Item 13: concurrent wrong logins get no more guesses than the threshold.
async fn lockout_and_admin_edge_cases_concurrent_logins(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, _) = app.user_with_role(Role::User).await;
    let attempts = (0..20).map(|_| {
        app.post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": "WrongPass123!"}),
        )
    });
    let answers = futures_util::future::join_all(attempts).await;
    let wrong = answers.iter().filter(|(s, _)| *s == 401).count();
    let refused = answers.iter().filter(|(s, _)| *s == 429).count();
    // Four wrong answers; the fifth guess locks (`account_locked`), and the rest never
    // reach the password (locked, or over the per-account rate limit).
    assert_eq!((wrong, refused), (4, 16), "{answers:?}");
    let checked = app
        .state
        .store
        .list_audit(&AuditFilter {
            action: Some("auth.login".into()),
            limit: Some(100),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.detail
                .as_deref()
                .is_some_and(|d| d.ends_with(" bad_password"))
        })
        .count();
    assert_eq!(checked, 5, "passwords checked");
    let failures = app
        .state
        .store
        .login_failures(&email)
        .await
        .unwrap()
        .unwrap();
    assert!(
        failures
            .locked_until
            .is_some_and(|until| until > Utc::now())
    );
}

/// Item 13: two admins removing each other at once cannot both win (demote, lock and
/// delete). The loser gets 409 `last_admin` when both requests reach the store, or is
/// refused earlier when the winner's change landed before its request was authorised.
async fn lockout_and_admin_edge_cases_last_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let id_of = |email: String| {
        let store = app.state.store.clone();
        async move { store.user_by_email(&email).await.unwrap().unwrap().id }
    };
    type Remove = fn(
        &TestApp,
        String,
        String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = (u16, Value)> + Send + '_>,
    >;
    let demote: Remove = |app, token, id| {
        Box::pin(async move {
            app.put(
                &format!("/api/admin/users/{id}"),
                Some(&token),
                json!({"role": "user"}),
            )
            .await
        })
    };
    let lock: Remove = |app, token, id| {
        Box::pin(async move {
            app.post(
                &format!("/api/admin/users/{id}/lock"),
                Some(&token),
                json!({}),
            )
            .await
        })
    };
    let delete: Remove = |app, token, id| {
        Box::pin(async move {
            app.delete(&format!("/api/admin/users/{id}"), Some(&token))
                .await
        })
    };
    for (what, remove) in [("demote", demote), ("lock", lock), ("delete", delete)] {
        let (a_email, a) = app.user_with_role(Role::Admin).await;
        let (b_email, b) = app.user_with_role(Role::Admin).await;
        let (a_id, b_id) = (id_of(a_email).await, id_of(b_email).await);
        // Only a and b are active admins: earlier rounds' winners step down.
        for user in app.state.store.list_users(0, 500).await.unwrap() {
            if user.role.is_admin() && !user.disabled && user.id != a_id && user.id != b_id {
                let (status, body) = demote(&app, a.clone(), user.id.to_string()).await;
                assert_eq!(status, 200, "{body}");
            }
        }
        let (first, second) = tokio::join!(
            remove(&app, a.clone(), b_id.to_string()),
            remove(&app, b.clone(), a_id.to_string()),
        );
        let statuses = [first.0, second.0];
        let won = statuses.iter().filter(|s| matches!(s, 200 | 204)).count();
        let refused = [&first, &second]
            .iter()
            .filter(|(s, b)| (*s == 409 && code(b) == "last_admin") || matches!(s, 401 | 403))
            .count();
        assert_eq!((won, refused), (1, 1), "{what}: {first:?} {second:?}");
        let active = app
            .state
            .store
            .list_users(0, 500)
            .await
            .unwrap()
            .into_iter()
            .filter(|u| u.role.is_admin() && !u.disabled)
            .count();
        assert_eq!(active, 1, "{what}: one active admin is left");
    }
}

/// Item 13: a reset link mailed before a password change no longer works.
async fn lockout_and_admin_edge_cases_reset_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;
    let old_link = reset_token(&app, &email).await;
    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD,
                   "confirmPassword": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(
            "/api/auth/reset-password/confirm",
            None,
            json!({"token": old_link, "password": PASSWORD, "confirmPassword": PASSWORD}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_token"), "{body}");
    app.login(&email, NEW_PASSWORD).await;
}

fn smtp_at(port: u16) -> Mailer {
    Mailer::smtp(&SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        from: "corral@example.com".into(),
        security: "none".into(),
    })
    .unwrap()
}

/// An SMTP server that accepts connections and never answers (a slow or hung relay).
/// Returns its port and how many connections it has had.
async fn stalling_smtp() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, connections)
}

/// Item 7: with a mail server that hangs, reset and resend-verification answer at once,
/// for known and unknown addresses alike: the mail leaves from the queue, and the
/// worker is the one waiting for the server.
async fn account_enumeration_by_timing(backend: Backend) {
    let (port, connections) = stalling_smtp().await;
    let app = spawn_app_with_mailer(backend, smtp_at(port)).await;
    let (known, _) = app.user_with_role(Role::User).await;
    let pending = format!("pending-{}@example.com", uuid::Uuid::now_v7().simple());
    let hash = app.state.passwords.hash(PASSWORD.into()).await.unwrap();
    let unverified = corral_core::User::new(&pending, hash, Role::User, Utc::now());
    app.state.store.create_user(&unverified).await.unwrap();

    let mut times = std::collections::BTreeMap::<&str, Vec<u128>>::new();
    for _ in 0..3 {
        for (label, path, email) in [
            ("reset known", "/api/auth/reset-password", known.as_str()),
            (
                "reset unknown",
                "/api/auth/reset-password",
                "nobody-here@example.com",
            ),
            (
                "resend known",
                "/api/auth/resend-verification",
                pending.as_str(),
            ),
            (
                "resend unknown",
                "/api/auth/resend-verification",
                "nobody-else@example.com",
            ),
        ] {
            let start = Instant::now();
            let (status, body) = app.post(path, None, json!({"email": email})).await;
            let took = start.elapsed().as_millis();
            assert_eq!(status, 202, "{label}: {body}");
            times.entry(label).or_default().push(took);
        }
    }
    for (label, took) in &times {
        assert!(
            took.iter().all(|ms| *ms < 1000),
            "{label} waited for SMTP: {took:?} ms"
        );
    }
    let median = |label: &str| {
        let mut t = times[label].clone();
        t.sort();
        t[t.len() / 2] as i128
    };
    for (known, unknown) in [
        ("reset known", "reset unknown"),
        ("resend known", "resend unknown"),
    ] {
        let gap = (median(known) - median(unknown)).abs();
        assert!(gap < 200, "{known} vs {unknown}: {times:?}");
    }
    // The worker is the one talking to the server, in the background.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while connections.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the queued mail was never sent");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let jobs = app.state.store.list_jobs(MAIL_JOB, 100).await.unwrap();
    assert_eq!(jobs.len(), 12, "one job per request, known or not");
}

/// Item 7: a mail the server refuses is kept, with its error, for a later attempt.
async fn account_enumeration_by_timing_mail_is_retried(backend: Backend) {
    // A port with nothing listening: every connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app = spawn_app_with_mailer(backend, smtp_at(port)).await;
    let (known, _) = app.user_with_role(Role::User).await;
    let (status, _) = app
        .post("/api/auth/reset-password", None, json!({"email": known}))
        .await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let job = loop {
        let jobs = app.state.store.list_jobs(MAIL_JOB, 10).await.unwrap();
        if let Some(job) = jobs.into_iter().find(|j| j.last_error.is_some()) {
            break job;
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        (job.status, job.attempts),
        (JobStatus::Pending, 1),
        "{job:?}"
    );
    let wait = job.next_attempt_at - job.updated_at;
    assert!(wait >= Duration::seconds(29), "backs off: {wait}");
}

both_backends!(
    account_enumeration_by_timing,
    account_enumeration_by_timing_mail_is_retried,
    stolen_access_token_becomes_permanent,
    lockout_and_admin_edge_cases_concurrent_logins,
    lockout_and_admin_edge_cases_last_admin,
    lockout_and_admin_edge_cases_reset_tokens,
);
