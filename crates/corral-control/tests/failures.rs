//! Failures that need no model server: missing weights, an unknown driver, a driver
//! that refuses every launch (back-off, then failed), deletion, wake errors. The stub
//! driver below launches nothing; everything else is the real reconciler and store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use corral_control::{Control, ControlSettings, Error, FileWeights};
use corral_core::{
    CatalogModel, ComputeOffer, ComputeSpec, ComputeType, Desired, Instance, InstanceSettings,
    ModelSource, Role, State, User,
};
use corral_drivers::{ComputeDriver, LaunchSpec, LogPage, Observed, ReplicaRef, ResourceUsage};
use corral_store::Store;
use tokio::sync::oneshot;
use uuid::Uuid;

/// A driver whose every launch is refused (say, capacity exhausted).
struct Refusing;

#[async_trait]
impl ComputeDriver for Refusing {
    fn name(&self) -> &'static str {
        "refusing"
    }
    fn offers(&self) -> Vec<ComputeOffer> {
        Vec::new()
    }
    async fn launch(&self, _: &LaunchSpec) -> corral_drivers::Result<ReplicaRef> {
        Err(corral_drivers::Error::Provider("no capacity".into()))
    }
    async fn observe(&self, _: &ReplicaRef) -> corral_drivers::Result<Observed> {
        Ok(Observed::Lost)
    }
    async fn stop(&self, _: &ReplicaRef, _: Duration) -> corral_drivers::Result<()> {
        Ok(())
    }
    async fn logs(
        &self,
        _: &ReplicaRef,
        _: Option<&str>,
        _: usize,
    ) -> corral_drivers::Result<LogPage> {
        Ok(LogPage {
            lines: Vec::new(),
            next: None,
        })
    }
    async fn resources(&self, _: &ReplicaRef) -> corral_drivers::Result<Option<ResourceUsage>> {
        Ok(None)
    }
    async fn orphans(&self, _: &[ReplicaRef]) -> corral_drivers::Result<Vec<ReplicaRef>> {
        Ok(Vec::new())
    }
}

fn model(id: &str, file: &str) -> CatalogModel {
    CatalogModel {
        id: id.into(),
        family: "Test".into(),
        size: "1B".into(),
        cpu_supported: true,
        gpu_supported: false,
        memory_required: 512,
        expected_deploy_seconds: 5,
        source: ModelSource::File {
            path: PathBuf::from("models").join(file).display().to_string(),
        },
        weights_bytes: None,
        builtin: false,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    control: Control,
    owner: User,
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<()>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("corral.db").display());
    let store = corral_store::open(&url).await.unwrap();
    let owner = User::new(
        "o@example.test",
        "$argon2id$fake".into(),
        Role::User,
        Utc::now(),
    );
    store.create_user(&owner).await.unwrap();
    std::fs::create_dir(dir.path().join("models")).unwrap();
    std::fs::write(dir.path().join("models/present.gguf"), b"GGUF").unwrap();
    for (id, file) in [
        ("missing:1b", "missing.gguf"),
        ("present:1b", "present.gguf"),
    ] {
        store.upsert_model(&model(id, file)).await.unwrap();
    }
    let settings = ControlSettings {
        data_dir: dir.path().to_path_buf(),
        tick: Duration::from_millis(200),
        fast_tick: Duration::from_millis(50),
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        max_start_attempts: 4,
        ..ControlSettings::default()
    };
    let control = Control::new(
        store.clone(),
        vec![Arc::new(Refusing)],
        Arc::new(FileWeights::new(dir.path())),
        settings,
    );
    let (stop, rx) = oneshot::channel();
    let run = tokio::spawn(control.clone().run(async {
        let _ = rx.await;
    }));
    Setup {
        _dir: dir,
        store,
        control,
        owner,
        stop,
        run,
    }
}

impl Setup {
    async fn instance(&self, model: &str, driver: &str, desired: Desired, state: State) -> Uuid {
        let now = Utc::now();
        let inst = Instance {
            id: Uuid::now_v7(),
            owner_id: self.owner.id,
            model_id: model.into(),
            driver: driver.into(),
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
            state,
            state_reason: None,
            target_replicas: 1,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            running_since: None,
            running_seconds: 0,
            team_id: None,
        };
        self.store
            .create_instance(&inst, &corral_core::Admission::unlimited())
            .await
            .unwrap();
        self.control.nudge();
        inst.id
    }

