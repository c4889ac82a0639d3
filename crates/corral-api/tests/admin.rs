mod common;

use chrono::Utc;
use common::{Backend, PASSWORD, TestApp, spawn_app};
use corral_core::{
    ComputeSpec, ComputeType, Desired, Instance, InstanceSettings, OutboxMessage, Role, State,
};
use serde_json::{Value, json};
use uuid::Uuid;

async fn me(app: &TestApp, token: &str) -> Value {
    let (status, me) = app.get("/api/user/profile", Some(token)).await;
    assert_eq!(status, 200, "{me}");
    me
}

async fn audit(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/admin/audit{query}"), Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

async fn login_status(app: &TestApp, email: &str, password: &str) -> u16 {
    app.post(
        "/api/auth/login",
        None,
        json!({"email": email, "password": password}),
    )
    .await
    .0
}

async fn list_users_pages(backend: Backend) {
    let app = spawn_app(backend).await;
    let (admin_email, admin) = app.user_with_role(Role::Admin).await;
    let (user_email, _) = app.user_with_role(Role::User).await;
    let (viewer_email, _) = app.user_with_role(Role::Viewer).await;

    let (status, body) = app.get("/api/admin/users", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 3);
    let emails: Vec<&str> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails,
        [&admin_email, &user_email, &viewer_email],
        "oldest first"
    );
    assert!(body["users"][0].get("password_hash").is_none());

    let (_, page) = app
        .get("/api/admin/users?offset=1&limit=1", Some(&admin))
        .await;
    assert_eq!(page["total"], 3);
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    assert_eq!(page["users"][0]["email"], user_email);

    let (status, body) = app.get("/api/admin/users?limit=lots", Some(&admin)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");
}

async fn create_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;

    let (status, body) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": " New.Person@Example.com ", "password": PASSWORD, "role": "viewer",
                   "display_name": "New Person"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["email"], "new.person@example.com");
    assert_eq!(body["role"], "viewer");
    assert_eq!(body["display_name"], "New Person");
    assert_eq!(
        body["email_verified"], true,
        "admin-created accounts are verified"
    );
    let token = app.login("new.person@example.com", PASSWORD).await;
    assert_eq!(me(&app, &token).await["role"], "viewer");

    let (status, body) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": "new.person@example.com", "password": PASSWORD, "role": "user"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    let (status, body) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": "weak@example.com", "password": "password", "role": "user"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "weak_password");
    assert!(body["error"]["details"]["failed_rules"].is_array());

    let (status, body) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": "not-an-email", "password": PASSWORD, "role": "user"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_email");

    let (status, _) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": "root@example.com", "password": PASSWORD, "role": "root"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": "n@example.com", "password": PASSWORD, "role": "user",
                   "display_name": "\u{7}"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_display_name");

    let (_, users) = app.get("/api/admin/users", Some(&admin)).await;
    assert_eq!(users["total"], 2, "only the valid request created a user");
}

