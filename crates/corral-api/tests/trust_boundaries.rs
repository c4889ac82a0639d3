//! Regression tests of issue 13 (trust boundaries), items 1, 4, 6, 10 and 12, against the
//! real server: each is named after its item.

mod common;

use common::{Backend, PASSWORD, TestApp, spawn_app, spawn_app_with};
use corral_core::{AuditEntry, AuditFilter, Role, secret};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

async fn audit(app: &TestApp) -> Vec<AuditEntry> {
    app.state
        .store
        .list_audit(&AuditFilter {
            limit: Some(500),
            ..AuditFilter::default()
        })
        .await
        .unwrap()
}

/// A failed login for an address of its own (so that no account gets locked: every 429
/// is the per-IP limit's).
async fn bad_login(app: &TestApp, forwarded_for: Option<&str>) -> u16 {
    let email = format!("nobody-{}@example.com", Uuid::now_v7().simple());
    let mut req = app
        .http
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": email, "password": "wrong-password"}));
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    req.send().await.unwrap().status().as_u16()
}

async fn create_key(app: &TestApp, token: &str) -> String {
    let (status, created) = app
        .post(
            "/api/keys",
            Some(token),
            json!({"name": "test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().unwrap().to_string()
}

/// Item 1: behind CloudFront and an ALB (2 hops) the client is the second entry from the
/// right; whatever the client writes to the left of it chooses neither its rate-limit
/// bucket nor its audit IP.
async fn x_forwarded_for(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.trusted_proxy_hops = 2;
        s.auth_rate_per_ip = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let xff = format!("198.51.100.{i}, 203.0.113.7, 130.176.0.1");
        statuses.push(bad_login(&app, Some(&xff)).await);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429, 429],
        "one bucket for 203.0.113.7"
    );
    // Another client behind the same proxies has a bucket of its own.
    assert_eq!(bad_login(&app, Some("203.0.113.8, 130.176.0.1")).await, 401);
    let ips: Vec<Option<String>> = audit(&app)
        .await
        .into_iter()
        .filter(|e| e.action != "rate_limited")
        .map(|e| e.ip)
        .collect();
    assert_eq!(ips.len(), 4, "{ips:?}");
    assert_eq!(
        ips.iter()
            .filter(|ip| ip.as_deref() == Some("203.0.113.7"))
            .count(),
        3
    );
    assert!(ips.iter().any(|ip| ip.as_deref() == Some("203.0.113.8")));

    // Without trusted proxies the header is ignored: the TCP peer is the client.
    let app = spawn_app_with(backend, |s| s.auth_rate_per_ip = 100).await;
    bad_login(&app, Some("203.0.113.7")).await;
    let rows = audit(&app).await;
    assert_eq!(rows[0].ip.as_deref(), Some("127.0.0.1"));
}

/// Item 4: unauthenticated traffic costs bounded store writes and reads.
async fn unauthenticated_traffic_writes_to_the_store(backend: Backend) {
    const ATTEMPTS: usize = 200;
    const RATE: u32 = 5;
    let app = spawn_app_with(backend, |s| s.auth_rate_per_ip = RATE).await;

    // Concurrent login attempts from one address: the admitted ones are audited one by
    // one, the rate-limited ones are only counted.
    let attempts = (0..ATTEMPTS).map(|_| bad_login(&app, None));
    let statuses = futures_util::future::join_all(attempts).await;
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= ATTEMPTS - RATE as usize - 1, "{statuses:?}");
    let rows = audit(&app).await;
    assert!(
        rows.len() <= RATE as usize + 1,
        "{} audit rows for {ATTEMPTS} attempts",
        rows.len()
    );
    // The count is written as one row per address and minute (at the latest when the
    // server stops; here, asked for now).
    app.state
        .refusals
        .flush(app.state.store.as_ref(), true)
        .await;
    let counted: Vec<AuditEntry> = audit(&app)
        .await
        .into_iter()
        .filter(|e| e.action == "rate_limited")
        .collect();
    assert!(
        (1..=2).contains(&counted.len()),
        "one row a minute: {counted:?}"
    );
    let total: usize = counted
        .iter()
        .map(|e| {
            let detail = e.detail.as_deref().unwrap();
            let n = detail
                .strip_prefix("429 x")
                .and_then(|d| d.split(' ').next())
                .unwrap();
            n.parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(total, limited);
    assert!(counted.iter().all(|e| e.ip.as_deref() == Some("127.0.0.1")));

    // A path that matches no route is not audited, whatever its length.
    let app = spawn_app(backend).await;
    let long = format!("/api/{}", "x".repeat(4000));
    let status = app.http.post(app.url(&long)).send().await.unwrap().status();
    assert_eq!(status, 404);
    assert!(audit(&app).await.is_empty());

    // Refused requests do not clear the credential cache.
    let (_, token) = app.user_with_role(Role::User).await;
    let key = create_key(&app, &token).await;
    let (status, _) = app.get("/v1/models", Some(&key)).await;
    assert_eq!(status, 200);
    let generation = app.state.auth_cache.generation();
    for _ in 0..5 {
        let (status, _) = app.post("/api/keys", None, json!({"name": "x"})).await;
        assert_eq!(status, 401);
        let (status, _) = app.post("/api/auth/login", None, json!({})).await;
        assert!(status == 400 || status == 422, "{status}");
    }
    assert_eq!(app.state.auth_cache.generation(), generation);
    assert!(
        app.state.auth_cache.key(&secret::hash(&key)).is_some(),
        "still cached"
    );

    // An unknown key is remembered, so repeating it costs no store read; a key created
    // right after works at once.
    let bogus = secret::new_api_key();
    let (status, _) = app.get("/v1/models", Some(&bogus)).await;
    assert_eq!(status, 401);
    assert!(app.state.auth_cache.unknown_key(&secret::hash(&bogus)));
    let fresh = create_key(&app, &token).await;
    let (status, body) = app.get("/v1/models", Some(&fresh)).await;
    assert_eq!(status, 200, "{body}");

    // Unauthenticated requests share one budget per address across the API and the
    // gateway: refusals become 429, and then no unknown key reaches the store.
    let app = spawn_app_with(backend, |s| s.auth_rate_per_ip = 4).await;
    let mut statuses = Vec::new();
    for path in ["/v1/models", "/api/keys", "/ollama/api/tags", "/api/keys"] {
        statuses.push(app.get(path, Some("crl_bogus")).await.0);
    }
    assert_eq!(statuses, [401, 401, 401, 401]);
    let (status, body) = app.get("/v1/models", Some("crl_other_bogus")).await;
    assert_eq!(status, 429, "{body}");
    let (status, _) = app.get("/api/instances", None).await;
    assert_eq!(status, 429);
    assert!(
        !app.state
            .auth_cache
            .unknown_key(&secret::hash("crl_other_bogus")),
        "refused before the store lookup"
    );
}

/// A request whose body is sent a byte at a time, on a connection of its own; answers
/// with the status line once the server answers.
async fn trickle(app: &TestApp, key: &str, every: Duration) -> tokio::task::JoinHandle<String> {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut answer = vec![0u8; 4096];
        let n = read.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

/// Item 6: a trickled body is cut off by the body timeout (408), and a user's requests in
/// flight, bodies being read included, are capped.
async fn gateway_bodies(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.gateway_max_concurrent_requests = 2;
        s.gateway_body_timeout = Duration::from_secs(3);
    })
    .await;
    let (_, token) = app.user_with_role(Role::User).await;
    let key = create_key(&app, &token).await;
    let slow = [
        trickle(&app, &key, Duration::from_millis(200)).await,
        trickle(&app, &key, Duration::from_millis(200)).await,
    ];
    // Both are admitted and reading their bodies: a third request waits for neither.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let chat = json!({"model": "nothing-deployed", "messages": []});
    let (status, body) = app
        .post("/v1/chat/completions", Some(&key), chat.clone())
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "concurrency_limit_exceeded");
    // Another user is not held back by them.
    let (_, other) = app.user_with_role(Role::User).await;
    let (status, body) = app
        .post("/v1/chat/completions", Some(&other), chat.clone())
        .await;
    assert_eq!(status, 404, "{body}");

    for answer in slow {
        let status_line = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("a trickled body must be cut off by the body timeout")
            .unwrap();
        assert!(status_line.contains(" 408 "), "{status_line}");
    }
    // Their places are free again.
    let (status, body) = app.post("/v1/chat/completions", Some(&key), chat).await;
    assert_eq!(status, 404, "{body}");
}

