//! Cost through the API (`GET /api/usage`, the `cost` of `GET /api/instances/{id}`),
//! priced from the replica runs in the real store: windowed by `since`/`until`, exact
//! per replica, kept after the instance and its owner are deleted, owner-scoped, and
//! the same for ECS-shaped compute (Fargate, Fargate Spot, GPU instance types) as for
//! local. Runs are written to the store as the reconciler writes them, at fixed past
//! times, so every figure is known to the cent.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{Backend, TestApp, spawn_app_with};
use corral_core::{
    ComputeSpec, ComputeType, Desired, Instance, InstanceSettings, PriceTable, Role, State,
    catalog::builtin_models,
};
use corral_store::ReplicaRun;
use serde_json::Value;
use uuid::Uuid;

both_backends!(
    cost_is_windowed_per_replica_and_survives_deletion,
    ecs_compute_is_priced_from_the_table,
    cost_is_owner_scoped,
);

/// USD per local replica-hour in these tests (the default is 0): one cent a second
/// would hide nothing, 3.6 $/h is 0.1 cent a second.
const LOCAL_HOUR: f64 = 3.6;

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| s.prices.local_hour = LOCAL_HOUR).await
}

fn local() -> ComputeSpec {
    ComputeSpec {
        compute_type: ComputeType::Local,
        cpu: 1.0,
        memory: 1024,
        gpu_count: 0,
        instance_type: None,
        spot: false,
    }
}

fn fargate(spot: bool) -> ComputeSpec {
    ComputeSpec {
        compute_type: ComputeType::Fargate,
        cpu: 1.0,
        memory: 2048,
        gpu_count: 0,
        instance_type: None,
        spot,
    }
}

fn gpu(instance_type: &str) -> ComputeSpec {
    ComputeSpec {
        compute_type: ComputeType::Gpu,
        cpu: 4.0,
        memory: 16384,
        gpu_count: 1,
        instance_type: Some(instance_type.into()),
        spot: false,
    }
}

