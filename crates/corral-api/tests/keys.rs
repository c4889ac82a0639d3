mod common;

use chrono::{Duration, Utc};
use common::{Backend, PASSWORD, TestApp, spawn_app};
use corral_core::{ApiKey, Role, secret};
use serde_json::{Value, json};
use uuid::Uuid;

/// Creates a key with the real endpoint; the password is added to `body`.
async fn create_key(app: &TestApp, token: &str, mut body: Value) -> Value {
    body["password"] = json!(PASSWORD);
    let (status, created) = app.post("/api/keys", Some(token), body).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn my_id(app: &TestApp, token: &str) -> Uuid {
    let (status, me) = app.get("/api/user/profile", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    me["id"].as_str().unwrap().parse().unwrap()
}

/// Inserts a key directly, for states the API cannot produce on demand (expired, many).
async fn insert_key(
    app: &TestApp,
    owner: Uuid,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> String {
    let key = secret::new_api_key();
    app.state
        .store
        .create_api_key(&ApiKey {
            id: Uuid::now_v7(),
            owner_id: owner,
            name: "inserted".into(),
            prefix: key[..8].to_string(),
            key_hash: secret::hash(&key),
            created_at: Utc::now(),
            expires_at,
            last_used_at: None,
        })
        .await
        .unwrap();
    key
}

async fn create_list_delete(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.user_with_role(Role::User).await;

    let created = create_key(&app, &token, json!({"name": "  ci pipeline "})).await;
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("crl_") && key.len() > 40, "{created}");
    assert_eq!(created["name"], "ci pipeline");
    assert_eq!(created["prefix"], &key[..8]);
    // 90 days unless asked otherwise.
    let created_at: chrono::DateTime<Utc> =
        created["created_at"].as_str().unwrap().parse().unwrap();
    let expires_at: chrono::DateTime<Utc> =
        created["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at - created_at, Duration::days(90));
    let id = created["id"].as_str().unwrap();

    let (status, list) = app.get("/api/keys", Some(&token)).await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let listed = &list[0];
    assert_eq!(listed["id"], id);
    assert_eq!(listed["prefix"], &key[..8]);
    assert_eq!(listed["expired"], false);
    assert!(listed["last_used_at"].is_null());
    assert!(
        listed.get("key").is_none() && listed.get("key_hash").is_none(),
        "{listed}"
    );
    assert!(
        !listed.to_string().contains(&key[8..]),
        "the secret part never shows again"
    );

    let (status, body) = app.delete(&format!("/api/keys/{id}"), Some(&token)).await;
    assert_eq!(status, 204, "{body}");
    let (_, list) = app.get("/api/keys", Some(&token)).await;
    assert_eq!(list, json!([]));
    let (status, body) = app.delete(&format!("/api/keys/{id}"), Some(&token)).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

async fn key_works_as_bearer_until_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let (email, token) = app.user_with_role(Role::User).await;
    let created = create_key(&app, &token, json!({"name": "script"})).await;
    let key = created["key"].as_str().unwrap();

    let (status, me) = app.get("/api/user/profile", Some(key)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], email);
    // Recorded behind the request (the gateway's write-behind, about once a second).
    let start = std::time::Instant::now();
    loop {
        let (_, list) = app.get("/api/keys", Some(&token)).await;
        if list[0]["last_used_at"].is_string() {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "use is recorded: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Keys are for programs: they cannot mint more keys.
    let (status, body) = app
        .post("/api/keys", Some(key), json!({"name": "child"}))
        .await;
    assert_eq!(status, 403, "{body}");

    let (status, _) = app
        .delete(
            &format!("/api/keys/{}", created["id"].as_str().unwrap()),
            Some(key),
        )
        .await;
    assert_eq!(status, 204, "a key may delete itself");
    let (status, body) = app.get("/api/user/profile", Some(key)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    let (status, _) = app
        .get("/api/user/profile", Some("crl_not-a-real-key"))
        .await;
    assert_eq!(status, 401);
}

async fn expired_key_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.user_with_role(Role::User).await;
    let owner = my_id(&app, &token).await;
    let key = insert_key(&app, owner, Some(Utc::now() - Duration::seconds(1))).await;

    let (status, body) = app.get("/api/user/profile", Some(&key)).await;
    assert_eq!(status, 401, "{body}");
    let (_, list) = app.get("/api/keys", Some(&token)).await;
    assert_eq!(list[0]["expired"], true, "{list}");

    let live = insert_key(&app, owner, Some(Utc::now() + Duration::hours(1))).await;
    let (status, _) = app.get("/api/user/profile", Some(&live)).await;
    assert_eq!(status, 200);
}

async fn expiry_and_name_are_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.user_with_role(Role::User).await;

    let before = Utc::now();
    let created = create_key(
        &app,
        &token,
        json!({"name": "month", "expires_in_days": 30}),
    )
    .await;
    let expires: chrono::DateTime<Utc> = created["expires_at"].as_str().unwrap().parse().unwrap();
    let expected = before + Duration::days(30);
    assert!(
        (expires - expected).num_seconds().abs() < 60,
        "{expires} vs {expected}"
    );
    create_key(
        &app,
        &token,
        json!({"name": "decade", "expires_in_days": 3650}),
    )
    .await;
    create_key(&app, &token, json!({"name": "x".repeat(64)})).await;

    for days in [json!(0), json!(3651)] {
        let (status, body) = app
            .post(
                "/api/keys",
                Some(&token),
                json!({"name": "k", "expires_in_days": days}),
            )
            .await;
        assert_eq!(status, 400, "{days}: {body}");
        assert_eq!(body["error"]["code"], "invalid_expiry");
    }
    for days in [json!(-1), json!("10"), json!(1.5)] {
        let (status, body) = app
            .post(
                "/api/keys",
                Some(&token),
                json!({"name": "k", "expires_in_days": days}),
            )
            .await;
        assert_eq!(status, 400, "{days}: {body}");
    }
    for name in ["", "   ", &"x".repeat(65), "new\nline", "nul\u{0}"] {
        let (status, body) = app
            .post("/api/keys", Some(&token), json!({"name": name}))
            .await;
        assert_eq!(status, 400, "{name:?}: {body}");
        assert_eq!(body["error"]["code"], "invalid_name");
    }
    let (status, _) = app.post("/api/keys", Some(&token), json!({})).await;
    assert_eq!(status, 400, "name is required");

    let (_, list) = app.get("/api/keys", Some(&token)).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "refused requests created nothing"
    );
}

async fn at_most_fifty_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.user_with_role(Role::User).await;
    let owner = my_id(&app, &token).await;
    for _ in 0..49 {
        insert_key(&app, owner, None).await;
    }
    create_key(&app, &token, json!({"name": "fiftieth"})).await;
    let (status, body) = app
        .post(
            "/api/keys",
            Some(&token),
            json!({"name": "one too many", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "too_many_keys");
}

async fn keys_are_owner_scoped(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, a) = app.user_with_role(Role::User).await;
    let (b_email, b) = app.user_with_role(Role::User).await;
    let a_key = create_key(&app, &a, json!({"name": "a's key"})).await;
    let a_key_id = a_key["id"].as_str().unwrap();
    create_key(&app, &b, json!({"name": "b's key"})).await;

    let (_, b_list) = app.get("/api/keys", Some(&b)).await;
    let b_list = b_list.as_array().unwrap();
    assert_eq!(b_list.len(), 1);
    assert_eq!(b_list[0]["name"], "b's key");

    // B cannot tell A's key from a missing one, and cannot delete it.
    let (status, body) = app.delete(&format!("/api/keys/{a_key_id}"), Some(&b)).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = app
        .delete(&format!("/api/keys/{}", Uuid::now_v7()), Some(&b))
        .await;
    assert_eq!(status, 404);
    let (status, me) = app
        .get("/api/user/profile", Some(a_key["key"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "A's key still works");
    assert_ne!(me["email"], b_email);
    let (_, a_list) = app.get("/api/keys", Some(&a)).await;
    assert_eq!(a_list.as_array().unwrap().len(), 1);
}

async fn key_acts_with_its_owners_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (_, viewer) = app.user_with_role(Role::Viewer).await;
    // Every role manages its own keys, viewers included.
    let admin_key = create_key(&app, &admin, json!({"name": "ops"})).await;
    let viewer_key = create_key(&app, &viewer, json!({"name": "dashboard"})).await;

    let (status, _) = app
        .get("/api/admin/users", Some(admin_key["key"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
    let viewer_key = viewer_key["key"].as_str().unwrap();
    let (status, _) = app.get("/api/admin/users", Some(viewer_key)).await;
    assert_eq!(status, 403);
    let (status, _) = app
        .post(
            "/api/admin/users",
            Some(viewer_key),
            json!({"email": "x@example.com", "password": common::PASSWORD, "role": "admin"}),
        )
        .await;
    assert_eq!(status, 403);
}

async fn key_of_a_locked_or_deleted_owner_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (_, token) = app.user_with_role(Role::User).await;
    let owner = my_id(&app, &token).await;
    let key = create_key(&app, &token, json!({"name": "k"})).await;
    let key = key["key"].as_str().unwrap();

    let (status, _) = app
        .post(
            &format!("/api/admin/users/{owner}/lock"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.get("/api/user/profile", Some(key)).await;
    assert_eq!(status, 401, "a locked owner's keys stop working");

    let (status, _) = app
        .delete(&format!("/api/admin/users/{owner}"), Some(&admin))
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/api/user/profile", Some(key)).await;
    assert_eq!(status, 401);
    assert!(
        app.state
            .store
            .api_key_by_hash(&secret::hash(key))
            .await
            .unwrap()
            .is_none(),
        "deleting a user deletes their keys"
    );
}

both_backends!(
    create_list_delete,
    key_works_as_bearer_until_deleted,
    expired_key_is_refused,
    expiry_and_name_are_validated,
    at_most_fifty_keys,
    keys_are_owner_scoped,
    key_acts_with_its_owners_role,
    key_of_a_locked_or_deleted_owner_is_refused,
);
