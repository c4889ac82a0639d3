//! A real reconciler over a real SQLite store and the real local driver running
//! `corral-runner` with the demo model.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use corral_control::{Control, ControlSettings, FileWeights, ScalePolicy};
use corral_core::{
    CatalogModel, ComputeSpec, ComputeType, Desired, Instance, InstanceEvent, InstanceSettings,
    ModelSource, Role, State, User,
};
use corral_drivers::ComputeDriver;
use corral_drivers::local::{LocalConfig, LocalDriver};
use corral_store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const MODEL_ID: &str = "smollm2:135m";

/// Tests that launch model servers run one at a time: two loads in parallel on a
/// 2-core machine would measure contention, not deploy time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The runner binary and the GGUF, or None when the environment says to skip tests
/// that need them. Missing pieces without `CORRAL_SKIP_RUNNER=1` fail loudly.
pub fn runner_and_model() -> Option<(PathBuf, PathBuf)> {
    if std::env::var("CORRAL_SKIP_RUNNER").is_ok_and(|v| v == "1") {
        eprintln!("CORRAL_SKIP_RUNNER=1: skipping a test that needs corral-runner and the model");
        return None;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let runner = std::env::var_os("CORRAL_RUNNER_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            ["release", "debug"]
                .iter()
                .map(|p| target.join(p).join("corral-runner"))
                .find(|p| p.is_file())
        });
    let model = std::env::var_os("CORRAL_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".corral/models/smollm2-135m.gguf"));
    let Some(runner) = runner.filter(|p| p.is_file()) else {
        panic!(
            "corral-runner not found: build it (`cargo build --release -p corral-runner`) or set \
             CORRAL_RUNNER_BIN; CORRAL_SKIP_RUNNER=1 skips these tests"
        );
    };
    assert!(
        model.is_file(),
        "{} is missing: run scripts/fetch-model.sh (or set CORRAL_TEST_MODEL); \
         CORRAL_SKIP_RUNNER=1 skips these tests",
        model.display()
    );
    Some((runner, model))
}

/// Short windows and back-off so the tests run in seconds; the ticks are the server's
/// defaults, so the deploy and wake times measured here are what a user sees.
pub fn test_settings(data_dir: &Path) -> ControlSettings {
    ControlSettings {
        data_dir: data_dir.to_path_buf(),
        health_interval: Duration::from_millis(500),
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        stop_grace: Duration::from_secs(5),
        activity_flush: Duration::from_millis(500),
        resource_interval: Duration::from_millis(500),
        autoscale: ScalePolicy {
            up_in_flight: 3.0,
            down_in_flight: 0.5,
            up_window: Duration::from_secs(1),
            down_window: Duration::from_secs(2),
        },
        parallel: 2,
        context: 512,
        ..ControlSettings::default()
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub owner: User,
    pub runner: PathBuf,
    pub model: PathBuf,
    pub control: Control,
    pub driver: Arc<LocalDriver>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Harness {
    pub async fn new(runner: PathBuf, model: PathBuf) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("corral.db").display());
        let store = corral_store::open(&url).await.unwrap();
        let owner = User::new(
            "owner@example.test",
            "$argon2id$fake".into(),
            Role::User,
            Utc::now(),
        );
        store.create_user(&owner).await.unwrap();
        store
            .upsert_model(&catalog_entry(MODEL_ID, &model))
            .await
            .unwrap();
        let driver = local_driver(dir.path(), &runner);
        let control = new_control(&store, dir.path(), driver.clone());
        let mut h = Harness {
            dir,
            store,
            owner,
            runner,
            model,
            control,
            driver,
            running: None,
        };
        h.start();
        h
    }

    pub fn start(&mut self) {
        let (tx, rx) = oneshot::channel();
        let run = tokio::spawn(self.control.clone().run(async {
            let _ = rx.await;
        }));
        self.running = Some((tx, run));
    }

    /// Stops the control loop (replicas keep running, as after a server exit).
    pub async fn stop_control(&mut self) {
        if let Some((tx, run)) = self.running.take() {
            let _ = tx.send(());
            run.await.unwrap();
        }
    }

    /// A fresh `Control` and driver over the same store and data dir: a server restart.
    pub async fn restart_control(&mut self) {
        self.stop_control().await;
        self.driver = local_driver(self.dir.path(), &self.runner);
        self.control = new_control(&self.store, self.dir.path(), self.driver.clone());
        self.start();
    }

    pub async fn create_instance(&self, model_id: &str, settings: InstanceSettings) -> Uuid {
        self.create_instance_idle_since(model_id, settings, Utc::now())
            .await
    }

    /// An instance whose last activity was at `last_activity_at`, as if its deploy (or
    /// wake) had taken since then.
    pub async fn create_instance_idle_since(
        &self,
        model_id: &str,
        settings: InstanceSettings,
        last_activity_at: DateTime<Utc>,
    ) -> Uuid {
        let now = Utc::now();
        let inst = Instance {
            id: Uuid::now_v7(),
            owner_id: self.owner.id,
            model_id: model_id.into(),
            driver: "local".into(),
            compute: ComputeSpec {
                compute_type: ComputeType::Local,
                cpu: 1.0,
                memory: 1024,
                gpu_count: 0,
                instance_type: None,
                spot: false,
            },
            target_replicas: settings.min_replicas.max(1),
            settings,
            desired: Desired::Running,
            state: State::Pending,
            state_reason: None,
            created_at: now,
            updated_at: now,
            last_activity_at,
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

    pub async fn instance(&self, id: Uuid) -> Instance {
        self.store
            .instance(id)
            .await
            .unwrap()
            .expect("instance exists")
    }

    /// Polls the store (tests may; the code under test does not) until the instance is
    /// in `state`; panics with its timeline after `within`.
    pub async fn wait_state(&self, id: Uuid, state: State, within: Duration) -> Instance {
        let start = Instant::now();
        loop {
            let inst = self.instance(id).await;
            if inst.state == state {
                return inst;
            }
            if start.elapsed() > within {
                panic!(
                    "instance not {} within {within:?}; it is {} ({:?})\n{}",
                    state.as_str(),
                    inst.state.as_str(),
                    inst.state_reason,
                    self.timeline(id).await
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_until<F: AsyncFn() -> bool>(
        &self,
        what: &str,
        within: Duration,
        id: Uuid,
        f: F,
    ) {
        let start = Instant::now();
        while !f().await {
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}\n{}",
                self.timeline(id).await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn events(&self, id: Uuid) -> Vec<InstanceEvent> {
        self.store.list_events(id, 500).await.unwrap()
    }

    pub async fn timeline(&self, id: Uuid) -> String {
        self.store
            .list_events(id, 500)
            .await
            .unwrap_or_default()
            .iter()
            .map(|e| {
                format!(
                    "  {} {:?} → {:?}: {}\n",
                    e.at.format("%H:%M:%S%.3f"),
                    e.from_state,
                    e.to_state,
                    e.message
                )
            })
            .collect()
    }

    /// Pids of the instance's replicas, from their driver refs.
    pub async fn pids(&self, id: Uuid) -> Vec<i32> {
        self.store
            .list_replicas(id)
            .await
            .unwrap()
            .iter()
            .filter_map(|r| pid_of(&r.driver_ref))
            .collect()
    }

    pub async fn shutdown(mut self) {
        // Leave nothing running: delete every instance, then let the loop finish.
        for inst in self.store.list_instances(None).await.unwrap() {
            let _ = self.control.set_desired(inst.id, Desired::Deleted).await;
        }
        let start = Instant::now();
        while !self.store.list_instances(None).await.unwrap().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instances not deleted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop_control().await;
        assert!(
            self.driver.orphans(&[]).await.unwrap().is_empty(),
            "a replica process outlived its instance"
        );
    }
}

pub fn catalog_entry(id: &str, path: &Path) -> CatalogModel {
    CatalogModel {
        id: id.into(),
        family: "SmolLM2".into(),
        size: "135M".into(),
        cpu_supported: true,
        gpu_supported: false,
        memory_required: 512,
        expected_deploy_seconds: 5,
        source: ModelSource::File {
            path: path.display().to_string(),
        },
        weights_bytes: None,
        builtin: false,
    }
}

pub fn local_driver(data_dir: &Path, runner: &Path) -> Arc<LocalDriver> {
    let mut config = LocalConfig::new(data_dir);
    config.runner_bin = Some(runner.to_path_buf());
    Arc::new(LocalDriver::new(config).expect("local driver"))
}

pub fn new_control(store: &Arc<dyn Store>, data_dir: &Path, driver: Arc<LocalDriver>) -> Control {
    Control::new(
        store.clone(),
        vec![driver as Arc<dyn ComputeDriver>],
        Arc::new(FileWeights::new(data_dir)),
        test_settings(data_dir),
    )
}

pub fn pid_of(driver_ref: &str) -> Option<i32> {
    driver_ref
        .split(';')
        .find_map(|kv| kv.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
}

/// Alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// A small real completion through the replica's Ollama API.
pub async fn generate(endpoint: &str) -> String {
    let body = format!(
        r#"{{"model":"{MODEL_ID}","prompt":"Say hi","stream":false,"options":{{"num_predict":4}}}}"#
    );
    let resp = reqwest::Client::new()
        .post(format!("{endpoint}/api/generate"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("generate request");
    assert!(resp.status().is_success(), "generate: {}", resp.status());
    resp.text().await.unwrap()
}
