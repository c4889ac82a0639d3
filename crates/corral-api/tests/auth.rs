//! The authentication flows end to end against the real server: sign-up, verification,
//! login and lockout, JWT checks, refresh rotation (body and cookie), logout, password
//! reset and first-run setup. Every test runs on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::{Backend, PASSWORD, TestApp, spawn_app, spawn_app_with};
use corral_core::{AuditFilter, Role};
use corral_store::UserPatch;
use serde_json::{Value, json};

const NEW_PASSWORD: &str = "EvenMoreSecure456?";

fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::now_v7().simple())
}

async fn signup(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    app.post(
        "/api/auth/signup",
        None,
        json!({"email": email, "password": password, "confirmPassword": password}),
    )
    .await
}

async fn login(app: &TestApp, email: &str, password: &str) -> (u16, Value) {
    app.post(
        "/api/auth/login",
        None,
        json!({"email": email, "password": password}),
    )
    .await
}

/// The `token` parameter of the link in the newest mail to `email`.
async fn mailed_token(app: &TestApp, email: &str, page: &str) -> String {
    let mail = app.last_mail(email).await;
    let link_start = format!("{}/{page}?token=", app.base);
    let start = mail
        .body
        .find(&link_start)
        .unwrap_or_else(|| panic!("no {page} link in {:?}", mail.body))
        + link_start.len();
    mail.body[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn verified_user(app: &TestApp) -> String {
    let (email, _token) = app.user_with_role(Role::User).await;
    email
}

async fn mails_to(app: &TestApp, email: &str) -> usize {
    app.mail_settled().await;
    app.state
        .store
        .list_outbox(Some(email), 100)
        .await
        .unwrap()
        .len()
}

/// Audit details of the newest `auth.*` rows, e.g. `["auth.login 401 bad_password", ...]`.
async fn auth_audit(app: &TestApp) -> Vec<String> {
    let filter = AuditFilter {
        action: Some("auth.".into()),
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

/// A raw POST, for the tests that look at headers and cookies.
async fn post_raw(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app.http.post(app.url(path));
    if let Some(cookie) = cookie {
        req = req.header("cookie", format!("corral_refresh={cookie}"));
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

/// The `corral_refresh` Set-Cookie header of a response.
fn refresh_cookie(resp: &reqwest::Response) -> String {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("corral_refresh="))
        .expect("a corral_refresh cookie")
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie["corral_refresh=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

async fn weak_password_is_rejected_naming_the_rule(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email("weak");
    let (status, body) = signup(&app, &email, "password1").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "weak_password");
    assert_eq!(
        body["error"]["details"]["failed_rules"],
        json!(["uppercase", "symbol"])
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("upper-case") && message.contains("symbol"),
        "{message}"
    );

    let (status, body) = signup(&app, &email, "Sh0rt!").await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["details"]["failed_rules"],
        json!(["min_length"])
    );
    assert!(
        app.state
            .store
            .user_by_email(&email)
            .await
            .unwrap()
            .is_none()
    );
}

async fn mismatch_and_bad_email_are_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app
        .post(
            "/api/auth/signup",
            None,
            json!({"email": unique_email("mismatch"), "password": PASSWORD,
                   "confirmPassword": "SecurePass123?"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "password_mismatch");

    let (status, body) = signup(&app, "not-an-address", PASSWORD).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_email");
}

async fn signup_verify_then_login(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email("new");
    let (status, body) = signup(&app, &email.to_uppercase(), PASSWORD).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "verification_sent");
    assert!(body["message"].is_string());

    let (status, body) = login(&app, &email, PASSWORD).await;
    assert_eq!(status, 403, "unverified login must be refused: {body}");
    assert_eq!(body["error"]["code"], "email_not_verified");

    let token = mailed_token(&app, &email, "verify").await;
    let (status, body) = app
        .post("/api/auth/verify", None, json!({"token": token}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "verified"}));
    let (status, body) = app
        .post("/api/auth/verify", None, json!({"token": token}))
        .await;
    assert_eq!(status, 400, "a verification token is single use");
    assert_eq!(body["error"]["code"], "invalid_token");

    let (status, body) = login(&app, &email, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body["access_token"].as_str().unwrap().len() > 20);
    assert_eq!(body["refresh_token"].as_str().unwrap().len(), 43);
    assert_eq!(body["user"]["email"], email);
    assert_eq!(body["user"]["role"], "user");
    assert_eq!(body["user"]["email_verified"], true);
    assert!(body["user"]["last_login_at"].is_string());
    assert!(body["user"].get("password_hash").is_none());

    let audit = auth_audit(&app).await;
    for expected in [
        "auth.signup 202",
        "auth.login 403 unverified",
        "auth.verify 200",
        "auth.login 200",
    ] {
        assert!(audit.iter().any(|a| a == expected), "{expected}: {audit:?}");
    }
}

async fn bad_verification_token_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app
        .post("/api/auth/verify", None, json!({"token": "nope"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_token");
}

async fn signup_with_a_taken_address_looks_the_same(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;
    let (status, body) = signup(&app, &email, NEW_PASSWORD).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "verification_sent");
    let mail = app.last_mail(&email).await;
    assert!(mail.subject.contains("Sign-up attempt"), "{mail:?}");
    assert!(
        !mail.body.contains("token="),
        "no link that would take over"
    );
    // The account is untouched: the old password still works, the new one does not.
    assert_eq!(login(&app, &email, PASSWORD).await.0, 200);
    assert_eq!(login(&app, &email, NEW_PASSWORD).await.0, 401);
    assert!(
        auth_audit(&app)
            .await
            .contains(&"auth.signup 202 existing_account".to_string())
    );
}

async fn signup_can_be_disabled(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.signup_enabled = false).await;
    let (status, body) = signup(&app, &unique_email("closed"), PASSWORD).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "signup_disabled");
}

async fn resend_verification_always_accepts(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email("resend");
    assert_eq!(signup(&app, &email, PASSWORD).await.0, 202);
    let first = mailed_token(&app, &email, "verify").await;

    let (status, known) = app
        .post(
            "/api/auth/resend-verification",
            None,
            json!({"email": email}),
        )
        .await;
    assert_eq!(status, 202);
    let second = mailed_token(&app, &email, "verify").await;
    assert_ne!(first, second);

    let stranger = unique_email("stranger");
    let (status, unknown) = app
        .post(
            "/api/auth/resend-verification",
            None,
            json!({"email": stranger}),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        known, unknown,
        "the answer must not tell who has an account"
    );
    assert_eq!(mails_to(&app, &stranger).await, 0);

    let (status, _) = app
        .post("/api/auth/verify", None, json!({"token": second}))
        .await;
    assert_eq!(status, 200);
}

async fn wrong_password_and_unknown_email_read_the_same(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;
    let (status, wrong) = login(&app, &email, "WrongPass123!").await;
    assert_eq!(status, 401);
    assert_eq!(wrong["error"]["code"], "invalid_credentials");
    let (status, unknown) = login(&app, &unique_email("ghost"), PASSWORD).await;
    assert_eq!(status, 401);
    assert_eq!(wrong, unknown);
}

/// Five failures lock an address for `lockout_duration`; the right password is then
/// refused too, and an unknown address behaves exactly the same.
async fn five_failures_lock_the_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let known = verified_user(&app).await;
    let unknown = unique_email("ghost");
    let mut answers = Vec::new();
    for email in [&known, &unknown] {
        let mut seen = Vec::new();
        for attempt in 1..=5 {
            let (status, body) = login(&app, email, "WrongPass123!").await;
            let expected = if attempt < 5 { 401 } else { 429 };
            assert_eq!(status, expected, "attempt {attempt} for {email}: {body}");
            seen.push(body);
        }
        let resp = post_raw(
            &app,
            "/api/auth/login",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await;
        assert_eq!(resp.status(), 429, "still locked with the right password");
        let retry_after: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((850..=900).contains(&retry_after), "{retry_after}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "account_locked");
        seen.push(body);
        answers.push(seen);
    }
    assert_eq!(
        answers[0], answers[1],
        "known and unknown addresses must look alike"
    );
    let audit = auth_audit(&app).await;
    assert!(
        audit.contains(&"auth.login 429 locked".to_string()),
        "{audit:?}"
    );
    assert!(audit.contains(&"auth.login 401 bad_password".to_string()));
    assert!(audit.contains(&"auth.login 401 unknown_email".to_string()));
}

async fn lockout_expires_and_success_clears_failures(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.lockout_duration = Duration::from_secs(1)).await;
    let email = verified_user(&app).await;
    for _ in 0..5 {
        login(&app, &email, "WrongPass123!").await;
    }
    assert_eq!(login(&app, &email, PASSWORD).await.0, 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login(&app, &email, PASSWORD).await.0, 200);
    // The success reset the count: four more failures do not lock.
    for _ in 0..4 {
        assert_eq!(login(&app, &email, "WrongPass123!").await.0, 401);
    }
    assert_eq!(login(&app, &email, PASSWORD).await.0, 200);
}

async fn logins_are_rate_limited_per_account(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.auth_rate_per_account = 3).await;
    let email = verified_user(&app).await; // one login
    for _ in 0..2 {
        assert_eq!(login(&app, &email, PASSWORD).await.0, 200);
    }
    let resp = post_raw(
        &app,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another account from the same address is not affected.
    let other = verified_user(&app).await;
    assert_eq!(login(&app, &other, PASSWORD).await.0, 200);
}

async fn disabled_account_cannot_log_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;
    let user = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap();
    let patch = UserPatch {
        disabled: Some(true),
        ..UserPatch::default()
    };
    app.state
        .store
        .update_user(user.id, &patch, chrono::Utc::now())
        .await
        .unwrap();
    let (status, body) = login(&app, &email, PASSWORD).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "account_disabled");
    assert_eq!(login(&app, &email, "WrongPass123!").await.0, 401);
}

/// Any bearer-authenticated route will do; MFA enrolment is one this module owns.
const BEARER_ROUTE: &str = "/api/auth/mfa/enroll";

async fn tampered_jwt_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.user_with_role(Role::User).await;
    assert_eq!(
        app.post(BEARER_ROUTE, Some(&token), json!({"password": PASSWORD}))
            .await
            .0,
        200
    );

    // Flip a character in the middle of the signature (the last one may only carry
    // padding bits).
    let sig_start = token.rfind('.').unwrap() + 1;
    let i = sig_start + 10;
    let flipped = if &token[i..=i] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &token[..i], &token[i + 1..]);
    let (status, body) = app.post(BEARER_ROUTE, Some(&tampered), json!({})).await;
    assert_eq!(status, 401, "{body}");

    let (status, _) = app.post(BEARER_ROUTE, Some("not.a.jwt"), json!({})).await;
    assert_eq!(status, 401);
    let (status, _) = app.post(BEARER_ROUTE, None, json!({})).await;
    assert_eq!(status, 401);
}

