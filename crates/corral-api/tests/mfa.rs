//! TOTP MFA end to end: enrolment, confirmation, the second login step, single-use codes,
//! lockout on wrong codes, and disabling. Every test runs on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Backend, PASSWORD, TestApp, spawn_app};
use corral_core::totp::{self, STEP_SECONDS, code_at_step, step_at};
use corral_core::{ApiKey, AuditFilter, Role, secret};
use serde_json::{Value, json};

/// Plays the authenticator app. The server accepts a code once and only for a step newer
/// than the last one it accepted, so each call returns the code of a step not used yet,
/// within the server's window of one step either side of now.
struct Authenticator {
    secret: String,
    last: Option<i64>,
}

impl Authenticator {
    async fn next_code(&mut self) -> String {
        loop {
            let now = Utc::now().timestamp();
            let current = step_at(now);
            // The previous step is still accepted, but not in a step's last seconds: by the
            // time the request lands it could have fallen out of the window.
            let oldest = if now.rem_euclid(STEP_SECONDS) < STEP_SECONDS - 5 {
                current - totp::SKEW_STEPS
            } else {
                current
            };
            let step = self.last.map_or(oldest, |last| (last + 1).max(oldest));
            if step <= current + totp::SKEW_STEPS {
                self.last = Some(step);
                return code_at_step(&self.secret, step).unwrap();
            }
            let into_step = now.rem_euclid(STEP_SECONDS) as u64;
            tokio::time::sleep(Duration::from_secs(STEP_SECONDS as u64 - into_step)).await;
        }
    }

    /// A well-formed code that is wrong now (it belongs to a step far outside the window).
    fn wrong_code(&self) -> String {
        let far = step_at(Utc::now().timestamp()) + 100;
        code_at_step(&self.secret, far).unwrap()
    }
}

/// A verified user with MFA enrolled and confirmed: (email, access token, authenticator).
async fn user_with_mfa(app: &TestApp) -> (String, String, Authenticator) {
    let (email, token) = app.user_with_role(Role::User).await;
    let (status, body) = app
        .post(
            "/api/auth/mfa/enroll",
            Some(&token),
            json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut auth = Authenticator {
        secret: body["secret"].as_str().unwrap().to_string(),
        last: None,
    };
    let code = auth.next_code().await;
    let (status, body) = app
        .post("/api/auth/mfa/confirm", Some(&token), json!({"code": code}))
        .await;
    assert_eq!(status, 200, "{body}");
    (email, token, auth)
}

/// The password step; returns the MFA challenge token.
async fn mfa_challenge(app: &TestApp, email: &str) -> String {
    let (status, body) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mfa_required"], true, "{body}");
    assert!(
        body.get("access_token").is_none(),
        "no tokens before the code"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    body["mfa_token"].as_str().unwrap().to_string()
}

async fn mfa_verify(app: &TestApp, mfa_token: &str, code: &str) -> (u16, Value) {
    app.post(
        "/api/auth/mfa/verify",
        None,
        json!({"mfa_token": mfa_token, "code": code}),
    )
    .await
}

async fn audit_actions(app: &TestApp) -> Vec<String> {
    let filter = AuditFilter {
        action: Some("auth.mfa".into()),
        ..AuditFilter::default()
    };
    app.state
        .store
        .list_audit(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.action, e.detail.unwrap_or_default()))
        .collect()
}

async fn enroll_confirm_and_log_in_with_a_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;

    let (status, body) = app
        .post(
            "/api/auth/mfa/enroll",
            Some(&token),
            json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let secret = body["secret"].as_str().unwrap();
    let uri = body["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with(&format!("otpauth://totp/Corral:{email}?secret={secret}")),
        "{uri}"
    );
    assert!(uri.contains("issuer=Corral"), "{uri}");
    let mut auth = Authenticator {
        secret: secret.to_string(),
        last: None,
    };

    // Enrolled but not confirmed: login does not ask for a code yet.
    let (status, body) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string(), "{body}");

    let (status, body) = app
        .post(
            "/api/auth/mfa/confirm",
            Some(&token),
            json!({"code": auth.wrong_code()}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_code");
    let (status, body) = app
        .post(
            "/api/auth/mfa/confirm",
            Some(&token),
            json!({"code": auth.next_code().await}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "mfa_enabled"}));

    let challenge = mfa_challenge(&app, &email).await;
    let (status, body) = mfa_verify(&app, &challenge, &auth.next_code().await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["user"]["mfa_enabled"], true);
    let refresh = body["refresh_token"].as_str().unwrap();
    let (status, _) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 200, "MFA sessions refresh like any other");

    let actions = audit_actions(&app).await;
    for expected in [
        "auth.mfa_enroll 200",
        "auth.mfa_confirm 401 bad_totp",
        "auth.mfa_confirm 200",
        "auth.mfa_verify 200",
    ] {
        assert!(
            actions.iter().any(|a| a == expected),
            "{expected}: {actions:?}"
        );
    }
}

