//! `spawn_app()`: the real server on 127.0.0.1:0 with a fresh store, in the style of
//! zero2prod. Every store-touching test runs once on SQLite (a temp file) and once on
//! PostgreSQL (a fresh database on the server named by `CORRAL_TEST_PG_URL`).
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use corral_api::mail::Mailer;
use corral_api::{AppState, Settings};
use corral_control::{Control, ControlSettings};
use corral_drivers::ComputeDriver;
use serde_json::{Value, json};
use sqlx::Connection;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

pub const PASSWORD: &str = "SecurePass123!";

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    _dir: tempfile::TempDir,
    _shutdown: oneshot::Sender<()>,
    /// Stops the reconciler's loop, when it runs (replicas are the test's to stop).
    _reconciler: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// The store's URL, for `restart`.
    store_url: String,
}

/// The compute drivers and control settings of a reconciler, for the app's data dir.
pub type Reconciler = (Vec<Arc<dyn ComputeDriver>>, ControlSettings);

/// Runs a test body once per backend: `both_backends!(name);` for `async fn name(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                if $crate::common::postgres_skipped() {
                    return;
                }
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

/// PostgreSQL tests need `CORRAL_TEST_PG_URL`; missing it is a failure, not a silent
/// skip, unless `CORRAL_SKIP_PG=1` says so explicitly.
pub fn postgres_skipped() -> bool {
    if std::env::var_os("CORRAL_TEST_PG_URL").is_some() {
        return false;
    }
    if std::env::var("CORRAL_SKIP_PG").as_deref() == Ok("1") {
        eprintln!("SKIPPED: PostgreSQL test (CORRAL_SKIP_PG=1)");
        return true;
    }
    panic!(
        "CORRAL_TEST_PG_URL is not set: run `scripts/with-postgres.sh cargo test` \
         (or set CORRAL_SKIP_PG=1 to skip PostgreSQL tests knowingly)"
    );
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Like `spawn_app`, with a chance to change the settings first. The reconciler is
/// there, with no compute driver, and does not run.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn(backend, configure, |_| None).await
}

/// Like `spawn_app_with`, with the reconciler running over the drivers `reconciler`
/// makes for the app's data dir: for tests that deploy real instances.
pub async fn spawn_app_with_reconciler(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
    reconciler: impl FnOnce(&Path) -> Reconciler,
) -> TestApp {
    spawn(backend, configure, |dir| Some(reconciler(dir))).await
}

/// Like `spawn_app`, sending mail with `mailer` (e.g. to an SMTP server of the test).
pub async fn spawn_app_with_mailer(backend: Backend, mailer: Mailer) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = store_url(backend, &dir).await;
    launch(dir, url, |_| {}, |_| None, mailer).await
}

async fn spawn(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
    reconciler: impl FnOnce(&Path) -> Option<Reconciler>,
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = store_url(backend, &dir).await;
    launch(dir, url, configure, reconciler, Mailer::Outbox).await
}

async fn store_url(backend: Backend, dir: &tempfile::TempDir) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.path().join("corral.db").display()),
        Backend::Postgres => fresh_pg_database().await,
    }
}

