//! Quotas and capacity admission through the real server: every refusal answers 409
//! with its code and details and changes nothing; the autoscaler stops at the replica
//! quota and says so once; a deploy larger than the host's free memory is refused with
//! `insufficient_capacity`; and `desired` changes racing each other (delete vs wake,
//! delete vs idle sleep) never bring a deleted instance back (#13.3).
//!
//! The tests that deploy launch `corral-runner` with the demo model through the local
//! driver (see `instances.rs` for what they need).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{
    Backend, MODEL, Reconciler, SERIAL, TestApp, runner_and_model, spawn_app,
    spawn_app_with_reconciler,
};
use corral_control::{ControlSettings, HostCapacity, ScalePolicy};
use corral_core::{
    Admission, ComputeSpec, ComputeType, Desired, Instance, InstanceSettings, Role, State,
    catalog::builtin_models,
};
use corral_drivers::ComputeDriver;
use corral_drivers::local::{LocalConfig, LocalDriver};
use corral_store::DesiredChange;
use serde_json::{Value, json};
use uuid::Uuid;

both_backends!(
    refusals_answer_409_and_change_nothing,
    capacity_refuses_a_deploy_larger_than_free_memory,
    autoscaler_stops_at_the_replica_quota,
    deletes_win_over_wakes_and_idle_sleep,
);

/// The local driver with the runner and short control windows; `tune` adjusts them.
fn reconciler(
    runner: PathBuf,
    model: PathBuf,
    tune: impl FnOnce(&mut ControlSettings),
) -> impl FnOnce(&Path) -> Reconciler {
    move |dir: &Path| {
        let models = dir.join("models");
        std::fs::create_dir_all(&models).unwrap();
        let link = models.join("smollm2-135m.gguf");
        if !link.exists() {
            std::os::unix::fs::symlink(&model, link).unwrap();
        }
        let mut config = LocalConfig::new(dir);
        config.runner_bin = Some(runner);
        let driver = Arc::new(LocalDriver::new(config).unwrap());
        let mut settings = ControlSettings {
            data_dir: dir.to_path_buf(),
            tick: Duration::from_millis(300),
            fast_tick: Duration::from_millis(100),
            health_interval: Duration::from_millis(500),
            resource_interval: Duration::from_millis(500),
            backoff_base: Duration::from_millis(200),
            stop_grace: Duration::from_secs(2),
            parallel: 2,
            context: 1024,
            ..ControlSettings::default()
        };
        tune(&mut settings);
        (vec![driver as Arc<dyn ComputeDriver>], settings)
    }
}

async fn platform(backend: Backend, tune: impl FnOnce(&mut ControlSettings)) -> Option<TestApp> {
    let (runner, model) = runner_and_model()?;
    let app = spawn_app_with_reconciler(backend, |_| {}, reconciler(runner, model, tune)).await;
    for m in builtin_models() {
        app.state.store.upsert_model(&m).await.unwrap();
    }
    Some(app)
}

/// Deletes every instance and waits until the reconciler has removed them (and their
/// replicas).
async fn teardown(app: &TestApp) {
    let state = &app.state;
    for inst in state.store.list_instances(None).await.unwrap() {
        let _ = state.control.set_desired(inst.id, Desired::Deleted).await;
    }
    let start = Instant::now();
    while !state.store.list_instances(None).await.unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(60), "not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn user_id(app: &TestApp, token: &str) -> Uuid {
    let (_, me) = app.get("/api/user/profile", Some(token)).await;
    me["id"].as_str().unwrap().parse().unwrap()
}

fn limit<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {view}"))
}

async fn instance_count(app: &TestApp) -> usize {
    app.state.store.list_instances(None).await.unwrap().len()
}

