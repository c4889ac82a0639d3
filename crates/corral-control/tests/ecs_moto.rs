//! The reconciler with the real ECS driver against moto (the AWS emulator): what happens
//! to ECS tasks when a replica is lost, and the periodic orphan sweep (issue 13 item 2).
//!
//! Run under `scripts/with-moto.sh` (it sets `AWS_ENDPOINT_URL`); `CORRAL_SKIP_MOTO=1`
//! skips these tests. The driver is wrapped only to decide, per task, that it is lost
//! (DescribeTasks on moto lists every task it started, so a lost task cannot be made
//! there) and to record the order of launches and stops; every call reaches moto.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use corral_control::{Control, ControlSettings, FileWeights};
use corral_core::{
    CatalogModel, ComputeOffer, ComputeSpec, ComputeType, Desired, Instance, InstanceSettings,
    ModelSource, Role, State, User,
};
use corral_driver_ecs::{EcsConfig, EcsDriver, LaunchMode};
use corral_drivers::{ComputeDriver, LaunchSpec, LogPage, Observed, ReplicaRef, ResourceUsage};
use corral_store::Store;
use tokio::sync::oneshot;
use uuid::Uuid;

const REGION: &str = "us-east-1";
const MODEL: &str = "smollm2:135m";

fn moto() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_string()),
        _ if std::env::var("CORRAL_SKIP_MOTO").as_deref() == Ok("1") => None,
        _ => panic!(
            "these tests need moto: run `scripts/with-moto.sh cargo test -p corral-control \
             --test ecs_moto`, or set CORRAL_SKIP_MOTO=1"
        ),
    }
}

/// The ECS driver, with the tasks named in `lost` observed as lost.
struct Losing {
    inner: EcsDriver,
    lost: Mutex<HashSet<String>>,
    /// `launch <n> <arn>` and `stop <arn>`, in call order.
    calls: Mutex<Vec<String>>,
}

#[async_trait]
impl ComputeDriver for Losing {
    fn name(&self) -> &'static str {
        "ecs"
    }
    fn offers(&self) -> Vec<ComputeOffer> {
        self.inner.offers()
    }
    fn reads_model_path(&self) -> bool {
        self.inner.reads_model_path()
    }
    // The configuration's runtime: no runner image, so the Ollama image.
    fn runtime(&self) -> corral_drivers::Runtime {
        self.inner.runtime()
    }
    async fn launch(&self, spec: &LaunchSpec) -> corral_drivers::Result<ReplicaRef> {
        let r = self.inner.launch(spec).await?;
        let call = format!("launch {} {}", spec.launch, r.driver_ref);
        self.calls.lock().unwrap().push(call);
        Ok(r)
    }
    async fn observe(&self, r: &ReplicaRef) -> corral_drivers::Result<Observed> {
        if self.lost.lock().unwrap().contains(&r.driver_ref) {
            return Ok(Observed::Lost);
        }
        self.inner.observe(r).await
    }
    async fn stop(&self, r: &ReplicaRef, grace: Duration) -> corral_drivers::Result<()> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("stop {}", r.driver_ref));
        self.inner.stop(r, grace).await
    }
    async fn logs(
        &self,
        r: &ReplicaRef,
        cursor: Option<&str>,
        tail: usize,
    ) -> corral_drivers::Result<LogPage> {
        self.inner.logs(r, cursor, tail).await
    }
    async fn resources(&self, r: &ReplicaRef) -> corral_drivers::Result<Option<ResourceUsage>> {
        self.inner.resources(r).await
    }
    async fn orphans(&self, known: &[ReplicaRef]) -> corral_drivers::Result<Vec<ReplicaRef>> {
        self.inner.orphans(known).await
    }
}

/// An EC2 Query call to moto (unsigned: moto routes by the service in the header).
async fn ec2_values(endpoint: &str, params: &str, tag: &str) -> Vec<String> {
    let body = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header(
            "Authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=test/20260101/{REGION}/ec2/aws4_request, \
                 SignedHeaders=host, Signature=0"
            ),
        )
        .body(format!("{params}&Version=2016-11-15"))
        .send()
        .await
        .expect("moto answers EC2 calls")
        .text()
        .await
        .unwrap();
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    body.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next())
        .map(str::to_string)
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    driver: Arc<Losing>,
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    owner: User,
    control: Control,
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<()>,
}