async fn role_change_applies_to_existing_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (_, token) = app.user_with_role(Role::User).await;
    let id = me(&app, &token).await["id"].as_str().unwrap().to_string();

    let (status, _) = app.get("/api/admin/users", Some(&token)).await;
    assert_eq!(status, 403);
    let (status, body) = app
        .put(
            &format!("/api/admin/users/{id}"),
            Some(&admin),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "admin");
    // The same access token, issued while the user was a `user`, now acts as admin.
    let (status, _) = app.get("/api/admin/users", Some(&token)).await;
    assert_eq!(status, 200);

    let (status, body) = app
        .put(
            &format!("/api/admin/users/{id}"),
            Some(&admin),
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(me(&app, &token).await["role"], "viewer");
    let (status, _) = app.get("/api/admin/users", Some(&token)).await;
    assert_eq!(status, 403, "and back down at once");

    let (status, body) = app
        .put(
            &format!("/api/admin/users/{id}"),
            Some(&admin),
            json!({"role": "owner"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .put(
            &format!("/api/admin/users/{id}"),
            Some(&admin),
            json!({"locked": true}),
        )
        .await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");
}

async fn lock_and_unlock(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (email, token) = app.user_with_role(Role::User).await;
    let id = me(&app, &token).await["id"].as_str().unwrap().to_string();

    let (status, body) = app
        .post(
            &format!("/api/admin/users/{id}/lock"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disabled"], true);
    let (status, body) = app.get("/api/user/profile", Some(&token)).await;
    assert_eq!(
        status, 401,
        "a locked user's token stops working at once: {body}"
    );
    assert_ne!(
        login_status(&app, &email, PASSWORD).await,
        200,
        "login refused"
    );

    let (status, body) = app
        .post(
            &format!("/api/admin/users/{id}/unlock"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disabled"], false);
    let token = app.login(&email, PASSWORD).await;

    // The PUT form does the same, and unlocking also lifts a failed-login lockout.
    let (status, body) = app
        .put(
            &format!("/api/admin/users/{id}"),
            Some(&admin),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.get("/api/user/profile", Some(&token)).await.0, 401);
    let lock_for = chrono::Duration::minutes(15);
    for _ in 0..app.state.settings.lockout_threshold {
        app.state
            .store
            .count_login_attempt(
                &email,
                app.state.settings.lockout_threshold,
                lock_for,
                Utc::now(),
            )
            .await
            .unwrap();
    }
    let failures = app
        .state
        .store
        .login_failures(&email)
        .await
        .unwrap()
        .unwrap();
    assert!(
        failures.locked_until.is_some_and(|t| t > Utc::now()),
        "{failures:?}"
    );
    let (status, body) = app
        .put(
            &format!("/api/admin/users/{id}"),
            Some(&admin),
            json!({"disabled": false}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        app.state
            .store
            .login_failures(&email)
            .await
            .unwrap()
            .is_none()
    );
    app.login(&email, PASSWORD).await;
}

async fn delete_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (email, token) = app.user_with_role(Role::User).await;
    let id = me(&app, &token).await["id"].as_str().unwrap().to_string();

    let (status, body) = app
        .delete(&format!("/api/admin/users/{id}"), Some(&admin))
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(app.get("/api/user/profile", Some(&token)).await.0, 401);
    assert_ne!(login_status(&app, &email, PASSWORD).await, 200);
    let (_, users) = app.get("/api/admin/users", Some(&admin)).await;
    assert_eq!(users["total"], 1);

    let (status, body) = app
        .delete(&format!("/api/admin/users/{id}"), Some(&admin))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

async fn user_who_owns_instances_is_not_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (_, token) = app.user_with_role(Role::User).await;
    let id: Uuid = me(&app, &token).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let store = &app.state.store;
    let model = corral_core::catalog::builtin_models().remove(0);
    store.upsert_model(&model).await.unwrap();
    let now = Utc::now();
    store
        .create_instance(
            &Instance {
                id: Uuid::now_v7(),
                owner_id: id,
                model_id: model.id.clone(),
                driver: "local".into(),
                compute: ComputeSpec {
                    compute_type: ComputeType::Local,
                    cpu: 1.0,
                    memory: 1024,
                    gpu_count: 0,
                    instance_type: None,
                    spot: false,
                },
                settings: InstanceSettings::default(),
                desired: Desired::Running,
                state: State::Pending,
                state_reason: None,
                target_replicas: 1,
                created_at: now,
                updated_at: now,
                last_activity_at: now,
                running_since: None,
                running_seconds: 0,
                team_id: None,
            },
            &corral_core::Admission::unlimited(),
        )
        .await
        .unwrap();

    // Their compute must be stopped and deleted first, or it would be orphaned.
    let (status, body) = app
        .delete(&format!("/api/admin/users/{id}"), Some(&admin))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("instance"),
        "{body}"
    );
    assert_eq!(app.get("/api/user/profile", Some(&token)).await.0, 200);
}

async fn unknown_users_are_404(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let ghost = Uuid::now_v7();
    for (status, body) in [
        app.put(
            &format!("/api/admin/users/{ghost}"),
            Some(&admin),
            json!({"role": "user"}),
        )
        .await,
        app.post(
            &format!("/api/admin/users/{ghost}/lock"),
            Some(&admin),
            json!({}),
        )
        .await,
        app.post(
            &format!("/api/admin/users/{ghost}/unlock"),
            Some(&admin),
            json!({}),
        )
        .await,
        app.delete(&format!("/api/admin/users/{ghost}"), Some(&admin))
            .await,
    ] {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
}

async fn admin_cannot_remove_their_own_access(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let id = me(&app, &admin).await["id"].as_str().unwrap().to_string();
    let user = format!("/api/admin/users/{id}");

    for (status, body) in [
        app.put(&user, Some(&admin), json!({"role": "user"})).await,
        app.put(&user, Some(&admin), json!({"role": "viewer"}))
            .await,
        app.put(&user, Some(&admin), json!({"disabled": true}))
            .await,
        app.post(&format!("{user}/lock"), Some(&admin), json!({}))
            .await,
        app.delete(&user, Some(&admin)).await,
    ] {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "self_change");
    }
    let me_now = me(&app, &admin).await;
    assert_eq!(me_now["role"], "admin");
    assert_eq!(me_now["disabled"], false);

    // Changes that keep their access are fine.
    let (status, body) = app.put(&user, Some(&admin), json!({"role": "admin"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post(&format!("{user}/unlock"), Some(&admin), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn actions_are_audited_and_filterable(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let admin_id = me(&app, &admin).await["id"].as_str().unwrap().to_string();
    let (user_email, token) = app.user_with_role(Role::User).await;
    let user_id = me(&app, &token).await["id"].as_str().unwrap().to_string();
    let start = Utc::now();

    let (_, created) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": "audited@example.com", "password": PASSWORD, "role": "user"}),
        )
        .await;
    let created_id = created["id"].as_str().unwrap().to_string();
    app.put(
        &format!("/api/admin/users/{user_id}"),
        Some(&admin),
        json!({"role": "viewer"}),
    )
    .await;
    app.post(
        &format!("/api/admin/users/{user_id}/lock"),
        Some(&admin),
        json!({}),
    )
    .await;
    app.post(
        &format!("/api/admin/users/{user_id}/unlock"),
        Some(&admin),
        json!({}),
    )
    .await;
    app.delete(&format!("/api/admin/users/{created_id}"), Some(&admin))
        .await;
    app.delete(&format!("/api/admin/users/{admin_id}"), Some(&admin))
        .await; // self_change: a failure

    let entries = audit(&app, &admin, "?action=admin.users.").await;
    let actions: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("admin.users.delete", admin_id.as_str(), "failure"),
            ("admin.users.delete", created_id.as_str(), "success"),
            ("admin.users.unlock", user_id.as_str(), "success"),
            ("admin.users.lock", user_id.as_str(), "success"),
            ("admin.users.update", user_id.as_str(), "success"),
            ("admin.users.create", created_id.as_str(), "success"),
        ],
        "newest first"
    );
    for e in &entries {
        assert_eq!(e["actor_id"], admin_id.as_str(), "{e}");
        assert!(e["actor_email"].is_string(), "{e}");
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
        assert!(e["at"].is_string(), "{e}");
    }
    assert!(
        entries[4]["detail"]
            .as_str()
            .unwrap()
            .contains("role=viewer"),
        "{}",
        entries[4]
    );

    let failures = audit(&app, &admin, "?action=admin.&outcome=failure").await;
    assert_eq!(failures.len(), 1);
    assert!(failures[0]["detail"].as_str().unwrap().starts_with("400"));

    // The lock ended the user's sessions, and with them that access token.
    assert_eq!(app.get("/api/user/profile", Some(&token)).await.0, 401);
    let token = app.login(&user_email, PASSWORD).await;
    let (status, _) = app
        .put(
            "/api/user/profile",
            Some(&token),
            json!({"display_name": "Me"}),
        )
        .await;
    assert_eq!(status, 200);
    let by_user = audit(&app, &admin, &format!("?actor_id={user_id}")).await;
    assert!(!by_user.is_empty());
    assert!(by_user.iter().all(|e| e["actor_id"] == user_id.as_str()));
    assert_eq!(by_user[0]["action"], "profile.update");
    assert_eq!(by_user[0]["target"], user_id.as_str());

    let limited = audit(&app, &admin, "?action=admin.users.&limit=2").await;
    assert_eq!(limited.len(), 2);
    let before = limited[1]["id"].as_i64().unwrap();
    let older = audit(
        &app,
        &admin,
        &format!("?action=admin.users.&before_id={before}"),
    )
    .await;
    assert_eq!(older.len(), 4);
    assert!(older.iter().all(|e| e["id"].as_i64().unwrap() < before));

    let since =
        (start - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        audit(&app, &admin, &format!("?action=admin.users.&since={since}"))
            .await
            .len(),
        6
    );
    let future = (Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert!(
        audit(&app, &admin, &format!("?since={future}"))
            .await
            .is_empty()
    );

    let (status, body) = app
        .get("/api/admin/audit?outcome=maybe", Some(&admin))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .get("/api/admin/audit?actor_id=nope", Some(&admin))
        .await;
    assert_eq!(status, 400, "{body}");
}

async fn outbox_is_readable(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    for to in ["a@example.com", "b@example.com", "a@example.com"] {
        app.state
            .store
            .push_outbox(&OutboxMessage {
                id: Uuid::now_v7(),
                to: to.into(),
                subject: "Verify your e-mail".into(),
                body: "https://corral.test/verify?token=abc".into(),
                created_at: Utc::now(),
            })
            .await
            .unwrap();
    }
    let (status, body) = app.get("/api/admin/outbox", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 3);
    let (_, body) = app
        .get("/api/admin/outbox?to=A@example.com&limit=1", Some(&admin))
        .await;
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["to"], "a@example.com");
    assert_eq!(messages[0]["subject"], "Verify your e-mail");
    assert!(messages[0]["body"].is_string() && messages[0]["created_at"].is_string());
}

both_backends!(
    list_users_pages,
    create_user,
    role_change_applies_to_existing_tokens,
    lock_and_unlock,
    delete_user,
    user_who_owns_instances_is_not_deleted,
    unknown_users_are_404,
    admin_cannot_remove_their_own_access,
    actions_are_audited_and_filterable,
    outbox_is_readable,
);

#[tokio::test]
async fn openapi_documents_these_routes() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, doc) = app.get("/api/openapi.json", None).await;
    let paths = &doc["paths"];
    for (path, method) in [
        ("/api/user/profile", "get"),
        ("/api/user/profile", "put"),
        ("/api/keys", "post"),
        ("/api/keys", "get"),
        ("/api/keys/{id}", "delete"),
        ("/api/admin/users", "get"),
        ("/api/admin/users", "post"),
        ("/api/admin/users/{id}", "put"),
        ("/api/admin/users/{id}", "delete"),
        ("/api/admin/users/{id}/lock", "post"),
        ("/api/admin/users/{id}/unlock", "post"),
        ("/api/admin/audit", "get"),
        ("/api/admin/outbox", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert_eq!(op["security"][0]["bearer"], json!([]), "{method} {path}");
    }
    let params = paths["/api/admin/audit"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "actor_id",
            "action",
            "outcome",
            "since",
            "before_id",
            "limit"
        ]
    );
    assert!(params.iter().all(|p| p["in"] == "query"), "{params:?}");
}