/// Item 10: timelines name the acting user by e-mail for admins only.
async fn viewers_see_other_users_email_addresses(backend: Backend) {
    let app = spawn_app(backend).await;
    let (owner_email, owner) = app.user_with_role(Role::User).await;
    let (admin_email, admin) = app.user_with_role(Role::Admin).await;
    let (_, viewer) = app.user_with_role(Role::Viewer).await;
    let owner_id = app
        .state
        .store
        .user_by_email(&owner_email)
        .await
        .unwrap()
        .unwrap()
        .id;
    let id = stored_instance(&app, owner_id).await;
    let path = format!("/api/instances/{id}/settings");
    let (status, body) = app
        .put(&path, Some(&owner), json!({"idle_timeout_seconds": 600}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .put(&path, Some(&admin), json!({"idle_timeout_seconds": 900}))
        .await;
    assert_eq!(status, 200, "{body}");

    let timeline = |body: Value| -> Vec<String> {
        body["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_string())
            .filter(|m| m.starts_with("settings changed by"))
            .collect()
    };
    let detail = format!("/api/instances/{id}");
    let (status, body) = app.get(&detail, Some(&viewer)).await;
    assert_eq!(status, 200, "{body}");
    let seen = timeline(body);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|m| !m.contains('@')),
        "a viewer sees no address: {seen:?}"
    );
    let (_, body) = app.get(&detail, Some(&owner)).await;
    let seen = timeline(body);
    assert!(
        seen[0].starts_with(&format!("settings changed by {owner_email}:")),
        "their own address: {seen:?}"
    );
    assert!(
        seen[1].starts_with("settings changed by another user:"),
        "{seen:?}"
    );
    let (_, body) = app.get(&detail, Some(&admin)).await;
    let seen = timeline(body);
    assert!(seen[0].contains(&owner_email), "{seen:?}");
    assert!(seen[1].contains(&admin_email), "{seen:?}");
}

/// An instance row of `owner`, without launching anything.
async fn stored_instance(app: &TestApp, owner: Uuid) -> Uuid {
    use corral_core::{ComputeSpec, ComputeType, Desired, Instance, InstanceSettings, State};
    for m in corral_core::catalog::builtin_models() {
        app.state.store.upsert_model(&m).await.unwrap();
    }
    let now = chrono::Utc::now();
    let inst = Instance {
        id: Uuid::now_v7(),
        owner_id: owner,
        team_id: None,
        model_id: common::MODEL.into(),
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
        desired: Desired::Sleeping,
        state: State::Sleeping,
        state_reason: None,
        target_replicas: 0,
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        running_since: None,
        running_seconds: 0,
    };
    app.state
        .store
        .create_instance(&inst, &corral_core::Admission::unlimited())
        .await
        .unwrap();
    inst.id
}

/// Item 12: `/i/{id}/...` forwards only the inference and read paths; the runtime's
/// management API (pull, push, create, copy, delete) is refused before any instance is
/// looked up or woken.
async fn instance_paths_forward_any_method_and_path(backend: Backend) {
    let app = spawn_app(backend).await;
    let (owner_email, token) = app.user_with_role(Role::User).await;
    let owner_id = app
        .state
        .store
        .user_by_email(&owner_email)
        .await
        .unwrap()
        .unwrap()
        .id;
    let id = stored_instance(&app, owner_id).await;
    for (method, path) in [
        (Method::POST, "api/pull"),
        (Method::POST, "api/push"),
        (Method::POST, "api/create"),
        (Method::POST, "api/copy"),
        (Method::DELETE, "api/delete"),
        (Method::POST, "api/blobs/sha256:00"),
        (Method::GET, "v1/models/../../api/pull"),
        (Method::GET, "v1/files"),
    ] {
        let resp = app
            .http
            .request(method.clone(), app.url(&format!("/i/{id}/{path}")))
            .bearer_auth(&token)
            .json(&json!({"model": "evil:latest"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 403, "{method} {path}: {body}");
        // In the error shape of the path's API (Ollama's is a bare message).
        assert!(body.to_string().contains("is not forwarded"), "{body}");
    }
    // Without a credential it is still 401 first.
    let (status, _) = app
        .post(&format!("/i/{id}/api/pull"), None, json!({}))
        .await;
    assert_eq!(status, 401);
    // An allowed path goes on to the instance lookup (404 for one that does not exist).
    let (status, body) = app
        .get(&format!("/i/{}/api/tags", Uuid::now_v7()), Some(&token))
        .await;
    assert_eq!(status, 404, "{body}");
    let instance = app.state.store.instance(id).await.unwrap().unwrap();
    assert_eq!(
        instance.desired,
        corral_core::Desired::Sleeping,
        "the refused requests did not wake it"
    );
}

both_backends!(
    x_forwarded_for,
    unauthenticated_traffic_writes_to_the_store,
    gateway_bodies,
    viewers_see_other_users_email_addresses,
    instance_paths_forward_any_method_and_path,
);