async fn setup(name: &str, sweep_interval: Duration) -> Option<Setup> {
    let endpoint = moto()?;
    // Tasks stay RUNNING until StopTask (moto otherwise advances them per DescribeTasks).
    let pinned = reqwest::Client::new()
        .post(format!("{endpoint}/moto-api/state-manager/set-transition"))
        .body(r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#)
        .send()
        .await
        .unwrap();
    assert!(pinned.status().is_success());
    let subnets = ec2_values(&endpoint, "Action=DescribeSubnets", "subnetId").await;
    let groups = ec2_values(
        &endpoint,
        "Action=DescribeSecurityGroups&Filter.1.Name=group-name&Filter.1.Value.1=default",
        "groupId",
    )
    .await;
    let cluster = format!("corral-ctl-{name}");
    let cfg = EcsConfig {
        cluster: cluster.clone(),
        subnets: vec![subnets[0].clone()],
        security_groups: vec![groups[0].clone()],
        assign_public_ip: false,
        runtime_image: EcsConfig::DEFAULT_RUNTIME_IMAGE.into(),
        runner_image: None,
        execution_role_arn: "arn:aws:iam::123456789012:role/corral-execution".into(),
        task_role_arn: None,
        log_group: format!("/corral/ctl-{name}"),
        region: REGION.into(),
        gpu_capacity_provider: None,
        gpu_instance_types: vec![],
        gpu_capacity_providers: Default::default(),
        endpoint_url: Some(endpoint.clone()),
        launch: LaunchMode::Task,
        service_start_timeout: EcsConfig::DEFAULT_SERVICE_START_TIMEOUT,
        missing_grace: EcsConfig::DEFAULT_MISSING_GRACE,
    };
    let sdk = corral_driver_ecs::sdk_config(REGION, Some(&endpoint)).await;
    let ecs = aws_sdk_ecs::Client::new(&sdk);
    ecs.create_cluster()
        .cluster_name(&cluster)
        .send()
        .await
        .unwrap();
    let driver = Arc::new(Losing {
        inner: EcsDriver::new(cfg).await.unwrap(),
        lost: Mutex::default(),
        calls: Mutex::default(),
    });

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("corral.db").display());
    let store = corral_store::open(&url).await.unwrap();
    let owner = User::new(
        "o@example.test",
        "$argon2id$x".into(),
        Role::User,
        Utc::now(),
    );
    store.create_user(&owner).await.unwrap();
    store
        .upsert_model(&CatalogModel {
            id: MODEL.into(),
            family: "SmolLM2".into(),
            size: "135M".into(),
            cpu_supported: true,
            gpu_supported: false,
            memory_required: 512,
            expected_deploy_seconds: 5,
            source: ModelSource::Ollama { name: MODEL.into() },
            weights_bytes: None,
            builtin: false,
        })
        .await
        .unwrap();
    let settings = ControlSettings {
        data_dir: dir.path().to_path_buf(),
        tick: Duration::from_millis(200),
        fast_tick: Duration::from_millis(50),
        health_timeout: Duration::from_millis(100),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        stop_grace: Duration::from_secs(1),
        sweep_interval,
        ..ControlSettings::default()
    };
    let control = Control::new(
        store.clone(),
        vec![driver.clone()],
        // Nothing to resolve: the ECS task pulls the model itself.
        Arc::new(FileWeights::new(dir.path())),
        settings,
    );
    let (stop, rx) = oneshot::channel();
    let run = tokio::spawn(control.clone().run(async {
        let _ = rx.await;
    }));
    Some(Setup {
        _dir: dir,
        store,
        driver,
        ecs,
        cluster,
        owner,
        control,
        stop,
        run,
    })
}

