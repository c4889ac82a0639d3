//! Role limits and request limits: who may not do what, and malformed or oversized
//! requests get a JSON 4xx, never a 500.

mod common;

use common::{Backend, PASSWORD, TestApp, spawn_app};
use corral_core::Role;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// Sends a raw request and returns the status and the body parsed as JSON (or a string).
async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path)).body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn profile_id(app: &TestApp, token: &str) -> String {
    let (status, me) = app.get("/api/user/profile", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    me["id"].as_str().unwrap().to_string()
}

/// Every admin route, for a caller whose role is not admin: 403 and nothing changes.
async fn assert_no_admin_access(app: &TestApp, token: &str, victim: &str) {
    let user = format!("/api/admin/users/{victim}");
    let attempts = [
        app.get("/api/admin/users", Some(token)).await,
        app.get("/api/admin/audit", Some(token)).await,
        app.get("/api/admin/outbox", Some(token)).await,
        app.post(
            "/api/admin/users",
            Some(token),
            json!({"email": "sneaky@example.com", "password": PASSWORD, "role": "admin"}),
        )
        .await,
        app.put(&user, Some(token), json!({"role": "viewer"})).await,
        app.put(&user, Some(token), json!({"disabled": true})).await,
        app.post(&format!("{user}/lock"), Some(token), json!({}))
            .await,
        app.post(&format!("{user}/unlock"), Some(token), json!({}))
            .await,
        app.delete(&user, Some(token)).await,
    ];
    for (i, (status, body)) in attempts.into_iter().enumerate() {
        assert_eq!(status, 403, "attempt {i}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "attempt {i}");
    }
}

async fn viewer_and_user_cannot_administer(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let admin_id = profile_id(&app, &admin).await;
    let (_, viewer) = app.user_with_role(Role::Viewer).await;
    let (_, user) = app.user_with_role(Role::User).await;
    let user_id = profile_id(&app, &user).await;

    assert_no_admin_access(&app, &viewer, &user_id).await;
    assert_no_admin_access(&app, &user, &admin_id).await;
    // Non-admins cannot promote themselves either.
    assert_no_admin_access(&app, &user, &user_id).await;

    let (_, users) = app.get("/api/admin/users", Some(&admin)).await;
    assert_eq!(users["total"], 3, "no account was created");
    for u in users["users"].as_array().unwrap() {
        assert_eq!(u["disabled"], false, "{u}");
    }
    assert_eq!(users["users"][0]["role"], "admin");
    assert_eq!(users["users"][2]["role"], "user");

    // Refused attempts are in the audit log, with who tried.
    let (_, log) = app
        .get(
            &format!("/api/admin/audit?actor_id={user_id}&outcome=failure"),
            Some(&admin),
        )
        .await;
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "admin.users.list",
        "admin.audit.read",
        "admin.users.create",
        "admin.users.update",
        "admin.users.lock",
        "admin.users.delete",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
}

async fn oversized_body_is_413(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.user_with_role(Role::User).await;
    let big = json!({"display_name": "x".repeat(1024 * 1024)}).to_string();
    for path in ["/api/user/profile", "/api/keys"] {
        let method = if path == "/api/keys" {
            Method::POST
        } else {
            Method::PUT
        };
        let (status, body) = raw(
            &app,
            method,
            path,
            Some(&token),
            Some("application/json"),
            big.clone(),
        )
        .await;
        assert_eq!(status, 413, "{path}: {body}");
        assert_eq!(body["error"]["code"], "payload_too_large", "{path}");
        assert!(body["error"]["message"].is_string());
    }
    // Just under the limit is parsed (and refused for its content, not its size).
    let under = json!({"display_name": "x".repeat(1000 * 1000)}).to_string();
    let (status, body) = raw(
        &app,
        Method::PUT,
        "/api/user/profile",
        Some(&token),
        Some("application/json"),
        under,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_display_name");
}

async fn malformed_requests_are_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.user_with_role(Role::Admin).await;
    let token = Some(token.as_str());
    let json_ct = Some("application/json");

    let (status, body) = raw(
        &app,
        Method::POST,
        "/api/keys",
        token,
        json_ct,
        "{\"name\":",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json");
    let (status, body) = raw(&app, Method::PUT, "/api/user/profile", token, json_ct, "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body) = raw(
        &app,
        Method::POST,
        "/api/keys",
        token,
        Some("text/plain"),
        r#"{"name":"k"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    let (status, body) = raw(
        &app,
        Method::POST,
        "/api/keys",
        token,
        None,
        r#"{"name":"k"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");

    let (status, body) = raw(&app, Method::POST, "/api/keys", token, json_ct, "[1, 2]").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field");

    for (method, path) in [
        (Method::DELETE, "/api/keys/not-a-uuid"),
        (Method::PUT, "/api/admin/users/123"),
        (Method::POST, "/api/admin/users/zzz/lock"),
        (Method::DELETE, "/api/admin/users/not-a-uuid"),
    ] {
        let (status, body) = raw(&app, method, path, token, json_ct, "{}").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_path", "{path}");
    }
}

/// A grab bag of hostile or odd requests: none may crash a handler into a 500.
async fn nothing_is_a_500(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (_, viewer) = app.user_with_role(Role::Viewer).await;
    let ghost = Uuid::now_v7();
    let huge = u64::MAX.to_string();
    let deep = "[".repeat(10_000);
    let cases: Vec<(Method, String, Option<&str>, &str)> = vec![
        (Method::GET, "/api/user/profile".into(), Some("crl_"), ""),
        (
            Method::GET,
            "/api/user/profile".into(),
            Some("not.a.jwt"),
            "",
        ),
        (Method::GET, "/api/keys".into(), Some("Bearer"), ""),
        (
            Method::PUT,
            "/api/user/profile".into(),
            Some(&viewer),
            "null",
        ),
        (
            Method::PUT,
            "/api/user/profile".into(),
            Some(&viewer),
            "\"str\"",
        ),
        (
            Method::PUT,
            "/api/user/profile".into(),
            Some(&viewer),
            r#"{"display_name": 5}"#,
        ),
        (
            Method::PUT,
            "/api/user/profile".into(),
            Some(&viewer),
            r#"{"new_password": "Aa1!aaaaaaaa"}"#,
        ),
        (
            Method::PUT,
            "/api/user/profile".into(),
            Some(&viewer),
            "{\"display_name\": \"\\ud800\"}",
        ),
        (
            Method::POST,
            "/api/keys".into(),
            Some(&viewer),
            r#"{"name": "k", "expires_in_days": 99999999999}"#,
        ),
        (
            Method::POST,
            "/api/keys".into(),
            Some(&viewer),
            r#"{"name": "k", "expires_in_days": null}"#,
        ),
        (
            Method::DELETE,
            format!("/api/keys/{ghost}"),
            Some(&viewer),
            "",
        ),
        (
            Method::GET,
            format!("/api/admin/users?offset={huge}"),
            Some(&admin),
            "",
        ),
        (
            Method::GET,
            "/api/admin/users?offset=4294967295&limit=4294967295".into(),
            Some(&admin),
            "",
        ),
        (
            Method::GET,
            "/api/admin/users?limit=0".into(),
            Some(&admin),
            "",
        ),
        (
            Method::GET,
            "/api/admin/audit?limit=100000&before_id=-5".into(),
            Some(&admin),
            "",
        ),
        (
            Method::GET,
            "/api/admin/audit?action=%25%27%3B--&since=2001-01-01T00:00:00Z".into(),
            Some(&admin),
            "",
        ),
        (
            Method::GET,
            "/api/admin/audit?action=*[?".into(),
            Some(&admin),
            "",
        ),
        (
            Method::GET,
            "/api/admin/audit?since=yesterday".into(),
            Some(&admin),
            "",
        ),
        (
            Method::POST,
            "/api/auth/login".into(),
            None,
            r#"{"email": "a\u0000@example.com", "password": "x\u0000"}"#,
        ),
        (
            Method::POST,
            "/api/auth/reset-password".into(),
            None,
            r#"{"email": "\u0000"}"#,
        ),
        (
            Method::GET,
            "/api/admin/audit?action=auth%00".into(),
            Some(&admin),
            "",
        ),
        (
            Method::GET,
            "/api/admin/outbox?limit=0&to=%00".into(),
            Some(&admin),
            "",
        ),
        (
            Method::POST,
            "/api/admin/users".into(),
            Some(&admin),
            r#"{"email": "a@b.c", "password": "x", "role": "admin", "extra": 1}"#,
        ),
        (Method::POST, "/api/admin/users".into(), Some(&admin), &deep),
        (
            Method::PUT,
            format!("/api/admin/users/{ghost}"),
            Some(&admin),
            r#"{"role": null, "disabled": null}"#,
        ),
        (
            Method::PATCH,
            "/api/user/profile".into(),
            Some(&admin),
            "{}",
        ),
        (Method::GET, "/api/admin/users/".into(), Some(&admin), ""),
    ];
    for (method, path, token, body) in cases {
        let (status, response) = raw(
            &app,
            method.clone(),
            &path,
            token,
            Some("application/json"),
            body.to_string(),
        )
        .await;
        assert!(
            status < 500,
            "{method} {path} {body:.80}: {status} {response}"
        );
        if status >= 400 {
            assert!(
                response["error"]["code"].is_string(),
                "{method} {path}: the JSON error shape: {response}"
            );
        }
    }
}

both_backends!(
    viewer_and_user_cannot_administer,
    oversized_body_is_413,
    malformed_requests_are_400,
    nothing_is_a_500,
);