async fn refusals_answer_409_and_change_nothing(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(app) = platform(backend, |s| {
        s.quota_defaults = corral_core::Quota {
            max_instances: Some(3),
            max_replicas: Some(4),
            ..Default::default()
        }
    })
    .await
    else {
        return;
    };
    let (_, admin) = app.user_with_role(Role::Admin).await;
    let (_, user) = app.user_with_role(Role::User).await;
    let uid = user_id(&app, &user).await;

    // The defaults, with nothing in use.
    let (status, mine) = app.get("/api/user/quota", Some(&user)).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(limit(&mine, "max_instances")["limit"], 3);
    assert_eq!(limit(&mine, "max_instances")["in_use"], 0);
    assert_eq!(limit(&mine, "max_instances")["default"], true);

    // Admin-only, validated, for existing users.
    let path = format!("/api/admin/users/{uid}/quota");
    let (status, _) = app
        .put(&path, Some(&user), json!({"max_instances": 100}))
        .await;
    assert_eq!(status, 403);
    let (status, bad) = app
        .put(&path, Some(&admin), json!({"budget_alert_percent": 0}))
        .await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (400, &json!("invalid_quota"))
    );
    let (status, _) = app
        .put(&path, Some(&admin), json!({"max_instances": 1, "bogus": 1}))
        .await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (status, _) = app
        .put(
            &format!("/api/admin/users/{}/quota", Uuid::now_v7()),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, set) = app
        .put(
            &path,
            Some(&admin),
            json!({"max_instances": 1, "max_replicas": 2, "monthly_budget_usd": 25.5}),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["overrides"]["max_instances"], 1);
    assert_eq!(set["monthly_budget_usd"], 25.5);
    assert_eq!(set["budget_alert_percent"], Value::Null);
    assert_eq!(limit(&set, "max_replicas")["default"], false);

    // One deploy fits; the second is over max_instances.
    let (status, first) = app
        .post("/api/models/start", Some(&user), json!({"model_id": MODEL}))
        .await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_string();
    let (status, refused) = app
        .post("/api/models/start", Some(&user), json!({"model_id": MODEL}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "quota_exceeded");
    assert_eq!(
        refused["error"]["details"],
        json!({"limit": "max_instances", "allowed": 1, "in_use": 1, "requested": 1})
    );
    assert_eq!(instance_count(&app).await, 1, "nothing created");

    // Settings that need more replicas than the quota: refused, unchanged.
    let (status, refused) = app
        .put(
            &format!("/api/instances/{id}/settings"),
            Some(&user),
            json!({"min_replicas": 3, "max_replicas": 3}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(
        refused["error"]["details"],
        json!({"limit": "max_replicas", "allowed": 2, "in_use": 1, "requested": 2})
    );
    let stored = app
        .state
        .store
        .instance(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.settings.min_replicas, stored.target_replicas),
        (1, 1)
    );

    let (_, mine) = app.get("/api/user/quota", Some(&user)).await;
    assert_eq!(limit(&mine, "max_instances")["in_use"], 1);
    assert_eq!(limit(&mine, "max_replicas")["in_use"], 1);

    // Stopped, then started again with no replicas allowed: refused, stays stopped.
    let (status, _) = app
        .delete(&format!("/api/models/{id}/stop"), Some(&user))
        .await;
    assert_eq!(status, 202);
    let (_, mine) = app.get("/api/user/quota", Some(&user)).await;
    assert_eq!(
        limit(&mine, "max_replicas")["in_use"],
        0,
        "stopping gives back"
    );
    app.put(
        &path,
        Some(&admin),
        json!({"max_instances": 1, "max_replicas": 0}),
    )
    .await;
    let (status, refused) = app
        .post(
            &format!("/api/instances/{id}/start"),
            Some(&user),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["details"]["limit"], "max_replicas");
    assert_eq!(refused["error"]["details"]["allowed"], 0);
    let stored = app
        .state
        .store
        .instance(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.desired, Desired::Stopped);

    // Deleting gives the slot back: a new deploy (with replicas allowed again) fits.
    app.put(&path, Some(&admin), json!({"max_instances": 1}))
        .await;
    let (status, _) = app
        .delete(&format!("/api/instances/{id}"), Some(&user))
        .await;
    assert_eq!(status, 202);
    let (_, mine) = app.get("/api/user/quota", Some(&user)).await;
    assert_eq!(limit(&mine, "max_instances")["in_use"], 0);
    let (status, again) = app
        .post("/api/models/start", Some(&user), json!({"model_id": MODEL}))
        .await;
    assert_eq!(status, 201, "{again}");
    teardown(&app).await;
}

async fn capacity_refuses_a_deploy_larger_than_free_memory(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(app) = platform(backend, |s| {
        s.host = Some(HostCapacity {
            name: "test-host".into(),
            milli_vcpu: 4000,
            memory_mib: 1500,
        })
    })
    .await
    else {
        return;
    };
    let (_, user) = app.user_with_role(Role::User).await;
    let (status, refused) = app
        .post(
            "/api/models/start",
            Some(&user),
            json!({"model_id": MODEL, "cpu": 1, "memory": 2048}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "insufficient_capacity");
    assert_eq!(
        refused["error"]["details"],
        json!({"limit": "memory_mib", "allowed": 1500, "in_use": 0, "free": 1500, "requested": 2048})
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1500 memory_mib free"),
        "{refused}"
    );
    assert_eq!(instance_count(&app).await, 0, "nothing created");

    // One that fits is committed, and `GET /api/compute` shows what is left.
    let (status, fits) = app
        .post(
            "/api/models/start",
            Some(&user),
            json!({"model_id": MODEL, "cpu": 1, "memory": 1024}),
        )
        .await;
    assert_eq!(status, 201, "{fits}");
    let (status, offers) = app.get("/api/compute", Some(&user)).await;
    assert_eq!(status, 200);
    let local = offers
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["compute_type"] == "local")
        .unwrap();
    assert_eq!(
        local["capacity"],
        json!({
            "host": "test-host",
            "total": {"vcpu": 4.0, "memory_mib": 1500},
            "committed": {"vcpu": 1.0, "memory_mib": 1024},
            "free": {"vcpu": 3.0, "memory_mib": 476},
            "replicas": 1,
        })
    );
    // A second 1024 MiB replica does not fit in the 476 MiB left.
    let id = fits["id"].as_str().unwrap();
    let (status, refused) = app
        .put(
            &format!("/api/instances/{id}/settings"),
            Some(&user),
            json!({"min_replicas": 2, "max_replicas": 2}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["details"]["free"], 476);
    teardown(&app).await;
}

async fn autoscaler_stops_at_the_replica_quota(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(app) = platform(backend, |s| {
        s.autoscale = ScalePolicy {
            up_in_flight: 1.0,
            down_in_flight: 0.0,
            up_window: Duration::from_millis(500),
            down_window: Duration::from_secs(600),
        };
        s.quota_defaults = corral_core::Quota {
            max_replicas: Some(1),
            ..Default::default()
        };
    })
    .await
    else {
        return;
    };
    let (_, user) = app.user_with_role(Role::User).await;
    let (status, created) = app
        .post(
            "/api/models/start",
            Some(&user),
            json!({"model_id": MODEL, "min_replicas": 1, "max_replicas": 3}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let (_, inst) = app.get(&format!("/api/instances/{id}"), Some(&user)).await;
        if inst["status"] == "ready" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not ready: {inst}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Keep several requests in flight until the autoscaler has wanted to scale up.
    let stopped = |timeline: &Value| {
        timeline
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("autoscaling stopped at 1 replica(s): quota max_replicas is 1")
            })
            .count()
    };
    let start = Instant::now();
    loop {
        let calls = (0..4).map(|_| {
            app.post(
                "/v1/chat/completions",
                Some(&user),
                json!({
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "Count from 1 to 200."}],
                    "max_tokens": 300,
                }),
            )
        });
        for (status, body) in futures_util::future::join_all(calls).await {
            assert_eq!(status, 200, "{body}");
        }
        let (_, inst) = app.get(&format!("/api/instances/{id}"), Some(&user)).await;
        if stopped(&inst["timeline"]) > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no refusal recorded: {}",
            inst["timeline"]
        );
    }
    // More load after the refusal: still one replica, and the reason recorded once.
    let calls = (0..4).map(|_| {
        app.post(
            "/v1/chat/completions",
            Some(&user),
            json!({"model": MODEL, "messages": [{"role": "user", "content": "Count to 100."}], "max_tokens": 200}),
        )
    });
    futures_util::future::join_all(calls).await;
    let (_, inst) = app.get(&format!("/api/instances/{id}"), Some(&user)).await;
    assert_eq!(inst["target_replicas"], 1, "{inst}");
    assert_eq!(inst["replicas"].as_array().unwrap().len(), 1);
    assert_eq!(stopped(&inst["timeline"]), 1, "{}", inst["timeline"]);
    teardown(&app).await;
}