impl Setup {
    async fn deploy(&self) -> Uuid {
        let now = Utc::now();
        let inst = Instance {
            id: Uuid::now_v7(),
            owner_id: self.owner.id,
            team_id: None,
            model_id: MODEL.into(),
            driver: "ecs".into(),
            compute: ComputeSpec {
                compute_type: ComputeType::Fargate,
                cpu: 0.25,
                memory: 512,
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
        };
        self.store
            .create_instance(&inst, &corral_core::Admission::unlimited())
            .await
            .unwrap();
        self.control.nudge();
        inst.id
    }

    /// Polls `f` every 20 ms for up to 20 s.
    async fn until<T>(&self, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The task ARN the replica row records, once it records one.
    async fn recorded_task(&self, id: Uuid) -> ReplicaRef {
        self.until("a launched replica", async || {
            let r = self.store.list_replicas(id).await.unwrap().pop()?;
            (!r.driver_ref.is_empty()).then_some(ReplicaRef {
                instance_id: id,
                replica_id: r.id,
                driver_ref: r.driver_ref,
            })
        })
        .await
    }

    async fn status(&self, arn: &str) -> String {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.cluster)
            .tasks(arn)
            .send()
            .await
            .unwrap();
        out.tasks()[0].last_status().unwrap_or_default().to_string()
    }

    /// Deletes the instance and waits until it is gone (every replica stopped).
    async fn delete(&self, id: Uuid) {
        self.control
            .set_desired(id, Desired::Deleted)
            .await
            .unwrap();
        self.until("the instance deleted", async || {
            self.store
                .instance(id)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        self.run.await.unwrap();
    }
}

/// Issue 13 item 2: a replica whose task ECS no longer lists is relaunched only after
/// StopTask of that task; nothing of it keeps running beside its replacement.
#[tokio::test]
async fn item2_a_lost_replica_task_is_stopped_before_its_relaunch() {
    let Some(s) = setup("lost", Duration::from_secs(300)).await else {
        return;
    };
    let id = s.deploy().await;
    let first = s.recorded_task(id).await;
    s.driver
        .lost
        .lock()
        .unwrap()
        .insert(first.driver_ref.clone());
    let second = s
        .until("the relaunch", async || {
            let r = s.recorded_task(id).await;
            (r.driver_ref != first.driver_ref).then_some(r)
        })
        .await;
    assert_eq!(
        second.replica_id, first.replica_id,
        "the same replica, relaunched"
    );

    let calls = s.driver.calls.lock().unwrap().clone();
    let stopped = calls
        .iter()
        .position(|c| *c == format!("stop {}", first.driver_ref))
        .unwrap_or_else(|| panic!("the lost task was never stopped: {calls:?}"));
    let relaunched = calls
        .iter()
        .position(|c| *c == format!("launch 1 {}", second.driver_ref))
        .unwrap_or_else(|| panic!("no relaunch numbered 1: {calls:?}"));
    assert!(
        stopped < relaunched,
        "stopped after the relaunch: {calls:?}"
    );
    assert_eq!(s.status(&first.driver_ref).await, "STOPPED");
    assert_eq!(s.status(&second.driver_ref).await, "RUNNING");

    s.delete(id).await;
    assert_eq!(s.status(&second.driver_ref).await, "STOPPED");
    s.finish().await;
}

/// Issue 13 item 2: the orphan sweep runs while the server runs, not only at start-up,
/// and goes by task ARN: a task of an unknown replica and a second task of a known one
/// are stopped, the task the replica's row names keeps running.
#[tokio::test]
async fn item2_the_sweep_stops_tasks_no_replica_owns_while_serving() {
    let Some(s) = setup("sweep", Duration::from_millis(500)).await else {
        return;
    };
    let id = s.deploy().await;
    let owned = s.recorded_task(id).await;
    let spec = LaunchSpec {
        instance_id: id,
        replica_id: owned.replica_id,
        launch: 7,
        model_id: MODEL.into(),
        source: ModelSource::Ollama { name: MODEL.into() },
        model_path: None,
        compute: s.store.instance(id).await.unwrap().unwrap().compute,
        runtime: corral_drivers::Runtime::Ollama,
        parallel: 1,
        context: 2048,
    };
    let twin = s.driver.inner.launch(&spec).await.unwrap();
    let stranger = s
        .driver
        .inner
        .launch(&LaunchSpec {
            replica_id: Uuid::now_v7(),
            ..spec
        })
        .await
        .unwrap();
    for leaked in [&twin, &stranger] {
        s.until("the sweep stopping a leaked task", async || {
            (s.status(&leaked.driver_ref).await == "STOPPED").then_some(())
        })
        .await;
    }
    assert_eq!(s.status(&owned.driver_ref).await, "RUNNING");
    assert_eq!(
        s.recorded_task(id).await,
        owned,
        "the replica was left alone"
    );
    s.delete(id).await;
    s.finish().await;
}