/// Serves `store_url` with `dir` as the data dir.
async fn launch(
    dir: tempfile::TempDir,
    url: String,
    configure: impl FnOnce(&mut Settings),
    reconciler: impl FnOnce(&Path) -> Option<Reconciler>,
    mailer: Mailer,
) -> TestApp {
    let store = corral_store::open(&url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut settings = Settings::new(
        base.clone(),
        b"test-secret-test-secret-test-secret!".to_vec(),
    );
    configure(&mut settings);
    let reconciler = reconciler(dir.path());
    let running = reconciler.is_some();
    let (drivers, control_settings) = reconciler.unwrap_or_default();
    let weights = Arc::new(
        corral_models::Weights::new(dir.path())
            .allow_private_sources(settings.allow_private_model_sources),
    );
    let control = Control::new(
        Arc::clone(&store),
        drivers,
        weights.clone(),
        control_settings,
    );
    let state = AppState::new(
        Arc::clone(&store),
        settings,
        mailer,
        control.clone(),
        weights,
    );
    let reconciler = running.then(|| {
        let (tx, rx) = oneshot::channel::<()>();
        let run = tokio::spawn(control.run(async {
            let _ = rx.await;
        }));
        (tx, run)
    });
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(corral_api::serve(listener, state.clone(), async {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        base,
        http: reqwest::Client::new(),
        state,
        _dir: dir,
        _shutdown: tx,
        _reconciler: reconciler,
        store_url: url,
    }
}

async fn fresh_pg_database() -> String {
    let admin_url = std::env::var("CORRAL_TEST_PG_URL").unwrap();
    let name = format!("corral_api_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    // Replace the database part of the URL (everything after the last '/', before '?').
    let (head, tail) = admin_url.rsplit_once('/').unwrap();
    let query = tail
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{head}/{name}{query}")
}

impl TestApp {
    /// A restart of the server: this one stops (its reconciler finishes the steps it is
    /// in; replicas keep running, as after `corral serve` exits) and a new one, with a
    /// fresh reconciler, serves the same store and data dir on another port.
    pub async fn restart(
        self,
        configure: impl FnOnce(&mut Settings),
        reconciler: impl FnOnce(&Path) -> Reconciler,
    ) -> TestApp {
        let TestApp {
            _dir: dir,
            _shutdown: shutdown,
            _reconciler: running,
            store_url,
            ..
        } = self;
        let _ = shutdown.send(());
        if let Some((stop, run)) = running {
            let _ = stop.send(());
            run.await.unwrap();
        }
        launch(
            dir,
            store_url,
            configure,
            |d| Some(reconciler(d)),
            Mailer::Outbox,
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.http.put(self.url(path)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        read(req.send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.http.delete(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        read(req.send().await.unwrap()).await
    }

    /// Mail leaves from a background queue: waits (up to 10 s) until every queued mail
    /// job is finished (sent, dropped or failed).
    pub async fn mail_settled(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let jobs = self
                .state
                .store
                .list_jobs(corral_api::mail::MAIL_JOB, 500)
                .await
                .unwrap();
            if jobs.iter().all(|j| j.status.is_done()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mail jobs still queued after 10 s: {jobs:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The newest outbox message to `email` (verification / reset mails in tests), once
    /// the mail queue has settled.
    pub async fn last_mail(&self, email: &str) -> corral_core::OutboxMessage {
        self.mail_settled().await;
        self.state
            .store
            .list_outbox(Some(email), 1)
            .await
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("no mail to {email}"))
    }

    /// How many outbox messages `email` has, once the mail queue has settled.
    pub async fn mail_count(&self, email: &str) -> usize {
        self.mail_settled().await;
        self.state
            .store
            .list_outbox(Some(email), 500)
            .await
            .unwrap()
            .len()
    }

    /// The newest mail to `email`, asserting that it is new (more than `before`).
    pub async fn mail_after(&self, email: &str, before: usize) -> corral_core::OutboxMessage {
        assert!(
            self.mail_count(email).await > before,
            "no new mail to {email}"
        );
        self.last_mail(email).await
    }

    /// Creates a verified account directly in the store with the given role and returns
    /// its access token (through the real login endpoint).
    pub async fn user_with_role(&self, role: corral_core::Role) -> (String, String) {
        let email = format!("{}-{}@example.com", role, uuid::Uuid::now_v7().simple());
        let hash = self.state.passwords.hash(PASSWORD.into()).await.unwrap();
        let mut user = corral_core::User::new(&email, hash, role, chrono::Utc::now());
        user.email_verified = true;
        self.state.store.create_user(&user).await.unwrap();
        let token = self.login(&email, PASSWORD).await;
        (email, token)
    }

    /// Logs in with the real endpoint and returns the access token.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self
            .post(
                "/api/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(status, 200, "login failed: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }
}

async fn read(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// The demo model the platform tests deploy.
pub const MODEL: &str = "smollm2:135m";

/// One test at a time: each launches model servers, and two loading at once on a small
/// machine only measure contention.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The runner binary and the (canonical) model path, or None when `CORRAL_SKIP_RUNNER=1`.
/// Missing either is a failure that says how to provide it.
pub fn runner_and_model() -> Option<(PathBuf, PathBuf)> {
    if std::env::var("CORRAL_SKIP_RUNNER").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: test that launches replicas (CORRAL_SKIP_RUNNER=1)");
        return None;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let runner = std::env::var_os("CORRAL_RUNNER_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            ["debug", "release"]
                .iter()
                .map(|p| target.join(p).join("corral-runner"))
                .find(|p| p.is_file())
        })
        .filter(|p| p.is_file())
        .expect(
            "corral-runner not found: `cargo build -p corral-runner` or set CORRAL_RUNNER_BIN; \
             CORRAL_SKIP_RUNNER=1 skips these tests",
        );
    let model = std::env::var_os("CORRAL_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".corral/models/smollm2-135m.gguf"));
    assert!(
        model.is_file(),
        "{} is missing: run scripts/fetch-model.sh (or set CORRAL_TEST_MODEL); \
         CORRAL_SKIP_RUNNER=1 skips these tests",
        model.display()
    );
    Some((runner, model.canonicalize().unwrap()))
}