/// An instance row (nothing launched) of `owner` with `compute` on `driver`.
async fn instance(app: &TestApp, owner: Uuid, driver: &str, compute: ComputeSpec) -> Instance {
    for m in builtin_models() {
        app.state.store.upsert_model(&m).await.unwrap();
    }
    let now = Utc::now();
    let inst = Instance {
        id: Uuid::now_v7(),
        owner_id: owner,
        model_id: "smollm2:135m".into(),
        driver: driver.into(),
        compute,
        settings: InstanceSettings::default(),
        desired: Desired::Stopped,
        state: State::Stopped,
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
    inst
}

/// A run of a new replica of `inst`, as the reconciler records it.
async fn run(
    app: &TestApp,
    inst: &Instance,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
) -> ReplicaRun {
    let run = ReplicaRun {
        id: Uuid::now_v7(),
        replica_id: Uuid::now_v7(),
        instance_id: inst.id,
        owner_id: inst.owner_id,
        model_id: inst.model_id.clone(),
        driver: inst.driver.clone(),
        driver_ref: format!("ref-{}", Uuid::now_v7().simple()),
        compute: inst.compute.clone(),
        started_at,
        ended_at,
    };
    app.state.store.start_run(&run).await.unwrap();
    run
}

async fn user(app: &TestApp, role: Role) -> (Uuid, String) {
    let (email, token) = app.user_with_role(role).await;
    let id = app
        .state
        .store
        .user_by_email(&email)
        .await
        .unwrap()
        .unwrap()
        .id;
    (id, token)
}

/// A whole hour well in the past (so "now" never clips it), plus minutes.
fn at(hour: i64, minutes: i64) -> DateTime<Utc> {
    let base = Utc::now() - Duration::days(3);
    let base = DateTime::from_timestamp(base.timestamp() - base.timestamp() % 3600, 0).unwrap();
    base + Duration::hours(hour) + Duration::minutes(minutes)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn usage(app: &TestApp, token: &str, query: &str) -> Value {
    let (status, body) = app.get(&format!("/api/usage?{query}"), Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn group<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == key)
        .unwrap_or_else(|| panic!("no group {key} in {report}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

async fn cost_is_windowed_per_replica_and_survives_deletion(backend: Backend) {
    let app = app(backend).await;
    let (owner, token) = user(&app, Role::User).await;
    let inst = instance(&app, owner, "local", local()).await;
    let key = inst.id.to_string();
    // One replica 10:00–11:00, a second (scaled out) 10:30–10:45, and after a stop a
    // new replica 12:00–12:10.
    run(&app, &inst, at(10, 0), Some(at(11, 0))).await;
    run(&app, &inst, at(10, 30), Some(at(10, 45))).await;
    run(&app, &inst, at(12, 0), Some(at(12, 10))).await;
    let per_second = LOCAL_HOUR / 3600.0;

    // All time: 60 + 15 + 10 replica-minutes.
    let all = usage(&app, &token, "").await;
    let g = group(&all, &key);
    assert_eq!(g["replica_seconds"], 85 * 60, "{all}");
    assert!(
        close(g["cost_usd"].as_f64().unwrap(), 85.0 * 60.0 * per_second),
        "{all}"
    );
    assert!(close(
        all["total_cost_usd"].as_f64().unwrap(),
        85.0 * 60.0 * per_second
    ));
    assert_eq!(g["cost_incomplete"], false);

    // 10:40–12:05 takes the end of the first two runs and half of the third:
    // 20 + 5 + 5 minutes. The window is exact to the second, not to the hour.
    let q = format!("since={}&until={}", rfc3339(at(10, 40)), rfc3339(at(12, 5)));
    let window = usage(&app, &token, &q).await;
    let g = group(&window, &key);
    assert_eq!(g["replica_seconds"], 30 * 60, "{window}");
    assert!(close(
        g["cost_usd"].as_f64().unwrap(),
        30.0 * 60.0 * per_second
    ));

    // A window with no run in it costs nothing, but the existing instance is listed.
    let q = format!("since={}&until={}", rfc3339(at(11, 0)), rfc3339(at(12, 0)));
    let empty = usage(&app, &token, &q).await;
    assert_eq!(group(&empty, &key)["cost_usd"], 0.0);

    // The instance detail: all its runs, wall time with a replica counted once.
    let (status, detail) = app
        .get(&format!("/api/instances/{key}"), Some(&token))
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["cost"]["replica_seconds"], 85 * 60, "{detail}");
    assert_eq!(detail["cost"]["running_seconds"], 70 * 60, "{detail}");
    assert!(close(
        detail["cost"]["usd"].as_f64().unwrap(),
        85.0 * 60.0 * per_second
    ));
    assert!(close(
        detail["cost"]["hourly_usd"].as_f64().unwrap(),
        LOCAL_HOUR
    ));

    // Deleting the instance, then its owner, does not make the cost go away: an admin
    // still sees it, per instance and per user.
    assert!(
        app.state
            .store
            .delete_instance(inst.id, &corral_core::Admission::unlimited())
            .await
            .unwrap()
    );
    let after = usage(&app, &token, "").await;
    assert!(close(
        group(&after, &key)["cost_usd"].as_f64().unwrap(),
        85.0 * 60.0 * per_second
    ));
    assert!(app.state.store.delete_user(owner).await.unwrap());
    let (_, admin) = user(&app, Role::Admin).await;
    let by_user = usage(&app, &admin, "group_by=user").await;
    let g = group(&by_user, &owner.to_string());
    assert!(close(
        g["cost_usd"].as_f64().unwrap(),
        85.0 * 60.0 * per_second
    ));
    assert_eq!(
        g["label"],
        Value::Null,
        "a deleted user has no e-mail any more"
    );
}

async fn ecs_compute_is_priced_from_the_table(backend: Backend) {
    let app = app(backend).await;
    let (owner, token) = user(&app, Role::User).await;
    let prices = PriceTable::default();
    let on_demand = instance(&app, owner, "ecs", fargate(false)).await;
    let spot = instance(&app, owner, "ecs", fargate(true)).await;
    let g5 = instance(&app, owner, "ecs", gpu("g5.xlarge")).await;
    let unlisted = instance(&app, owner, "ecs", gpu("x9.unlisted")).await;
    // Half an hour each; the Fargate one with two replicas for the second quarter.
    for inst in [&on_demand, &spot, &g5, &unlisted] {
        run(&app, inst, at(10, 0), Some(at(10, 30))).await;
    }
    run(&app, &on_demand, at(10, 15), Some(at(10, 30))).await;

    let report = usage(&app, &token, "").await;
    let usd = |inst: &Instance| {
        group(&report, &inst.id.to_string())["cost_usd"]
            .as_f64()
            .unwrap()
    };
    let hourly = |spec: &ComputeSpec| prices.hourly(spec).unwrap();
    // 1 vCPU and 2 GB at us-east-1 Fargate prices, 0.75 replica-hours.
    assert!(
        close(usd(&on_demand), 0.75 * (0.04048 + 2.0 * 0.004445)),
        "{report}"
    );
    assert!(close(usd(&on_demand), 0.75 * hourly(&fargate(false))));
    assert!(close(usd(&spot), 0.5 * hourly(&fargate(true))));
    assert!(usd(&spot) < usd(&on_demand) / 1.5);
    assert!(close(usd(&g5), 0.5 * 1.006), "{report}");
    // The unlisted type is left out of the figure and says so.
    let g = group(&report, &unlisted.id.to_string());
    assert_eq!(g["cost_usd"], 0.0);
    assert_eq!(g["cost_incomplete"], true);
    assert_eq!(g["replica_seconds"], 30 * 60);
    let total = report["total_cost_usd"].as_f64().unwrap();
    assert!(close(total, usd(&on_demand) + usd(&spot) + usd(&g5)));

    // Per user, the same total; the instance detail of the GPU one agrees.
    let by_user = usage(&app, &token, "group_by=user").await;
    let mine = group(&by_user, &owner.to_string());
    assert!(close(mine["cost_usd"].as_f64().unwrap(), total));
    assert_eq!(mine["cost_incomplete"], true);
    let (_, detail) = app
        .get(&format!("/api/instances/{}", g5.id), Some(&token))
        .await;
    assert!(
        close(detail["cost"]["usd"].as_f64().unwrap(), 0.5 * 1.006),
        "{detail}"
    );
    assert!(close(detail["cost"]["hourly_usd"].as_f64().unwrap(), 1.006));
    let (_, detail) = app
        .get(&format!("/api/instances/{}", unlisted.id), Some(&token))
        .await;
    assert_eq!(detail["cost"]["usd"], Value::Null, "{detail}");
    assert_eq!(detail["cost"]["replica_seconds"], 30 * 60);
}

async fn cost_is_owner_scoped(backend: Backend) {
    let app = app(backend).await;
    let (alice, alice_token) = user(&app, Role::User).await;
    let (bob, bob_token) = user(&app, Role::User).await;
    let a = instance(&app, alice, "local", local()).await;
    let b = instance(&app, bob, "local", local()).await;
    run(&app, &a, at(10, 0), Some(at(11, 0))).await;
    run(&app, &b, at(10, 0), Some(at(10, 30))).await;

    let mine = usage(&app, &alice_token, "").await;
    let keys: Vec<&str> = mine["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [a.id.to_string()], "{mine}");
    assert!(close(mine["total_cost_usd"].as_f64().unwrap(), LOCAL_HOUR));
    let (status, _) = app
        .get(&format!("/api/instances/{}", a.id), Some(&bob_token))
        .await;
    assert_eq!(status, 404);

    // An admin sees both, per model in one group.
    let (_, admin) = user(&app, Role::Admin).await;
    let by_model = usage(&app, &admin, "group_by=model").await;
    let g = group(&by_model, "smollm2:135m");
    assert!(
        close(g["cost_usd"].as_f64().unwrap(), 1.5 * LOCAL_HOUR),
        "{by_model}"
    );
    assert_eq!(g["replica_seconds"], 90 * 60);
}
