mod common;

use common::{Backend, PASSWORD, spawn_app};
use corral_core::{Role, secret};
use serde_json::json;

const NEW_PASSWORD: &str = "BetterPass456?";

async fn profile_is_the_callers_own(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a_email, a) = app.user_with_role(Role::User).await;
    let (b_email, b) = app.user_with_role(Role::Viewer).await;

    let (status, body) = app.get("/api/user/profile", Some(&a)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["email"], a_email);
    assert_eq!(body["role"], "user");
    assert_eq!(body["email_verified"], true);
    assert_eq!(body["mfa_enabled"], false);
    assert_eq!(body["disabled"], false);
    assert!(body.get("password_hash").is_none(), "{body}");
    assert!(body.get("totp_secret").is_none(), "{body}");

    // The route has no id: whatever A sends, A gets A, and B gets B.
    let (_, body) = app.get("/api/user/profile", Some(&b)).await;
    assert_eq!(body["email"], b_email);
    assert_eq!(body["role"], "viewer");

    let (status, body) = app.get("/api/user/profile", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
}

async fn display_name_is_updated_and_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    // Viewers are read-only for platform resources, but their own profile is theirs.
    let (_, token) = app.user_with_role(Role::Viewer).await;

    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({"display_name": "  Ada Lovelace  "}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "Ada Lovelace");
    let (_, body) = app.get("/api/user/profile", Some(&token)).await;
    assert_eq!(body["display_name"], "Ada Lovelace");

    let longest = "é".repeat(100);
    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({"display_name": longest}),
        )
        .await;
    assert_eq!(
        status, 200,
        "100 characters are allowed, whatever their bytes: {body}"
    );

    for bad in [
        "",
        "   ",
        &"x".repeat(101),
        "tab\there",
        "bell\u{7}",
        "nl\nx",
    ] {
        let (status, body) = app
            .put(
                "/api/user/profile",
                Some(&token),
                json!({"display_name": bad}),
            )
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_display_name", "{bad:?}");
    }
    let (_, body) = app.get("/api/user/profile", Some(&token)).await;
    assert_eq!(
        body["display_name"], longest,
        "refused updates change nothing"
    );

    // A misspelt field is an error, not a silent no-op.
    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({"displayName": "x"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field");

    // Nothing to change is fine and returns the profile.
    let (status, body) = app.put("/api/user/profile", Some(&token), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], longest);
}

async fn password_change_is_checked(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;
    let change = |current: &str, new: &str, confirm: &str| json!({"current_password": current, "new_password": new, "confirmPassword": confirm});

    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            change(PASSWORD, "weakpass", "weakpass"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "weak_password");
    let rules = body["error"]["details"]["failed_rules"].as_array().unwrap();
    assert!(
        rules.contains(&json!("uppercase")) && rules.contains(&json!("digit")),
        "{body}"
    );
    assert!(rules.contains(&json!("symbol")), "{body}");

    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            change(PASSWORD, NEW_PASSWORD, "BetterPass456!"),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "password_mismatch");

    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({"new_password": NEW_PASSWORD, "confirmPassword": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "wrong_password");

    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            change("NotMyPass123!", NEW_PASSWORD, NEW_PASSWORD),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "wrong_password");
    let failures = app
        .state
        .store
        .login_failures(&email)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        failures.count, 2,
        "a missing or wrong current password counts like a failed login"
    );

    // The old password still works: nothing above changed it.
    app.login(&email, PASSWORD).await;
}

async fn password_change_revokes_sessions(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;
    // Another device's session, whose refresh token must stop working.
    let (status, other) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{other}");
    let refresh = other["refresh_token"].as_str().unwrap();

    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({
                "display_name": "Renamed",
                "current_password": PASSWORD,
                "new_password": NEW_PASSWORD,
                "confirmPassword": NEW_PASSWORD,
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "Renamed");

    let session = app
        .state
        .store
        .session_by_hash(&secret::hash(refresh))
        .await
        .unwrap()
        .expect("the session row is kept, revoked");
    assert!(session.revoked_at.is_some(), "{session:?}");
    let (status, body) = app
        .post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 401, "{body}");

    let (status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_ne!(status, 200, "the old password no longer works");
    app.login(&email, NEW_PASSWORD).await;
}

async fn wrong_current_passwords_lock_the_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;
    let guess = |n: u32| {
        json!({
            "current_password": format!("Guess{n}Pass!"),
            "new_password": NEW_PASSWORD,
            "confirmPassword": NEW_PASSWORD,
        })
    };
    let threshold = app.state.settings.lockout_threshold;
    for n in 1..threshold {
        let (status, body) = app.put("/api/user/profile", Some(&token), guess(n)).await;
        assert_eq!(status, 400, "guess {n}: {body}");
        assert_eq!(body["error"]["code"], "wrong_password");
    }
    let (status, body) = app
        .put("/api/user/profile", Some(&token), guess(threshold))
        .await;
    assert_eq!(status, 429, "the last allowed guess locks: {body}");
    assert_eq!(body["error"]["code"], "account_locked");
    // Locked now: even the right password is refused until the lock expires, and login
    // is locked too, so a stolen access token cannot be used to guess the password.
    let resp = app
        .http
        .put(app.url("/api/user/profile"))
        .bearer_auth(&token)
        .json(&json!({
            "current_password": PASSWORD,
            "new_password": NEW_PASSWORD,
            "confirmPassword": NEW_PASSWORD,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0 && retry_after <= 15 * 60, "{retry_after}");
    let (status, _) = app
        .post(
            "/api/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_ne!(status, 200, "login is locked as well");
}

async fn api_keys_cannot_change_the_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;
    let (status, created) = app
        .post(
            "/api/keys",
            Some(&token),
            json!({"name": "script", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap();

    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(key),
            json!({
                "current_password": PASSWORD,
                "new_password": NEW_PASSWORD,
                "confirmPassword": NEW_PASSWORD,
            }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    app.login(&email, PASSWORD).await;

    // The rest of the profile is fair game for a program.
    let (status, body) = app
        .put(
            "/api/user/profile",
            Some(key),
            json!({"display_name": "bot"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["display_name"], "bot");
}

both_backends!(
    profile_is_the_callers_own,
    display_name_is_updated_and_validated,
    password_change_is_checked,
    password_change_revokes_sessions,
    wrong_current_passwords_lock_the_account,
    api_keys_cannot_change_the_password,
);