/// A sleeping (or running) instance in the store, without a reconciler: the races are
/// between the API's delete and the wake path or the idle check.
async fn stored_instance(app: &TestApp, owner: Uuid, desired: Desired) -> Uuid {
    let now = Utc::now();
    let inst = Instance {
        id: Uuid::now_v7(),
        owner_id: owner,
        model_id: MODEL.into(),
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
        desired,
        state: State::Sleeping,
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
        .create_instance(&inst, &Admission::unlimited())
        .await
        .unwrap();
    inst.id
}

async fn deletes_win_over_wakes_and_idle_sleep(backend: Backend) {
    let app = spawn_app(backend).await;
    for m in builtin_models() {
        app.state.store.upsert_model(&m).await.unwrap();
    }
    let (_, user) = app.user_with_role(Role::User).await;
    let owner = user_id(&app, &user).await;
    let store = &app.state.store;
    for round in 0..10 {
        // Delete racing a wake (the gateway's path for a sleeping instance).
        let id = stored_instance(&app, owner, Desired::Sleeping).await;
        let path = format!("/api/instances/{id}");
        let (wake, (status, _)) = tokio::join!(
            app.state.control.wake(id, Duration::from_millis(200)),
            app.delete(&path, Some(&user)),
        );
        assert_eq!(status, 202, "round {round}");
        // The wake either lost (told the instance is deleted) or won and timed out
        // waiting (there is no reconciler here); either way the delete stands.
        assert!(wake.is_err());
        let after = store.instance(id).await.unwrap().unwrap();
        assert_eq!(after.desired, Desired::Deleted, "round {round}: wake won");

        // Delete racing the idle check's compare-and-set from running to sleeping.
        let id = stored_instance(&app, owner, Desired::Running).await;
        let path = format!("/api/instances/{id}");
        let free = Admission::unlimited();
        let (idle, (status, _)) = tokio::join!(
            store.set_desired(id, Desired::Running, Desired::Sleeping, &free, Utc::now()),
            app.delete(&path, Some(&user)),
        );
        assert_eq!(status, 202, "round {round}");
        assert!(matches!(
            idle.unwrap(),
            Some(DesiredChange::Set(_) | DesiredChange::Stale(_))
        ));
        let after = store.instance(id).await.unwrap().unwrap();
        assert_eq!(after.desired, Desired::Deleted, "round {round}: idle won");
        // And nothing leaves deleted afterwards.
        assert!(app.state.control.start(id).await.is_err());
        assert!(
            app.state
                .control
                .wake(id, Duration::from_millis(50))
                .await
                .is_err()
        );
        assert_eq!(
            store.instance(id).await.unwrap().unwrap().desired,
            Desired::Deleted
        );
    }
}
