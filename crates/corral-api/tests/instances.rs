//! Deploying models through the management API, against real replicas: the reconciler
//! launches `corral-runner` with the demo model through the local driver, and every call
//! goes through the real server. Covers the brief's paths (`POST /api/models/start`,
//! `DELETE /api/models/{id}/stop`, `/api/instances...`), validation before anything is
//! launched, owner isolation on every route, roles, adoption after a server restart and
//! the restart of a killed runner.
//!
//! Needs the runner binary (`CORRAL_RUNNER_BIN`, else `corral-runner` in the target dir)
//! and the model (`CORRAL_TEST_MODEL`, else `.corral/models/smollm2-135m.gguf`); missing
//! either fails unless `CORRAL_SKIP_RUNNER=1` skips the tests that launch replicas.

mod common;

use chrono::Utc;
use common::{
    Backend, MODEL, Reconciler, SERIAL, TestApp, runner_and_model, spawn_app, spawn_app_with,
    spawn_app_with_reconciler,
};
use corral_control::ControlSettings;
use corral_core::{
    ComputeSpec, ComputeType, Desired, Instance, InstanceSettings, Role, State,
    catalog::builtin_models,
};
use corral_drivers::ComputeDriver;
use corral_drivers::local::{LocalConfig, LocalDriver};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The local driver with the runner, short control windows, and the demo model where
/// the built-in catalog entry looks for it (`DATA_DIR/models/smollm2-135m.gguf`).
fn reconciler(runner: PathBuf, model: PathBuf) -> impl FnOnce(&Path) -> Reconciler {
    move |dir: &Path| {
        let models = dir.join("models");
        std::fs::create_dir_all(&models).unwrap();
        let link = models.join("smollm2-135m.gguf");
        if !link.exists() {
            std::os::unix::fs::symlink(&model, link).unwrap();
        }
        let mut config = LocalConfig::new(dir);
        config.runner_bin = Some(runner);
        let driver = std::sync::Arc::new(LocalDriver::new(config).unwrap());
        let settings = ControlSettings {
            data_dir: dir.to_path_buf(),
            tick: Duration::from_millis(500),
            fast_tick: Duration::from_millis(100),
            health_interval: Duration::from_millis(500),
            resource_interval: Duration::from_millis(500),
            backoff_base: Duration::from_millis(200),
            stop_grace: Duration::from_secs(2),
            parallel: 2,
            context: 1024,
            ..ControlSettings::default()
        };
        (vec![driver as std::sync::Arc<dyn ComputeDriver>], settings)
    }
}

/// An app that deploys for real. `Reaper` kills whatever still runs from its data dir
/// when the test ends (a failed test must not leave runners behind).
struct Platform {
    app: TestApp,
    runner: PathBuf,
    model: PathBuf,
    _reaper: Reaper,
}

async fn platform(backend: Backend) -> Option<Platform> {
    let (runner, model) = runner_and_model()?;
    let app =
        spawn_app_with_reconciler(backend, |_| {}, reconciler(runner.clone(), model.clone())).await;
    for m in builtin_models() {
        app.state.store.upsert_model(&m).await.unwrap();
    }
    let data_dir = app
        .state
        .control
        .settings()
        .data_dir
        .canonicalize()
        .unwrap();
    Some(Platform {
        app,
        runner,
        model,
        _reaper: Reaper(data_dir),
    })
}

impl Platform {
    /// A server restart over the same store and data dir.
    async fn restart(self) -> Platform {
        let Platform {
            app,
            runner,
            model,
            _reaper,
        } = self;
        let app = app
            .restart(|_| {}, reconciler(runner.clone(), model.clone()))
            .await;
        Platform {
            app,
            runner,
            model,
            _reaper,
        }
    }

    fn pids(&self, instance: Uuid) -> Vec<u32> {
        replica_pids(&self._reaper.0, Some(instance))
    }

    /// Deletes every instance and waits until their processes are gone.
    async fn teardown(self) {
        let state = &self.app.state;
        for inst in state.store.list_instances(None).await.unwrap() {
            state
                .control
                .set_desired(inst.id, Desired::Deleted)
                .await
                .unwrap();
        }
        let start = Instant::now();
        while !state.store.list_instances(None).await.unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "not deleted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(replica_pids(&self._reaper.0, None).is_empty());
    }
}