    async fn wait(&self, id: Uuid, f: impl Fn(Option<&Instance>) -> bool) -> Option<Instance> {
        let start = Instant::now();
        loop {
            let inst = self.store.instance(id).await.unwrap();
            if f(inst.as_ref()) {
                return inst;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out: {inst:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        self.run.await.unwrap();
    }
}

async fn failed(s: &Setup, id: Uuid) -> Instance {
    s.wait(id, |i| i.is_some_and(|i| i.state == State::Failed))
        .await
        .unwrap()
}

#[tokio::test]
async fn missing_weights_fail_with_the_reason() {
    let s = setup().await;
    let id = s
        .instance("missing:1b", "refusing", Desired::Running, State::Pending)
        .await;
    let reason = failed(&s, id).await.state_reason.unwrap();
    assert!(
        reason.contains("not found") && reason.contains("missing.gguf"),
        "{reason}"
    );
    let states: Vec<_> = s
        .store
        .list_events(id, 100)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| e.to_state)
        .collect();
    assert_eq!(states, [State::Provisioning, State::Failed]);
    let err = s
        .control
        .wake(id, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    assert!(err.to_string().contains("not found"), "{err}");
    s.finish().await;
}

#[tokio::test]
async fn an_unknown_driver_fails_the_instance() {
    let s = setup().await;
    let id = s
        .instance("present:1b", "ecs", Desired::Running, State::Pending)
        .await;
    let reason = failed(&s, id).await.state_reason.unwrap();
    assert!(reason.contains("no compute driver \"ecs\""), "{reason}");
    // Still deletable: nothing of it runs anywhere this server could reach.
    s.control.set_desired(id, Desired::Deleted).await.unwrap();
    s.wait(id, |i| i.is_none()).await;
    s.finish().await;
}

#[tokio::test]
async fn refused_launches_back_off_then_fail() {
    let s = setup().await;
    let id = s
        .instance("present:1b", "refusing", Desired::Running, State::Pending)
        .await;
    let inst = failed(&s, id).await;
    let reason = inst.state_reason.unwrap();
    assert!(
        reason.contains("4 times in a row") && reason.contains("no capacity"),
        "{reason}"
    );
    let events = s.store.list_events(id, 100).await.unwrap();
    let delays: Vec<&str> = events
        .iter()
        .filter_map(|e| e.message.split("restarting in ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap())
        .collect();
    assert_eq!(delays, ["0.05", "0.1", "0.2", "0.4"], "{events:#?}");
    assert!(s.store.list_replicas(id).await.unwrap().is_empty());
    assert!(
        s.store.runs_for_instance(id).await.unwrap().is_empty(),
        "a refused launch runs nothing, so nothing is billed"
    );
    assert!(s.control.stats().restarts_total >= 3);
    s.finish().await;
}

#[tokio::test]
async fn deleting_an_instance_that_never_ran_removes_it() {
    let s = setup().await;
    let id = s
        .instance("present:1b", "refusing", Desired::Stopped, State::Stopped)
        .await;
    s.control.set_desired(id, Desired::Deleted).await.unwrap();
    s.wait(id, |i| i.is_none()).await;
    s.finish().await;
}

#[tokio::test]
async fn wake_refuses_what_cannot_serve() {
    let s = setup().await;
    assert!(matches!(
        s.control.wake(Uuid::now_v7(), Duration::from_secs(1)).await,
        Err(Error::NotFound)
    ));
    let stopped = s
        .instance("present:1b", "refusing", Desired::Stopped, State::Stopped)
        .await;
    assert!(matches!(
        s.control.wake(stopped, Duration::from_secs(1)).await,
        Err(Error::Stopped)
    ));
    let sleeping = s
        .instance("present:1b", "refusing", Desired::Sleeping, State::Sleeping)
        .await;
    let mut settings = InstanceSettings {
        wake_on_request: false,
        ..InstanceSettings::default()
    };
    s.store
        .update_instance_settings(
            sleeping,
            &settings,
            &corral_core::Admission::unlimited(),
            Utc::now(),
        )
        .await
        .unwrap();
    assert!(matches!(
        s.control.wake(sleeping, Duration::from_secs(1)).await,
        Err(Error::WakeDisabled)
    ));
    // A wake that cannot succeed ends with the failure, not by waiting out the timeout.
    settings.wake_on_request = true;
    s.store
        .update_instance_settings(
            sleeping,
            &settings,
            &corral_core::Admission::unlimited(),
            Utc::now(),
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    let err = s
        .control
        .wake(sleeping, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "noticed the failure without the timeout"
    );
    let events = s.store.list_events(sleeping, 100).await.unwrap();
    assert_eq!(events[0].message, "woken by a request");
    assert_eq!(events[1].to_state, Some(State::Pending));
    // And a wake that takes too long times out.
    let slow = s
        .instance("present:1b", "refusing", Desired::Running, State::Pending)
        .await;
    let err = s
        .control
        .wake(slow, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    s.finish().await;
}

#[tokio::test]
async fn start_retries_a_failed_instance_and_stop_of_a_sleeping_one_stops_it() {
    let s = setup().await;
    let id = s
        .instance("missing:1b", "refusing", Desired::Running, State::Pending)
        .await;
    failed(&s, id).await;
    // Failed stays failed while desired is still running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.store.instance(id).await.unwrap().unwrap().state,
        State::Failed
    );
    let inst = s.control.start(id).await.unwrap();
    assert_eq!(inst.state, State::Pending);
    assert!(inst.state_reason.is_none());
    failed(&s, id).await;
    let events = s.store.list_events(id, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message == "started again by the user")
    );
    s.control.set_desired(id, Desired::Deleted).await.unwrap();
    s.wait(id, |i| i.is_none()).await;
    assert!(matches!(s.control.start(id).await, Err(Error::NotFound)));

    let sleeping = s
        .instance("present:1b", "refusing", Desired::Sleeping, State::Sleeping)
        .await;
    s.control
        .set_desired(sleeping, Desired::Stopped)
        .await
        .unwrap();
    let stopped = s
        .wait(sleeping, |i| i.is_some_and(|i| i.state == State::Stopped))
        .await
        .unwrap();
    assert_eq!(stopped.desired, Desired::Stopped);
    let stats = s.control.stats();
    assert!(
        stats.instances_by_state.contains(&(State::Stopped, 1)),
        "{stats:?}"
    );
    s.finish().await;
}