async fn a_code_cannot_be_used_twice(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, _, mut auth) = user_with_mfa(&app).await;
    let code = auth.next_code().await;

    let challenge = mfa_challenge(&app, &email).await;
    assert_eq!(mfa_verify(&app, &challenge, &code).await.0, 200);
    let challenge = mfa_challenge(&app, &email).await;
    let (status, body) = mfa_verify(&app, &challenge, &code).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_code");
    assert!(
        audit_actions(&app)
            .await
            .contains(&"auth.mfa_verify 401 code_reused".to_string())
    );
}

async fn wrong_codes_lock_the_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, _, mut auth) = user_with_mfa(&app).await;
    let challenge = mfa_challenge(&app, &email).await;
    // The password step was the first attempt (counted before it was checked, and kept
    // until the code is right), so the fourth wrong code is the fifth attempt.
    for attempt in 1..=4 {
        let (status, body) = mfa_verify(&app, &challenge, &auth.wrong_code()).await;
        let (expected_status, expected_code) = if attempt < 4 {
            (401, "invalid_code")
        } else {
            (429, "account_locked")
        };
        assert_eq!(status, expected_status, "attempt {attempt}: {body}");
        assert_eq!(body["error"]["code"], expected_code);
    }
    let (status, body) = mfa_verify(&app, &challenge, &auth.next_code().await).await;
    assert_eq!(status, 429, "locked even with the right code: {body}");
    let (status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 429, "and the password step is locked too");
}

async fn challenge_tokens_are_not_access_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, access, mut auth) = user_with_mfa(&app).await;
    let challenge = mfa_challenge(&app, &email).await;
    let (status, _) = app
        .post("/api/auth/mfa/enroll", Some(&challenge), json!({}))
        .await;
    assert_eq!(status, 401, "an MFA challenge is no access token");
    let (status, body) = mfa_verify(&app, &access, &auth.next_code().await).await;
    assert_eq!(status, 401, "an access token is no MFA challenge");
    assert_eq!(body["error"]["code"], "invalid_mfa_token");
}

async fn disable_needs_password_and_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token, mut auth) = user_with_mfa(&app).await;

    let (status, body) = app
        .post(
            "/api/auth/mfa/disable",
            Some(&token),
            json!({"password": "WrongPass123!", "code": auth.next_code().await}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "wrong_password");
    let (status, body) = app
        .post(
            "/api/auth/mfa/disable",
            Some(&token),
            json!({"password": PASSWORD, "code": auth.wrong_code()}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_code");
    let (status, body) = app
        .post(
            "/api/auth/mfa/disable",
            Some(&token),
            json!({"password": PASSWORD, "code": auth.next_code().await}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "mfa_disabled"}));

    let user = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap();
    assert!(!user.totp_enabled && user.totp_secret.is_none());
    // Login no longer asks for a code.
    let (status, body) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body["access_token"].is_string(), "{body}");
    let (status, body) = app
        .post(
            "/api/auth/mfa/disable",
            Some(&token),
            json!({"password": PASSWORD, "code": auth.wrong_code()}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "mfa_not_enabled");
    assert!(
        audit_actions(&app)
            .await
            .contains(&"auth.mfa_disable 200".to_string())
    );
}

async fn enrolment_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, _) = app.post("/api/auth/mfa/enroll", None, json!({})).await;
    assert_eq!(status, 401, "needs a bearer token");

    let (email, token) = app.user_with_role(Role::User).await;
    let (status, body) = app
        .post(
            "/api/auth/mfa/confirm",
            Some(&token),
            json!({"code": "123456"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "mfa_not_enrolled");

    // An API key cannot change how its owner logs in.
    let user = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap();
    let key = secret::new_api_key();
    app.state
        .store
        .create_api_key(&ApiKey {
            id: uuid::Uuid::now_v7(),
            owner_id: user.id,
            name: "ci".into(),
            prefix: key[..8].to_string(),
            key_hash: secret::hash(&key),
            created_at: Utc::now(),
            expires_at: None,
            last_used_at: None,
        })
        .await
        .unwrap();
    let (status, body) = app
        .post("/api/auth/mfa/enroll", Some(&key), json!({}))
        .await;
    assert_eq!(status, 403, "{body}");

    let (other, other_token, _) = user_with_mfa(&app).await;
    let (status, body) = app
        .post(
            "/api/auth/mfa/enroll",
            Some(&other_token),
            json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 409, "already enabled for {other}: {body}");
}

both_backends!(
    enroll_confirm_and_log_in_with_a_code,
    a_code_cannot_be_used_twice,
    wrong_codes_lock_the_account,
    challenge_tokens_are_not_access_tokens,
    disable_needs_password_and_code,
    enrolment_rules,
);