/// Processes the local driver started for a data dir (it names the dir and the instance
/// in their environment).
fn replica_pids(data_dir: &Path, instance: Option<Uuid>) -> Vec<u32> {
    let mut wanted = vec![format!("CORRAL_DATA_DIR={}", data_dir.display())];
    if let Some(id) = instance {
        wanted.push(format!("CORRAL_INSTANCE_ID={id}"));
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            let ours = wanted.iter().all(|w| vars.contains(&w.as_bytes()));
            (ours && !zombie).then_some(pid)
        })
        .collect()
}

struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in replica_pids(&self.0, None) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

async fn call(app: &TestApp, method: Method, path: &str, token: &str) -> (u16, Value) {
    let resp = app
        .http
        .request(method, app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls the instance through the API until its status is `status`.
async fn wait_status(app: &TestApp, token: &str, id: &str, status: &str) -> Value {
    let start = Instant::now();
    loop {
        let (code, inst) = app.get(&format!("/api/instances/{id}"), Some(token)).await;
        assert_eq!(code, 200, "{inst}");
        if inst["status"] == status {
            return inst;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30) && inst["status"] != "failed",
            "instance is {} ({}), not {status}; timeline: {}",
            inst["status"],
            inst["status_reason"],
            inst["timeline"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn to_states(inst: &Value) -> Vec<String> {
    inst["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["to_state"].as_str().map(str::to_string))
        .collect()
}

async fn deploy_show_logs_and_stop(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(p) = platform(backend).await else {
        return;
    };
    let app = &p.app;
    // An admin creates the user, who logs in.
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (status, created) = app
        .post(
            "/api/admin/users",
            Some(&admin),
            json!({"email": "deployer@example.com", "password": common::PASSWORD, "role": "user"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let user = app.login("deployer@example.com", common::PASSWORD).await;

    let (status, models) = app.get("/api/models", Some(&user)).await;
    assert_eq!(status, 200);
    let demo = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MODEL)
        .unwrap();
    assert_eq!(demo["present"], true, "{demo}");
    let (status, offers) = app.get("/api/compute", Some(&user)).await;
    assert_eq!(
        (status, offers[0]["compute_type"].as_str()),
        (200, Some("local"))
    );

    let started = Instant::now();
    let (status, inst) = app
        .post(
            "/api/models/start",
            Some(&user),
            json!({"model_id": MODEL, "idle_timeout_seconds": 0}),
        )
        .await;
    assert_eq!(status, 201, "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    assert_eq!(inst["status"], "pending");
    assert_eq!(inst["desired"], "running");
    assert_eq!(inst["endpoint"], format!("{}/i/{id}", app.base));
    // The default size: the smallest local size that fits the model.
    assert_eq!(inst["compute"]["cpu"], 0.5);
    assert_eq!(inst["compute"]["memory"], 512);

    let ready = wait_status(app, &user, &id, "ready").await;
    let took = started.elapsed();
    println!(
        "deploy to ready through the API: {:.2} s",
        took.as_secs_f64()
    );
    assert!(
        ready["timeline"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("deployed by deployer@example.com")
    );
    assert_eq!(to_states(&ready), ["provisioning", "starting", "ready"]);
    assert_eq!(ready["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(ready["replicas"][0]["state"], "ready");
    assert!(
        ready["replicas"][0].get("endpoint").is_none(),
        "replica addresses are for admins"
    );
    assert_eq!(p.pids(Uuid::parse_str(&id).unwrap()).len(), 1);

    // Resources arrive with the reconciler's samples.
    let start = Instant::now();
    loop {
        let (_, detail) = app.get(&format!("/api/instances/{id}"), Some(&user)).await;
        if detail["replicas"][0]["memory_bytes"].as_u64().unwrap_or(0) > 0 {
            assert!(detail["uptime_seconds"].as_i64().is_some());
            assert_eq!(detail["cost"]["usd"], 0.0, "local compute is free");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Lists: the user's own; the admin's everyone's, with the owner and replica address.
    let (_, mine) = app.get("/api/instances", Some(&user)).await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert!(mine[0].get("owner_email").is_none());
    let (_, all) = app.get("/api/instances", Some(&admin)).await;
    assert_eq!(all[0]["owner_email"], "deployer@example.com");
    let (_, detail) = app.get(&format!("/api/instances/{id}"), Some(&admin)).await;
    assert!(detail["replicas"][0]["endpoint"].is_string());

    // Logs: a tail, and a follow that streams Server-Sent Events.
    let (status, logs) = app
        .get(&format!("/api/instances/{id}/logs?tail=5"), Some(&user))
        .await;
    assert_eq!(status, 200, "{logs}");
    let lines = logs["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 5, "{logs}");
    assert_eq!(lines[0]["replica_id"], ready["replicas"][0]["id"]);
    let mut follow = app
        .http
        .get(app.url(&format!("/api/instances/{id}/logs?tail=2&follow=true")))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(
        follow.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    while text.matches("data:").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), follow.chunk())
            .await
            .expect("SSE lines within 5 s")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(follow);

    // Settings change, and the timeline says so.
    let (status, changed) = app
        .put(
            &format!("/api/instances/{id}/settings"),
            Some(&user),
            json!({"idle_timeout_seconds": 600, "max_replicas": 2}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["settings"]["max_replicas"], 2);
    assert_eq!(changed["settings"]["idle_timeout_seconds"], 600);
    let (status, refused) = app
        .put(
            &format!("/api/instances/{id}/settings"),
            Some(&user),
            json!({"min_replicas": 3}),
        )
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (400, Some("invalid_replicas"))
    );

    // Usage and cost per instance.
    let (status, usage) = app.get("/api/usage?group_by=instance", Some(&user)).await;
    assert_eq!(status, 200, "{usage}");
    assert!(
        usage["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["key"] == id)
    );

    // Stop: 202 at once, then the process goes.
    let uuid = Uuid::parse_str(&id).unwrap();
    let (status, stopping) = call(
        app,
        Method::DELETE,
        &format!("/api/models/{id}/stop"),
        &user,
    )
    .await;
    assert_eq!(
        (status, stopping["desired"].as_str()),
        (202, Some("stopped"))
    );
    let stopped = wait_status(app, &user, &id, "stopped").await;
    assert!(stopped["replicas"].as_array().unwrap().is_empty());
    assert!(p.pids(uuid).is_empty(), "the runner outlived its stop");

    // The stopped instance's logs are still there, marked with the run that wrote them.
    let (status, logs) = app
        .get(&format!("/api/instances/{id}/logs?tail=1000"), Some(&user))
        .await;
    assert_eq!(status, 200, "{logs}");
    let runs = logs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{logs}");
    let first_run = runs[0]["run_id"].as_str().unwrap().to_string();
    assert_eq!(runs[0]["replica_id"], ready["replicas"][0]["id"]);
    assert!(runs[0]["ended_at"].is_string(), "the run ended: {logs}");
    let lines = logs["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["line"]
            .as_str()
            .unwrap()
            .contains("corral: starting replica")),
        "{logs}"
    );
    assert!(lines.iter().all(|l| l["run_id"] == first_run.as_str()));
    // Someone else's instance, stopped or not, is not found.
    let (_, other) = app.user_with_role(Role::User).await;
    let (status, body) = app
        .get(&format!("/api/instances/{id}/logs"), Some(&other))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );

    // Following the stopped instance shows its tail, then the new run's lines once it is
    // started again.
    let mut follow = app
        .http
        .get(app.url(&format!("/api/instances/{id}/logs?tail=1&follow=true")))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let (status, _) = call(
        app,
        Method::POST,
        &format!("/api/instances/{id}/start"),
        &user,
    )
    .await;
    assert_eq!(status, 202);
    let mut events: Vec<Value> = Vec::new();
    let mut buf = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events.iter().any(|e| {
        e["run_id"] != first_run.as_str() && e["line"].as_str().unwrap().contains("listening on")
    }) {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, follow.chunk())
            .await
            .unwrap_or_else(|_| panic!("no line of the new run within 30 s: {events:#?}"))
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                events.push(serde_json::from_str(data.trim()).unwrap());
            }
        }
    }
    drop(follow);
    assert_eq!(
        events[0]["run_id"],
        first_run.as_str(),
        "the tail comes first"
    );
    wait_status(app, &user, &id, "ready").await;
    let (status, deleting) =
        call(app, Method::DELETE, &format!("/api/instances/{id}"), &user).await;
    assert_eq!(
        (status, deleting["desired"].as_str()),
        (202, Some("deleted"))
    );
    let (status, _) = call(
        app,
        Method::DELETE,
        &format!("/api/models/{id}/stop"),
        &user,
    )
    .await;
    assert_eq!(status, 409, "a deleted instance is not stopped instead");
    let start = Instant::now();
    while app
        .get(&format!("/api/instances/{id}"), Some(&user))
        .await
        .0
        != 404
    {
        assert!(start.elapsed() < Duration::from_secs(30), "not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.pids(uuid).is_empty());
    p.teardown().await;
}

/// An instance row of `owner`, without launching anything.
async fn stored_instance(app: &TestApp, owner: Uuid, model: &str) -> Uuid {
    for m in builtin_models() {
        app.state.store.upsert_model(&m).await.unwrap();
    }
    let now = Utc::now();
    let inst = Instance {
        id: Uuid::now_v7(),
        owner_id: owner,
        model_id: model.into(),
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
    };
    app.state
        .store
        .create_instance(&inst, &corral_core::Admission::unlimited())
        .await
        .unwrap();
    inst.id
}

async fn user_id(app: &TestApp, email: &str) -> Uuid {
    app.state
        .store
        .user_by_email(email)
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn owners_only_and_viewers_read_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a_email, a) = app.user_with_role(Role::User).await;
    let (_, b) = app.user_with_role(Role::User).await;
    let (_, viewer) = app.user_with_role(Role::Viewer).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let id = stored_instance(&app, user_id(&app, &a_email).await, MODEL).await;

    // Every route answers 404 to another user, as for an id that does not exist.
    let routes = [
        (Method::GET, format!("/api/instances/{id}")),
        (Method::GET, format!("/api/instances/{id}/logs")),
        (Method::GET, format!("/api/instances/{id}/logs?follow=true")),
        (Method::DELETE, format!("/api/models/{id}/stop")),
        (Method::POST, format!("/api/instances/{id}/start")),
        (Method::DELETE, format!("/api/instances/{id}")),
        (Method::GET, format!("/i/{id}/api/tags")),
        (Method::POST, format!("/i/{id}/api/generate")),
    ];
    for (method, path) in &routes {
        let (status, body) = call(&app, method.clone(), path, &b).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        let unknown = path.replace(&id.to_string(), &Uuid::now_v7().to_string());
        let (status, _) = call(&app, method.clone(), &unknown, &b).await;
        assert_eq!(status, 404, "{method} {unknown}");
    }
    let (status, _) = app
        .put(
            &format!("/api/instances/{id}/settings"),
            Some(&b),
            json!({"max_replicas": 2}),
        )
        .await;
    assert_eq!(status, 404);
    let (_, listed) = app.get("/api/instances", Some(&b)).await;
    assert_eq!(listed, json!([]));
    let (_, usage) = app.get("/api/usage", Some(&b)).await;
    assert_eq!(usage["groups"], json!([]));

    // Viewers see every instance and change none.
    let (status, seen) = app
        .get(&format!("/api/instances/{id}"), Some(&viewer))
        .await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen.get("owner_email").is_none());
    let (_, listed) = app.get("/api/instances", Some(&viewer)).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    for (method, path) in [
        (Method::DELETE, format!("/api/models/{id}/stop")),
        (Method::POST, format!("/api/instances/{id}/start")),
        (Method::DELETE, format!("/api/instances/{id}")),
    ] {
        let (status, body) = call(&app, method.clone(), &path, &viewer).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    let (status, _) = app
        .post(
            "/api/models/start",
            Some(&viewer),
            json!({"model_id": MODEL}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .put(
            &format!("/api/instances/{id}/settings"),
            Some(&viewer),
            json!({}),
        )
        .await;
    assert_eq!(status, 403);

    // The routes are in the OpenAPI document, behind the bearer scheme.
    let (_, doc) = app.get("/api/openapi.json", None).await;
    for path in [
        "/api/models",
        "/api/models/start",
        "/api/models/{id}/stop",
        "/api/models/{id}/pull",
        "/api/compute",
        "/api/instances",
        "/api/instances/{id}",
        "/api/instances/{id}/logs",
        "/api/instances/{id}/settings",
        "/api/usage",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }

    // The admin sees it with its owner and can stop it.
    let (_, all) = app.get("/api/instances", Some(&admin)).await;
    assert_eq!(all[0]["owner_email"], a_email);
    let (status, _) = call(
        &app,
        Method::DELETE,
        &format!("/api/models/{id}/stop"),
        &admin,
    )
    .await;
    assert_eq!(status, 202);
    // And the owner can start it again.
    let (status, again) = call(
        &app,
        Method::POST,
        &format!("/api/instances/{id}/start"),
        &a,
    )
    .await;
    assert_eq!((status, again["desired"].as_str()), (202, Some("running")));

    // Changes are audited with the instance as target.
    let entries = app
        .state
        .store
        .list_audit(&corral_core::AuditFilter::default())
        .await
        .unwrap();
    assert!(
        entries.iter().any(|e| e.action == "instances.stop"
            && e.target.as_deref() == Some(id.to_string().as_str()))
    );
}

/// Catalog administration: only admins add and remove, built-ins stay, a model in use
/// cannot be removed.
async fn catalog_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user_email, user) = app.user_with_role(Role::User).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    for m in builtin_models() {
        app.state.store.upsert_model(&m).await.unwrap();
    }
    let entry = json!({
        "id": "Phi3:Mini",
        "memory_required": 3072,
        "source": {"kind": "url", "url": "https://example.test/phi3.gguf", "sha256": "ab".repeat(32)},
    });
    let (status, _) = app.post("/api/models", Some(&user), entry.clone()).await;
    assert_eq!(status, 403);
    let (status, created) = app.post("/api/models", Some(&admin), entry.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "phi3:mini");
    assert_eq!(
        (created["family"].as_str(), created["size"].as_str()),
        (Some("phi3"), Some("MINI"))
    );
    assert_eq!(created["present"], false);
    let (status, _) = app.post("/api/models", Some(&admin), entry).await;
    assert_eq!(status, 409);
    for bad in [
        json!({"id": "../x", "memory_required": 1, "source": {"kind": "file", "path": "x.gguf"}}),
        json!({"id": "start", "memory_required": 1, "source": {"kind": "file", "path": "x.gguf"}}),
        json!({"id": "a:b", "memory_required": 1, "source": {"kind": "url", "url": "ftp://x", "sha256": "ab".repeat(32)}}),
        json!({"id": "a:b", "memory_required": 1, "source": {"kind": "url", "url": "https://x/y", "sha256": "xyz"}}),
        json!({"id": "a:b", "memory_required": 0, "source": {"kind": "ollama", "name": "library/a:b"}}),
        json!({"id": "a:b", "memory_required": 1, "source": {"kind": "ollama", "name": "Bad Name"}}),
    ] {
        let (status, body) = app.post("/api/models", Some(&admin), bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, one) = app.get("/api/models/phi3:mini", Some(&user)).await;
    assert_eq!((status, one["memory_required"].as_u64()), (200, Some(3072)));

    // A file source is imported, not pulled; a built-in stays.
    let (status, body) = app
        .post(
            &format!("/api/models/{MODEL}/pull"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("file_source"))
    );
    let (status, body) = call(
        &app,
        Method::DELETE,
        &format!("/api/models/{MODEL}"),
        &admin,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("builtin_model"))
    );

    // In use: 409 with the store's sentence; free again once the instance is gone.
    let inst_id = stored_instance(&app, user_id(&app, &user_email).await, "phi3:mini").await;
    let store = &app.state.store;
    let (status, body) = call(&app, Method::DELETE, "/api/models/phi3:mini", &admin).await;
    assert_eq!(status, 409, "{body}");
    store
        .delete_instance(inst_id, &corral_core::Admission::unlimited())
        .await
        .unwrap();
    let (status, _) = call(&app, Method::DELETE, "/api/models/phi3:mini", &user).await;
    assert_eq!(status, 403);
    let (status, _) = call(&app, Method::DELETE, "/api/models/phi3:mini", &admin).await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/api/models/phi3:mini", Some(&user)).await;
    assert_eq!(status, 404);
}

/// Issue 13 item 14: model sources inside the network. An admin cannot add a `url`
/// source on loopback, link-local (the cloud metadata address) or private addresses
/// (400, nothing created) unless `allow_private_model_sources` is set.
async fn model_sources_inside_the_network_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let entry = |url: &str| {
        json!({"id": "inside:1", "memory_required": 512,
               "source": {"kind": "url", "url": url, "sha256": "ab".repeat(32)}})
    };
    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/x",
        "http://127.0.0.1:11434/m.gguf",
        "http://[::ffff:169.254.169.254]/m.gguf",
        "http://[fd00:ec2::254]/m.gguf",
        "https://10.0.0.2/m.gguf",
        "http://192.168.1.1/m.gguf",
        "http://100.64.0.1/m.gguf",
        "http://0.0.0.0:8080/m.gguf",
        "http://localhost:8080/m.gguf",
    ] {
        let (status, body) = app.post("/api/models", Some(&admin), entry(url)).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["code"], "invalid_source", "{url}: {body}");
        let (status, _) = app.get("/api/models/inside:1", Some(&admin)).await;
        assert_eq!(status, 404, "{url}: nothing created");
    }
    let (status, body) = app
        .post(
            "/api/models",
            Some(&admin),
            entry("https://huggingface.co/x/m.gguf"),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let allowed = spawn_app_with(backend, |s| s.allow_private_model_sources = true).await;
    let (_, admin) = allowed.user_with_role(Role::Admin).await;
    let (status, body) = allowed
        .post(
            "/api/models",
            Some(&admin),
            entry("http://127.0.0.1:11434/m.gguf"),
        )
        .await;
    assert_eq!(status, 201, "allowed by the setting: {body}");
}

/// An admin pulls a URL model ahead of a deploy: 202 at once, progress on the model,
/// then present. The "registry" is a local HTTP server (allowed by the setting).
async fn pull_shows_progress_until_present(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.allow_private_model_sources = true).await;
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (_, user) = app.user_with_role(Role::User).await;
    let gguf = format!("GGUF{}", "x".repeat(300_000));
    let sha256 = corral_core::secret::hash(&gguf);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let weights_url = format!("http://{}/m.gguf", listener.local_addr().unwrap());
    let files = axum::Router::new().route(
        "/m.gguf",
        axum::routing::get(move || std::future::ready(gguf.clone())),
    );
    tokio::spawn(async move { axum::serve(listener, files).await.unwrap() });

    let (status, created) = app
        .post(
            "/api/models",
            Some(&admin),
            json!({"id": "tiny:1m", "memory_required": 512,
                   "source": {"kind": "url", "url": weights_url, "sha256": sha256}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["present"], false);
    let (status, _) = app
        .post("/api/models/tiny:1m/pull", Some(&user), json!({}))
        .await;
    assert_eq!(status, 403, "pulling is for admins");
    let (status, pulling) = app
        .post("/api/models/tiny:1m/pull", Some(&admin), json!({}))
        .await;
    assert_eq!(status, 202, "{pulling}");
    let start = Instant::now();
    let model = loop {
        let (_, model) = app.get("/api/models/tiny:1m", Some(&user)).await;
        if model["present"] == true {
            break model;
        }
        assert_ne!(model["pull"]["phase"], "failed", "{model}");
        assert!(start.elapsed() < Duration::from_secs(20), "{model}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(model["pull"]["phase"], "ready", "{model}");
    assert_eq!(model["pull"]["percent"], 100, "{model}");
    assert_eq!(model["pull"]["done_bytes"], 300_004);
    // Pulling what is present changes nothing.
    let (status, again) = app
        .post("/api/models/tiny:1m/pull", Some(&admin), json!({}))
        .await;
    assert_eq!((status, again["present"].as_bool()), (202, Some(true)));
}

async fn impossible_sizes_launch_nothing(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(p) = platform(backend).await else {
        return;
    };
    let app = &p.app;
    let (_, user) = app.user_with_role(Role::User).await;
    for (body, code) in [
        (
            json!({"model_id": MODEL, "cpu": 1.5, "memory": 256}),
            "invalid_size",
        ),
        (
            json!({"model_id": MODEL, "cpu": 1, "memory": 700}),
            "invalid_size",
        ),
        (
            json!({"model_id": "llama2-7b", "cpu": 1, "memory": 1024}),
            "insufficient_memory",
        ),
        (
            json!({"model_id": MODEL, "compute_type": "fargate"}),
            "compute_unavailable",
        ),
        (
            json!({"model_id": MODEL, "instance_type": "ml.m5.large"}),
            "compute_unavailable",
        ),
        (json!({"model_id": MODEL, "spot": true}), "invalid_size"),
        (
            json!({"model_id": MODEL, "min_replicas": 2, "max_replicas": 1}),
            "invalid_replicas",
        ),
        (
            json!({"model_id": MODEL, "max_replicas": 9}),
            "invalid_replicas",
        ),
        (
            json!({"model_id": MODEL, "min_replicas": 0}),
            "invalid_replicas",
        ),
        (
            json!({"model_id": MODEL, "idle_timeout_seconds": 700000}),
            "invalid_idle_timeout",
        ),
        (json!({"model_id": "no-such:model"}), "unknown_model"),
        (json!({"model_id": "../etc"}), "invalid_model_id"),
    ] {
        let (status, answer) = app
            .post("/api/models/start", Some(&user), body.clone())
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    let (_, answer) = app
        .post(
            "/api/models/start",
            Some(&user),
            json!({"model_id": "llama2-7b", "cpu": 1, "memory": 1024}),
        )
        .await;
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("llama2:7b needs 4096 MiB; choose at least 4096 MiB"),
        "{message}"
    );
    let (status, _) = app
        .post(
            "/api/models/start",
            Some(&user),
            json!({"model_id": MODEL, "bogus": 1}),
        )
        .await;
    assert_eq!(status, 400, "unknown fields are refused, not ignored");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        app.state
            .store
            .list_instances(None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        replica_pids(&p._reaper.0, None).is_empty(),
        "something was launched"
    );
    p.teardown().await;
}

async fn restart_adopts_and_kill_restarts(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(p) = platform(backend).await else {
        return;
    };
    let (_, user) = p.app.user_with_role(Role::User).await;
    let (status, inst) = p
        .app
        .post(
            "/api/models/start",
            Some(&user),
            json!({"model_id": MODEL, "cpu": 1, "memory": 1024, "idle_timeout_seconds": 0}),
        )
        .await;
    assert_eq!(status, 201, "{inst}");
    let id = inst["id"].as_str().unwrap().to_string();
    let uuid = Uuid::parse_str(&id).unwrap();
    wait_status(&p.app, &user, &id, "ready").await;
    let pid = p.pids(uuid)[0];

    // The server restarts while the instance runs: the replica is adopted, not relaunched.
    let p = p.restart().await;
    let adopted = wait_status(&p.app, &user, &id, "ready").await;
    assert_eq!(
        p.pids(uuid),
        [pid],
        "the same process serves after the restart"
    );
    let start = Instant::now();
    let generate =
        json!({"model": MODEL, "prompt": "Say hi", "stream": false, "options": {"num_predict": 4}});
    loop {
        let (status, answer) = p
            .app
            .post(
                &format!("/i/{id}/api/generate"),
                Some(&user),
                generate.clone(),
            )
            .await;
        if status == 200 {
            assert_eq!(answer["done"], true, "{answer}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no answer after the restart: {status} {answer}; {}",
            adopted["timeline"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9 the runner: the reconciler notices, records it and starts it again.
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    loop {
        let (_, detail) = p
            .app
            .get(&format!("/api/instances/{id}"), Some(&user))
            .await;
        let pids = p.pids(uuid);
        if detail["status"] == "ready"
            && detail["replicas"][0]["restarts"] == 1
            && detail["replicas"][0]["state"] == "ready"
            && pids.len() == 1
            && pids[0] != pid
        {
            let messages: Vec<&str> = detail["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["message"].as_str())
                .collect();
            assert!(
                // An adopted replica is not this server's child, so its end reads as lost
                // rather than exited: either way it is restarted.
                messages
                    .iter()
                    .any(|m| (m.contains("exited") || m.contains("lost"))
                        && m.contains("restarting")),
                "{messages:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not restarted: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = p
        .app
        .post(&format!("/i/{id}/api/generate"), Some(&user), generate)
        .await;
    assert_eq!(status, 200, "{answer}");

    // The killed run's log is still shown, apart from its replacement's: same replica,
    // two runs, each starting with the driver's header line.
    let (status, logs) = p
        .app
        .get(&format!("/api/instances/{id}/logs?tail=5000"), Some(&user))
        .await;
    assert_eq!(status, 200, "{logs}");
    let runs = logs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{logs}");
    assert_eq!(runs[0]["replica_id"], runs[1]["replica_id"]);
    assert!(runs[0]["ended_at"].is_string() && runs[1]["ended_at"].is_null());
    for run in runs {
        let headers = logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["run_id"] == run["run_id"])
            .filter(|l| {
                l["line"]
                    .as_str()
                    .unwrap()
                    .contains("corral: starting replica")
            })
            .count();
        assert_eq!(headers, 1, "{run}: {logs}");
    }
    p.teardown().await;
}

both_backends!(
    deploy_show_logs_and_stop,
    owners_only_and_viewers_read_only,
    catalog_admin,
    model_sources_inside_the_network_are_refused,
    pull_shows_progress_until_present,
    impossible_sizes_launch_nothing,
    restart_adopts_and_kill_restarts,
);
