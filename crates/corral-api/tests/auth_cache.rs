//! The credential cache and the write-behind buffer, through the real server: every
//! change made through the management API is seen by the very next request, changes
//! made behind the server's back within the cache's TTL, and a graceful shutdown writes
//! what the buffer still holds.

mod common;

use common::{Backend, PASSWORD, spawn_app};
use corral_api::AppState;
use corral_api::mail::Mailer;
use corral_control::{Control, ControlSettings};
use corral_core::Role;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `GET /v1/models` needs a credential and no replica: a cheap "is this key accepted".
const PROBE: &str = "/v1/models";

async fn user_key(app: &common::TestApp, role: Role) -> (Uuid, String, String, Uuid) {
    let (email, jwt) = app.user_with_role(role).await;
    let id = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap()
        .id;
    let (status, created) = app
        .post(
            "/api/keys",
            Some(&jwt),
            json!({"name": "k", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let key_id = created["id"].as_str().unwrap().parse().unwrap();
    (id, jwt, key, key_id)
}

async fn changes_are_seen_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (user_id, jwt, key, key_id) = user_key(&app, Role::User).await;

    // Revoked: refused on the very next request, although it was just cached.
    assert_eq!(app.get(PROBE, Some(&key)).await.0, 200);
    assert_eq!(app.get(PROBE, Some(&key)).await.0, 200);
    let (status, _) = app.delete(&format!("/api/keys/{key_id}"), Some(&jwt)).await;
    assert_eq!(status, 204);
    assert_eq!(app.get(PROBE, Some(&key)).await.0, 401, "revoked key");

    // Demoted to viewer: inference refused at once, by key and by access token.
    let (status, created) = app
        .post(
            "/api/keys",
            Some(&jwt),
            json!({"name": "k2", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let chat = json!({"model": "nothing:here", "messages": []});
    for token in [&key, &jwt] {
        let (status, _) = app
            .post("/v1/chat/completions", Some(token), chat.clone())
            .await;
        assert_eq!(status, 404, "a user may run models (none deployed here)");
    }
    let user_path = format!("/api/admin/users/{user_id}");
    let (status, body) = app
        .put(&user_path, Some(&admin), json!({"role": "viewer"}))
        .await;
    assert_eq!(status, 200, "{body}");
    for token in [&key, &jwt] {
        let (status, _) = app
            .post("/v1/chat/completions", Some(token), chat.clone())
            .await;
        assert_eq!(status, 403, "viewer");
    }

    // Locked: neither key nor access token works on the next request.
    assert_eq!(app.get(PROBE, Some(&key)).await.0, 200);
    let (status, _) = app
        .put(&user_path, Some(&admin), json!({"disabled": true}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.get(PROBE, Some(&key)).await.0, 401, "locked, key");
    assert_eq!(app.get(PROBE, Some(&jwt)).await.0, 401, "locked, token");
}

/// A change the server is not told of (another process, SQL by hand) is seen within
/// the TTL: the cache is in use, and bounded.
async fn changes_behind_its_back_within_the_ttl(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user_id, _, key, key_id) = user_key(&app, Role::User).await;
    assert_eq!(app.get(PROBE, Some(&key)).await.0, 200);
    assert!(
        app.state
            .store
            .delete_api_key(user_id, key_id)
            .await
            .unwrap()
    );
    assert_eq!(
        app.get(PROBE, Some(&key)).await.0,
        200,
        "answered from the cache"
    );
    let start = Instant::now();
    while app.get(PROBE, Some(&key)).await.0 != 401 {
        assert!(
            start.elapsed() < corral_api::auth::cache::TTL + Duration::from_secs(2),
            "still accepted after the TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key's use is written behind: within about a second while serving, and at the
/// latest by a graceful shutdown (long before the next periodic flush here).
async fn shutdown_writes_what_is_pending(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user_id, _, key, key_id) = user_key(&app, Role::User).await;
    let last_used = async |store: &Arc<dyn corral_store::Store>| {
        store
            .list_api_keys(user_id)
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.id == key_id)
            .unwrap()
            .last_used_at
    };
    assert_eq!(app.get(PROBE, Some(&key)).await.0, 200);
    let start = Instant::now();
    while last_used(&app.state.store).await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(5), "never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A second server on the same store, stopped right after one request.
    let store = app.state.store.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let weights = Arc::new(corral_models::Weights::new(dir.path()));
    let control = Control::new(
        store.clone(),
        vec![],
        weights.clone(),
        ControlSettings::default(),
    );
    let state = AppState::new(
        store.clone(),
        app.state.settings.clone(),
        Mailer::Outbox,
        control,
        weights,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(corral_api::serve(listener, state, async {
        let _ = stopped.await;
    }));
    let before = last_used(&store).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let status = app
        .http
        .get(format!("{base}{PROBE}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_millis(900), server)
        .await
        .expect("shut down before a periodic flush")
        .unwrap()
        .unwrap();
    let after = last_used(&store).await.unwrap();
    assert!(
        after > before,
        "the shutdown wrote the key's use: {before} → {after}"
    );
}

both_backends!(
    changes_are_seen_at_once,
    changes_behind_its_back_within_the_ttl,
    shutdown_writes_what_is_pending,
);