async fn expired_jwt_is_refused(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.access_ttl = Duration::from_secs(1)).await;
    let (_, token) = app.user_with_role(Role::User).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = app
        .post(BEARER_ROUTE, Some(&token), json!({"password": PASSWORD}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
}

async fn refresh(app: &TestApp, token: &str) -> (u16, Value) {
    app.post("/api/auth/refresh", None, json!({"refresh_token": token}))
        .await
}

/// Each refresh retires the token it used; replaying a retired one signs out the whole
/// family, including the token that replaced it, but not other logins.
async fn refresh_rotates_and_reuse_revokes_the_family(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;
    let (_, first) = login(&app, &email, PASSWORD).await;
    let (_, other_login) = login(&app, &email, PASSWORD).await;
    let r1 = first["refresh_token"].as_str().unwrap();

    let (status, second) = refresh(&app, r1).await;
    assert_eq!(status, 200, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2);
    assert_eq!(second["token_type"], "Bearer");
    assert_eq!(second["user"]["email"], email);
    let access = second["access_token"].as_str().unwrap();
    assert_eq!(
        app.post(BEARER_ROUTE, Some(access), json!({"password": PASSWORD}))
            .await
            .0,
        200
    );

    let (status, body) = refresh(&app, r1).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    let (status, body) = refresh(&app, r2).await;
    assert_eq!(status, 401, "the replacement is revoked too: {body}");
    assert_eq!(body["error"]["code"], "refresh_token_reused");

    let (status, _) = refresh(&app, other_login["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "another login's family is unaffected");
    assert!(
        auth_audit(&app)
            .await
            .iter()
            .any(|a| a.starts_with("auth.refresh_reuse 401"))
    );
}

async fn unknown_and_expired_refresh_tokens_are_refused(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.refresh_ttl = Duration::from_secs(1)).await;
    let (status, body) = refresh(&app, "made-up").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_refresh_token");
    let (status, body) = app.post("/api/auth/refresh", None, json!({})).await;
    assert_eq!(status, 401, "no token at all: {body}");

    let email = verified_user(&app).await;
    let (_, tokens) = login(&app, &email, PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = refresh(&app, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_refresh_token");
}

/// The browser UI keeps the refresh token only in the httpOnly cookie and refreshes with
/// no body at all.
async fn refresh_with_the_cookie(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;
    let resp = post_raw(
        &app,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let set = refresh_cookie(&resp);
    for attr in [
        "Path=/api/auth",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=2592000",
    ] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains("Secure"), "plain http: {set}");
    let body: Value = resp.json().await.unwrap();
    let cookie = cookie_value(&set);
    assert_eq!(cookie, body["refresh_token"].as_str().unwrap());

    let resp = post_raw(&app, "/api/auth/refresh", Some(&cookie), None).await;
    assert_eq!(resp.status(), 200);
    let next = cookie_value(&refresh_cookie(&resp));
    assert_ne!(next, cookie);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["refresh_token"].as_str().unwrap(), next);

    // A JSON body without refresh_token also falls back to the cookie.
    let resp = post_raw(&app, "/api/auth/refresh", Some(&next), Some(json!({}))).await;
    assert_eq!(resp.status(), 200);
    let latest = cookie_value(&refresh_cookie(&resp));

    // Replaying the first cookie revokes the family and deletes the cookie.
    let resp = post_raw(&app, "/api/auth/refresh", Some(&cookie), None).await;
    assert_eq!(resp.status(), 401);
    assert!(refresh_cookie(&resp).contains("Max-Age=0"));
    let resp = post_raw(&app, "/api/auth/refresh", Some(&latest), None).await;
    assert_eq!(resp.status(), 401);
}

async fn cookie_is_secure_behind_https(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.public_url = "https://corral.example.com".into()
    })
    .await;
    let email = verified_user(&app).await;
    let resp = post_raw(
        &app,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(refresh_cookie(&resp).ends_with("; Secure"));
}

async fn logout_ends_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;

    // By body.
    let (_, tokens) = login(&app, &email, PASSWORD).await;
    let r = tokens["refresh_token"].as_str().unwrap();
    let (status, _) = app
        .post("/api/auth/logout", None, json!({"refresh_token": r}))
        .await;
    assert_eq!(status, 204);
    assert_eq!(refresh(&app, r).await.0, 401);

    // By cookie, with no body: the cookie is deleted.
    let (_, tokens) = login(&app, &email, PASSWORD).await;
    let r = tokens["refresh_token"].as_str().unwrap();
    let resp = post_raw(&app, "/api/auth/logout", Some(r), None).await;
    assert_eq!(resp.status(), 204);
    assert!(refresh_cookie(&resp).contains("Max-Age=0"));
    assert_eq!(refresh(&app, r).await.0, 401);

    // By access token alone: its own session ends, others stay.
    let (_, mine) = login(&app, &email, PASSWORD).await;
    let (_, other) = login(&app, &email, PASSWORD).await;
    let access = mine["access_token"].as_str().unwrap();
    let (status, _) = app.post("/api/auth/logout", Some(access), json!({})).await;
    assert_eq!(status, 204);
    assert_eq!(
        refresh(&app, mine["refresh_token"].as_str().unwrap())
            .await
            .0,
        401
    );
    assert_eq!(
        refresh(&app, other["refresh_token"].as_str().unwrap())
            .await
            .0,
        200
    );

    // Logging out twice is still fine.
    let (status, _) = app
        .post("/api/auth/logout", None, json!({"refresh_token": r}))
        .await;
    assert_eq!(status, 204);
    assert!(
        auth_audit(&app)
            .await
            .iter()
            .any(|a| a == "auth.logout 204")
    );
}

async fn logout_everywhere(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;
    let (_, a) = login(&app, &email, PASSWORD).await;
    let (_, b) = login(&app, &email, PASSWORD).await;

    let (status, body) = app
        .post("/api/auth/logout", None, json!({"all": true}))
        .await;
    assert_eq!(status, 401, "`all` needs a bearer token: {body}");

    let access = a["access_token"].as_str().unwrap();
    let (status, _) = app
        .post("/api/auth/logout", Some(access), json!({"all": true}))
        .await;
    assert_eq!(status, 204);
    for tokens in [&a, &b] {
        assert_eq!(
            refresh(&app, tokens["refresh_token"].as_str().unwrap())
                .await
                .0,
            401
        );
    }
    assert!(
        auth_audit(&app)
            .await
            .contains(&"auth.logout 204 all revoked_api_keys=0".to_string())
    );
}

async fn reset_password_flow(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = verified_user(&app).await;
    let (_, session) = login(&app, &email, PASSWORD).await;
    // A lockout is lifted by the reset.
    for _ in 0..5 {
        login(&app, &email, "WrongPass123!").await;
    }
    assert_eq!(login(&app, &email, PASSWORD).await.0, 429);

    let stranger = unique_email("stranger");
    let (status, unknown) = app
        .post("/api/auth/reset-password", None, json!({"email": stranger}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(mails_to(&app, &stranger).await, 0);
    let (status, known) = app
        .post("/api/auth/reset-password", None, json!({"email": email}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        known, unknown,
        "the answer must not tell who has an account"
    );
    assert_eq!(known["status"], "reset_sent");
    let token = mailed_token(&app, &email, "reset-password").await;

    let confirm = |password: &str, confirm: &str| json!({"token": token, "password": password, "confirmPassword": confirm});
    let (status, body) = app
        .post(
            "/api/auth/reset-password/confirm",
            None,
            confirm("weakpass", "weakpass"),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "weak_password");
    let (status, body) = app
        .post(
            "/api/auth/reset-password/confirm",
            None,
            confirm(NEW_PASSWORD, PASSWORD),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "password_mismatch");

    // The refused attempts did not spend the token.
    let (status, body) = app
        .post(
            "/api/auth/reset-password/confirm",
            None,
            confirm(NEW_PASSWORD, NEW_PASSWORD),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": "password_reset"}));
    let (status, body) = app
        .post(
            "/api/auth/reset-password/confirm",
            None,
            confirm(NEW_PASSWORD, NEW_PASSWORD),
        )
        .await;
    assert_eq!(status, 400, "single use");
    assert_eq!(body["error"]["code"], "invalid_token");

    assert_eq!(
        refresh(&app, session["refresh_token"].as_str().unwrap())
            .await
            .0,
        401,
        "every session was signed out"
    );
    assert_eq!(login(&app, &email, PASSWORD).await.0, 401);
    assert_eq!(login(&app, &email, NEW_PASSWORD).await.0, 200);
    let audit = auth_audit(&app).await;
    assert!(audit.contains(&"auth.reset_request 202".to_string()));
    assert!(audit.contains(&"auth.reset_request 202 unknown_email".to_string()));
    assert!(audit.contains(&"auth.reset_confirm 200 revoked_api_keys=0".to_string()));
}

/// A reset proves the mailbox, so it also verifies an address that never was.
async fn reset_verifies_the_address(backend: Backend) {
    let app = spawn_app(backend).await;
    let email = unique_email("pending");
    assert_eq!(signup(&app, &email, PASSWORD).await.0, 202);
    app.post("/api/auth/reset-password", None, json!({"email": email}))
        .await;
    let token = mailed_token(&app, &email, "reset-password").await;
    let (status, _) = app
        .post(
            "/api/auth/reset-password/confirm",
            None,
            json!({"token": token, "password": NEW_PASSWORD, "confirmPassword": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = login(&app, &email, NEW_PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["email_verified"], true);
}

async fn setup_creates_the_first_admin_once(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.setup_token = Some("setup-secret".into())).await;
    let setup = |token: &str, email: &str| {
        json!({"setup_token": token, "email": email, "password": PASSWORD,
               "confirmPassword": PASSWORD})
    };
    let admin = unique_email("admin");
    let (status, body) = app
        .post("/api/auth/setup", None, setup("wrong", &admin))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_setup_token");

    let (status, body) = app
        .post("/api/auth/setup", None, setup("setup-secret", &admin))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["user"]["role"], "admin");
    assert_eq!(body["user"]["email_verified"], true);
    assert_eq!(body["token_type"], "Bearer");
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        app.post(BEARER_ROUTE, Some(access), json!({"password": PASSWORD}))
            .await
            .0,
        200
    );

    let (status, body) = app
        .post(
            "/api/auth/setup",
            None,
            setup("setup-secret", &unique_email("second")),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "setup_closed");
    assert_eq!(app.state.store.count_users().await.unwrap(), 1);
    assert_eq!(login(&app, &admin, PASSWORD).await.0, 200);
}

async fn setup_without_a_token_is_closed(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app
        .post(
            "/api/auth/setup",
            None,
            json!({"setup_token": "", "email": unique_email("admin"), "password": PASSWORD,
                   "confirmPassword": PASSWORD}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "setup_closed");
    assert_eq!(app.state.store.count_users().await.unwrap(), 0);
}

both_backends!(
    weak_password_is_rejected_naming_the_rule,
    mismatch_and_bad_email_are_rejected,
    signup_verify_then_login,
    bad_verification_token_is_refused,
    signup_with_a_taken_address_looks_the_same,
    signup_can_be_disabled,
    resend_verification_always_accepts,
    wrong_password_and_unknown_email_read_the_same,
    five_failures_lock_the_account,
    lockout_expires_and_success_clears_failures,
    logins_are_rate_limited_per_account,
    disabled_account_cannot_log_in,
    tampered_jwt_is_refused,
    expired_jwt_is_refused,
    refresh_rotates_and_reuse_revokes_the_family,
    unknown_and_expired_refresh_tokens_are_refused,
    refresh_with_the_cookie,
    cookie_is_secure_behind_https,
    logout_ends_the_session,
    logout_everywhere,
    reset_password_flow,
    reset_verifies_the_address,
    setup_creates_the_first_admin_once,
    setup_without_a_token_is_closed,
);

#[tokio::test]
async fn openapi_documents_the_auth_routes() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, doc) = app.get("/api/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/api/auth/signup",
        "/api/auth/verify",
        "/api/auth/resend-verification",
        "/api/auth/login",
        "/api/auth/mfa/verify",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/api/auth/reset-password",
        "/api/auth/reset-password/confirm",
        "/api/auth/setup",
        "/api/auth/mfa/enroll",
        "/api/auth/mfa/confirm",
        "/api/auth/mfa/disable",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path}");
    }
    let signup = &doc["components"]["schemas"]["SignupRequest"]["properties"];
    assert!(signup["confirmPassword"].is_object(), "{signup}");
}
