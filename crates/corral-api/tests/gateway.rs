//! The gateway against real replicas: the reconciler deploys `corral-runner` serving the
//! demo model through the local driver, and every call goes through the real server.
//!
//! Needs the runner binary (`CORRAL_RUNNER_BIN`, else `corral-runner` in the target dir:
//! `cargo build -p corral-runner`) and the model (`CORRAL_TEST_MODEL`, else
//! `.corral/models/smollm2-135m.gguf`: `scripts/fetch-model.sh`). Missing either fails,
//! unless `CORRAL_SKIP_RUNNER=1` skips these tests explicitly.

mod common;

use chrono::Utc;
use common::{
    Backend, MODEL, PASSWORD, Reconciler, SERIAL, TestApp, runner_and_model,
    spawn_app_with_reconciler,
};
use corral_api::Settings;
use corral_control::ControlSettings;
use corral_core::{
    CatalogModel, ComputeSpec, ComputeType, Desired, Instance, InstanceSettings, ModelSource, Role,
    State,
};
use corral_drivers::ComputeDriver;
use corral_drivers::local::{LocalConfig, LocalDriver};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A running app whose reconciler deploys with the local driver. Replicas outlive a
/// panicking test's reconciler, so `Reaper` kills whatever runs from the app's data dir
/// when the test ends; `teardown` is the orderly way.
struct Gateway {
    app: TestApp,
    model: PathBuf,
    _reaper: Reaper,
}

async fn start(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Option<Gateway> {
    let (runner, model) = runner_and_model()?;
    let data_dir = Arc::new(Mutex::new(None));
    let seen = data_dir.clone();
    let reconciler = move |dir: &Path| -> Reconciler {
        *seen.lock().unwrap() = Some(dir.canonicalize().unwrap());
        let mut config = LocalConfig::new(dir);
        config.runner_bin = Some(runner);
        let driver = Arc::new(LocalDriver::new(config).unwrap());
        let settings = ControlSettings {
            data_dir: dir.to_path_buf(),
            tick: Duration::from_millis(500),
            fast_tick: Duration::from_millis(100),
            health_interval: Duration::from_millis(500),
            stop_grace: Duration::from_secs(2),
            wake_timeout: Duration::from_secs(60),
            parallel: 2,
            context: 1024,
            ..ControlSettings::default()
        };
        (vec![driver as Arc<dyn ComputeDriver>], settings)
    };
    let app = spawn_app_with_reconciler(backend, configure, reconciler).await;
    let dir = data_dir.lock().unwrap().clone().unwrap();
    Some(Gateway {
        app,
        model,
        _reaper: Reaper(dir),
    })
}

/// Kills replica processes started for a data dir (found by the `CORRAL_DATA_DIR` the
/// local driver gives them), should a test fail before `teardown`.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let wanted = format!("CORRAL_DATA_DIR={}", self.0.display());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            if environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Gateway {
    /// A verified user with `role`: (id, access token).
    async fn user(&self, role: Role) -> (Uuid, String) {
        let (email, token) = self.app.user_with_role(role).await;
        let user = self.app.state.store.user_by_email(&email).await.unwrap();
        (user.unwrap().id, token)
    }

    /// Deploys the demo model for `owner` and waits until it has a ready replica.
    async fn deploy(&self, owner: Uuid, settings: InstanceSettings) -> Uuid {
        self.deploy_replicas(owner, settings, 1).await
    }

    /// Deploys the demo model with `replicas` replicas and waits until all are ready.
    async fn deploy_replicas(
        &self,
        owner: Uuid,
        settings: InstanceSettings,
        replicas: u32,
    ) -> Uuid {
        let store = &self.app.state.store;
        store
            .upsert_model(&CatalogModel {
                id: MODEL.into(),
                family: "SmolLM2".into(),
                size: "135M".into(),
                cpu_supported: true,
                gpu_supported: false,
                memory_required: 512,
                expected_deploy_seconds: 5,
                source: ModelSource::File {
                    path: self.model.display().to_string(),
                },
                weights_bytes: None,
                builtin: false,
            })
            .await
            .unwrap();
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
            target_replicas: replicas,
            settings,
            desired: Desired::Running,
            state: State::Pending,
            state_reason: None,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            running_since: None,
            running_seconds: 0,
            team_id: None,
        };
        store
            .create_instance(&inst, &corral_core::Admission::unlimited())
            .await
            .unwrap();
        self.app.state.control.nudge();
        self.app
            .state
            .control
            .wake(inst.id, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("instance not ready: {e}"));
        let start = Instant::now();
        while self
            .app
            .state
            .routing
            .get(inst.id)
            .is_none_or(|r| r.replicas.len() < replicas as usize)
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{replicas} replicas not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        inst.id
    }

    /// The replica's own base URL (to look at it directly).
    fn replica(&self, id: Uuid) -> String {
        let route = self.app.state.routing.get(id).expect("routed");
        route.replicas[0].endpoint.clone()
    }

    async fn wait_state(&self, id: Uuid, state: State) {
        let start = Instant::now();
        loop {
            let inst = self.app.state.store.instance(id).await.unwrap().unwrap();
            if inst.state == state {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instance is {:?}, not {state:?}",
                inst.state
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "instances not deleted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self.app.http.request(method, self.app.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        read(self.call(Method::POST, path, token, Some(body)).await).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        read(self.call(Method::GET, path, token, None).await).await
    }

    /// A streamed call: status, content type and the whole text.
    async fn stream(&self, path: &str, token: &str, body: Value) -> (u16, String, String) {
        let resp = self.call(Method::POST, path, Some(token), Some(body)).await;
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, kind, resp.text().await.unwrap())
    }

    /// Waits until the usage rows of `owner` add up to `requests` requests.
    async fn usage(&self, owner: Uuid, requests: u64) -> (u64, u64) {
        let start = Instant::now();
        loop {
            let rows = self
                .app
                .state
                .store
                .usage(Some(owner), None, None)
                .await
                .unwrap();
            let n: u64 = rows.iter().map(|r| r.requests).sum();
            if n == requests {
                return (
                    rows.iter().map(|r| r.prompt_tokens).sum(),
                    rows.iter().map(|r| r.completion_tokens).sum(),
                );
            }
            assert!(
                n < requests && start.elapsed() < Duration::from_secs(10),
                "usage shows {n} requests, expected {requests}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn read(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn chat(stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": stream,
        "max_tokens": 4,
        "options": {"num_predict": 4},
    })
}

/// The data lines of an SSE stream, as JSON (`[DONE]` left out).
fn sse_events(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn list_has_model(list: &Value, key: &str, field: &str) -> bool {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m[field] == MODEL)
}

async fn every_route_streams_and_meters(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(gw) = start(backend, |s| s.metrics_token = Some("scrape-token".into())).await else {
        return;
    };
    let (owner, jwt) = gw.user(Role::User).await;
    let (status, created) = gw
        .app
        .post(
            "/api/keys",
            Some(&jwt),
            json!({"name": "gateway-test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = gw.deploy(owner, InstanceSettings::default()).await;

    // The lists: by API key and by access token alike.
    for token in [&key, &jwt] {
        let (status, list) = gw.get("/v1/models", Some(token)).await;
        assert_eq!(status, 200, "{list}");
        assert!(list_has_model(&list, "data", "id"), "{list}");
    }
    let (status, one) = gw.get(&format!("/v1/models/{MODEL}"), Some(&key)).await;
    assert_eq!((status, one["id"].as_str()), (200, Some(MODEL)), "{one}");
    let (status, tags) = gw.get("/ollama/api/tags", Some(&key)).await;
    assert!(
        status == 200 && list_has_model(&tags, "models", "name"),
        "{tags}"
    );
    let (status, ps) = gw.get("/ollama/api/ps", Some(&key)).await;
    assert!(
        status == 200 && list_has_model(&ps, "models", "model"),
        "{ps}"
    );
    let (status, version) = gw.get("/ollama/api/version", Some(&key)).await;
    assert!(status == 200 && version["version"].is_string(), "{version}");

    let mut requests = 0;
    let mut completion_seen = 0;

    // OpenAI, routed by model and by instance, whole and streamed.
    for base in ["/v1".to_string(), format!("/i/{id}/v1")] {
        let (status, answer) = gw
            .post(&format!("{base}/chat/completions"), Some(&key), chat(false))
            .await;
        assert_eq!(status, 200, "{base}: {answer}");
        assert!(answer["choices"][0]["message"]["content"].is_string());
        completion_seen += answer["usage"]["completion_tokens"].as_u64().unwrap();
        requests += 1;

        // A stream without usage asked for has none (the gateway's own request for it is
        // taken back out); asked for, it is there.
        let (status, kind, text) = gw
            .stream(&format!("{base}/chat/completions"), &key, chat(true))
            .await;
        assert_eq!(status, 200, "{text}");
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
        let events = sse_events(&text);
        assert!(events.iter().all(|e| e.get("usage").is_none()), "{text}");
        assert!(
            events
                .iter()
                .all(|e| !e["choices"].as_array().unwrap().is_empty())
        );
        requests += 1;

        let mut asked = chat(true);
        asked["stream_options"] = json!({"include_usage": true});
        let (_, _, text) = gw
            .stream(&format!("{base}/chat/completions"), &key, asked)
            .await;
        let usage = sse_events(&text)
            .into_iter()
            .find_map(|e| e.get("usage").cloned())
            .unwrap_or_else(|| panic!("no usage in {text}"));
        completion_seen += usage["completion_tokens"].as_u64().unwrap();
        requests += 1;

        let (status, completion) = gw
            .post(
                &format!("{base}/completions"),
                Some(&jwt),
                json!({"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 3}),
            )
            .await;
        assert_eq!(status, 200, "{completion}");
        requests += 1;

        let (status, embedding) = gw
            .post(
                &format!("{base}/embeddings"),
                Some(&key),
                json!({"model": MODEL, "input": "hello"}),
            )
            .await;
        assert_eq!(status, 200, "{embedding}");
        assert!(embedding["data"][0]["embedding"].as_array().unwrap().len() > 10);
        requests += 1;
    }

    // Ollama, routed by model and by instance.
    for base in ["/ollama".to_string(), format!("/i/{id}")] {
        let (status, answer) = gw
            .post(&format!("{base}/api/chat"), Some(&key), chat(false))
            .await;
        assert_eq!(status, 200, "{base}: {answer}");
        assert_eq!(answer["done"], true);
        assert!(answer["message"]["content"].is_string());
        completion_seen += answer["eval_count"].as_u64().unwrap();
        requests += 1;

        let (status, kind, text) = gw
            .stream(&format!("{base}/api/chat"), &key, chat(true))
            .await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(kind, "application/x-ndjson");
        let lines = ndjson(&text);
        assert!(lines.len() >= 2, "{text}");
        let last = lines.last().unwrap();
        assert_eq!(last["done"], true);
        completion_seen += last["eval_count"].as_u64().unwrap();
        requests += 1;

        let (status, _, text) = gw
            .stream(
                &format!("{base}/api/generate"),
                &key,
                json!({"model": MODEL, "prompt": "Say hi", "options": {"num_predict": 3}}),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(ndjson(&text).last().unwrap()["done"], true);
        requests += 1;

        let (status, embed) = gw
            .post(
                &format!("{base}/api/embed"),
                Some(&key),
                json!({"model": MODEL, "input": ["a", "b"]}),
            )
            .await;
        assert_eq!(status, 200, "{embed}");
        assert_eq!(embed["embeddings"].as_array().unwrap().len(), 2);
        requests += 1;

        // Not a generation: answered, not metered.
        let (status, show) = gw
            .post(
                &format!("{base}/api/show"),
                Some(&key),
                json!({"model": MODEL}),
            )
            .await;
        assert_eq!(status, 200, "{show}");
    }
    let (status, root) = gw.get(&format!("/i/{id}/"), Some(&key)).await;
    assert_eq!(
        (status, root.as_str()),
        (200, Some("Ollama is running")),
        "the instance's root"
    );

    let (prompt, completion) = gw.usage(owner, requests).await;
    assert!(prompt > 0, "prompt tokens metered");
    assert!(
        completion >= completion_seen,
        "completion tokens {completion} < {completion_seen} the answers reported"
    );
    assert_eq!(
        gw.app.state.routing.get(id).unwrap().in_flight(),
        0,
        "every replica slot released"
    );

    // The instance's per-minute statistics: every metered request, with latency and the
    // streams' time to first token; for its owner only.
    let path = format!("/api/instances/{id}/metrics");
    let (status, stats) = gw.get(&path, Some(&jwt)).await;
    assert_eq!(status, 200, "{stats}");
    let minutes = stats["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    let sum = |field: &str| {
        minutes
            .iter()
            .map(|m| m[field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(sum("requests"), requests, "{stats}");
    assert_eq!(sum("errors"), 0);
    assert!(sum("tokens_out") >= completion_seen);
    let busy: Vec<&Value> = minutes.iter().filter(|m| m["requests"] != 0).collect();
    assert!(
        busy.iter()
            .all(|m| m["latency_p50_ms"].as_f64().unwrap() > 0.0
                && m["latency_p95_ms"].as_f64().unwrap() >= m["latency_p50_ms"].as_f64().unwrap())
    );
    assert!(
        busy.iter()
            .any(|m| m["first_token_p50_ms"].as_f64().is_some())
    );
    let (_, stranger) = gw.user(Role::User).await;
    assert_eq!(gw.get(&path, Some(&stranger)).await.0, 404);
    let (_, doc) = gw.get("/api/openapi.json", None).await;
    assert!(
        doc["paths"]["/api/instances/{id}/metrics"]["get"].is_object(),
        "documented"
    );

    // Metrics: for the scrape token or an admin, no one else.
    let (_, admin) = gw.user(Role::Admin).await;
    let (status, _) = gw.get("/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = gw.get("/metrics", Some(&key)).await;
    assert_eq!(status, 403, "a user's key is not enough");
    for token in ["scrape-token", admin.as_str()] {
        let resp = gw.call(Method::GET, "/metrics", Some(token), None).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(value("corral_gateway_tokens_total{kind=\"completion\"}") >= completion as f64);
        assert!(value("corral_gateway_time_to_first_token_seconds_count") >= 8.0);
        assert!(value("corral_gateway_tokens_per_second_count") > 0.0);
        assert!(value("corral_gateway_upstream_duration_seconds_count") >= requests as f64);
        assert_eq!(value("corral_gateway_requests_in_flight"), 0.0);
        assert_eq!(value("corral_instances{state=\"ready\"}"), 1.0);
        assert!(value("corral_deploy_duration_seconds_count") >= 1.0);
        assert!(value("corral_auth_failures_total{status=\"401\"}") >= 1.0);
        assert!(
            value(
                "corral_http_request_duration_seconds_count{route=\"/v1/chat/completions\",status=\"2xx\"}"
            ) >= 3.0
        );
    }
    gw.teardown().await;
}

async fn owners_roles_and_error_shapes(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(gw) = start(backend, |_| {}).await else {
        return;
    };
    let (owner, owner_token) = gw.user(Role::User).await;
    let (_, other) = gw.user(Role::User).await;
    let (_, viewer) = gw.user(Role::Viewer).await;
    let (_, admin) = gw.user(Role::Admin).await;
    let id = gw.deploy(owner, InstanceSettings::default()).await;

    // Another user: 404 on every route of the instance, the same answer as for an
    // instance that does not exist.
    let missing = Uuid::now_v7();
    for path in [
        "api/chat",
        "api/generate",
        "v1/chat/completions",
        "api/tags",
        "",
    ] {
        for instance in [id, missing] {
            let (status, body) = gw
                .post(&format!("/i/{instance}/{path}"), Some(&other), chat(false))
                .await;
            assert_eq!(status, 404, "/i/{instance}/{path}: {body}");
            let message = if path.starts_with("v1") {
                &body["error"]["message"]
            } else {
                &body["error"]
            };
            assert_eq!(message, "instance not found", "{body}");
        }
        let (status, _) = gw.get(&format!("/i/{id}/{path}"), Some(&other)).await;
        assert_eq!(status, 404);
    }
    // Routed by model, the other user has no instance of it.
    let (status, body) = gw
        .post("/v1/chat/completions", Some(&other), chat(false))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let (status, body) = gw.post("/ollama/api/chat", Some(&other), chat(false)).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("model 'smollm2:135m' not found")
    );
    let (_, list) = gw.get("/v1/models", Some(&other)).await;
    assert_eq!(list["data"], json!([]), "not listed for others");

    // The owner asking for a model they have not deployed: 404 in each API's shape.
    let mut unknown = chat(false);
    unknown["model"] = json!("llama2:7b");
    let (status, body) = gw
        .post("/v1/chat/completions", Some(&owner_token), unknown.clone())
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("model_not_found")),
        "{body}"
    );
    let (status, body) = gw
        .post("/ollama/api/generate", Some(&owner_token), unknown)
        .await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("llama2:7b"),
        "{body}"
    );
    let (status, body) = gw
        .post(
            "/v1/chat/completions",
            Some(&owner_token),
            json!({"messages": []}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // Viewers are read-only: they may list, not run models.
    for path in [
        "/v1/chat/completions".to_string(),
        "/ollama/api/chat".to_string(),
        format!("/i/{id}/api/chat"),
    ] {
        let (status, body) = gw.post(&path, Some(&viewer), chat(false)).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = gw
        .post("/v1/chat/completions", Some(&viewer), chat(false))
        .await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (403, &json!("permission_error"))
    );
    let (status, _) = gw.get("/v1/models", Some(&viewer)).await;
    assert_eq!(status, 200);

    // No or a bad credential: 401, in each API's shape.
    let (status, body) = gw.post("/v1/chat/completions", None, chat(false)).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    let (status, body) = gw
        .post("/ollama/api/chat", Some("crl_not-a-key"), chat(false))
        .await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = gw.get(&format!("/i/{id}/api/tags"), None).await;
    assert_eq!(status, 401);
    let (status, body) = gw.get("/ollama/api/pull", Some(&owner_token)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string());
    let (status, body) = gw.get("/v1/chat/completions", Some(&owner_token)).await;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"]["message"].is_string());

    // An admin may use anyone's instance by id.
    let (status, body) = gw
        .post(&format!("/i/{id}/api/chat"), Some(&admin), chat(false))
        .await;
    assert_eq!(status, 200, "{body}");

    // Asleep, it wakes on the next request; stopped, it says how to start it.
    let control = &gw.app.state.control;
    control.set_desired(id, Desired::Sleeping).await.unwrap();
    gw.wait_state(id, State::Sleeping).await;
    assert!(
        gw.app
            .state
            .routing
            .get(id)
            .is_none_or(|r| r.replicas.is_empty())
    );
    let (status, body) = gw
        .post("/ollama/api/chat", Some(&owner_token), chat(false))
        .await;
    assert_eq!(status, 200, "woken by the request: {body}");
    assert_eq!(body["done"], true);
    control.set_desired(id, Desired::Stopped).await.unwrap();
    gw.wait_state(id, State::Stopped).await;
    let (status, body) = gw
        .post(
            &format!("/i/{id}/v1/chat/completions"),
            Some(&owner_token),
            chat(false),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "instance_stopped");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("is stopped") && message.contains("/start"),
        "{message}"
    );
    gw.teardown().await;
}

async fn rate_limits(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(gw) = start(backend, |s| {
        s.gateway_requests_per_minute = 3;
        s.gateway_tokens_per_minute = 20;
    })
    .await
    else {
        return;
    };
    // Requests per minute: the burst, then 429 with Retry-After.
    let (_, lister) = gw.user(Role::User).await;
    for _ in 0..3 {
        assert_eq!(gw.get("/v1/models", Some(&lister)).await.0, 200);
    }
    let resp = gw
        .call(Method::GET, "/v1/models", Some(&lister), None)
        .await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    let (_, body) = read(resp).await;
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");

    // Tokens per minute: counted when a request ends, so the next one is refused.
    let (owner, token) = gw.user(Role::User).await;
    gw.deploy(owner, InstanceSettings::default()).await;
    let mut long = chat(false);
    long["messages"][0]["content"] = json!("Tell me about the sea in two sentences.");
    let (status, body) = gw.post("/ollama/api/chat", Some(&token), long).await;
    assert_eq!(status, 200, "{body}");
    let used = body["prompt_eval_count"].as_u64().unwrap() + body["eval_count"].as_u64().unwrap();
    assert!(
        used > 20,
        "the request must spend the minute's budget ({used} tokens)"
    );
    let resp = gw
        .call(
            Method::POST,
            "/ollama/api/chat",
            Some(&token),
            Some(chat(false)),
        )
        .await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let (_, body) = read(resp).await;
    assert!(
        body["error"].as_str().unwrap().contains("token rate limit"),
        "{body}"
    );
    gw.teardown().await;
}

/// Reads the replica's busy slots from its own `/health`.
async fn busy_slots(replica: &str) -> u64 {
    let health: Value = reqwest::get(format!("{replica}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    health["slots"]["busy"].as_u64().unwrap()
}

async fn disconnect_cancels_generation(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(gw) = start(backend, |_| {}).await else {
        return;
    };
    let (owner, token) = gw.user(Role::User).await;
    let id = gw.deploy(owner, InstanceSettings::default()).await;
    let replica = gw.replica(id);
    let route = gw.app.state.routing.get(id).unwrap();
    let long = |stream: bool| {
        json!({"model": MODEL, "prompt": "Count from 1 to 1000: 1, 2,", "stream": stream,
               "options": {"num_predict": 900, "temperature": 0}})
    };
    let freed = async |what: &str| {
        let start = Instant::now();
        while busy_slots(&replica).await != 0 || route.in_flight() != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{what}: replica slots {} and gateway in-flight {} not back to 0",
                busy_slots(&replica).await,
                route.in_flight()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    // A stream: read a few chunks, then hang up.
    let mut resp = gw
        .call(
            Method::POST,
            "/ollama/api/generate",
            Some(&token),
            Some(long(true)),
        )
        .await;
    assert_eq!(resp.status(), 200);
    for _ in 0..3 {
        resp.chunk().await.unwrap().expect("a chunk");
    }
    assert_eq!(busy_slots(&replica).await, 1, "generating");
    assert_eq!(route.in_flight(), 1);
    drop(resp);
    freed("after a stream was dropped").await;
    // The cut stream is metered by its chunks.
    let (_, completion) = gw.usage(owner, 1).await;
    assert!(completion >= 3, "{completion} completion tokens");

    // A whole answer: hang up while the replica is still generating it.
    let call = {
        let req = gw
            .app
            .http
            .post(gw.app.url("/v1/completions"))
            .bearer_auth(&token)
            .json(&json!({"model": MODEL, "prompt": "1, 2,", "max_tokens": 900}));
        tokio::spawn(req.send())
    };
    let start = Instant::now();
    while busy_slots(&replica).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "generation did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call.abort();
    freed("after a waiting client went away").await;
    gw.teardown().await;
}

/// A request that lasts longer than the idle timeout keeps the instance awake while it
/// runs (in flight) and counts as activity when it ends, not only when it began.
async fn long_requests_are_activity(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(gw) = start(backend, |_| {}).await else {
        return;
    };
    let (owner, token) = gw.user(Role::User).await;
    let timeout = Duration::from_secs(1);
    let idle = InstanceSettings {
        idle_timeout_seconds: 1,
        wake_on_request: true,
        ..InstanceSettings::default()
    };
    let id = gw.deploy(owner, idle).await;
    let route = gw.app.state.routing.get(id).unwrap();
    let desired = async || {
        let inst = gw.app.state.store.instance(id).await.unwrap().unwrap();
        inst.desired
    };
    // A long request: the replica's slots are first taken by generations sent to it
    // directly (no activity for the gateway), so the gateway's request waits in the
    // replica's queue before its own generation.
    let replica = gw.replica(id);
    let long = json!({"model": MODEL, "prompt": "Count from 1 to 1000: 1, 2,",
                      "options": {"num_predict": 900, "temperature": 0}});
    let direct: Vec<_> = (0..4)
        .map(|_| {
            let req = gw
                .app
                .http
                .post(format!("{replica}/api/generate"))
                .json(&long);
            tokio::spawn(async move { req.send().await?.bytes().await })
        })
        .collect();
    let start = Instant::now();
    while busy_slots(&replica).await < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "slots not taken");
        // The setup is not what this test measures: on a loaded machine taking the
        // slots may outlast the idle timeout, which must not stop the replica now.
        route.touch();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Read to its end; the instance stays up all along.
    let began = Instant::now();
    let mut resp = gw
        .call(
            Method::POST,
            "/ollama/api/generate",
            Some(&token),
            Some(long),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut checked = Instant::now();
    while resp.chunk().await.unwrap().is_some() {
        if checked.elapsed() >= Duration::from_millis(100) {
            assert_eq!(desired().await, Desired::Running, "idled while streaming");
            checked = Instant::now();
        }
    }
    while route.in_flight() != 0 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "request not ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lasted = began.elapsed();
    assert!(
        lasted >= timeout + Duration::from_millis(500),
        "the request took only {lasted:?}: too short to outlast the idle timeout"
    );
    // Its end is activity: the reconciler (every 0.5 s) leaves the instance alone for
    // the idle timeout from there, although the request began long before.
    let ended = Instant::now();
    while ended.elapsed() < timeout * 7 / 10 {
        assert_eq!(
            desired().await,
            Desired::Running,
            "idled as the request ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And then it does go to sleep.
    gw.wait_state(id, State::Sleeping).await;
    for call in direct {
        call.abort();
    }
    gw.teardown().await;
}

/// Reads a counter of a replica's Prometheus `/metrics` (0 when absent).
async fn replica_counter(replica: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{replica}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.split(['{', ' '])
                .next()
                .is_some_and(|n| n.ends_with(name))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Cache-aware routing over two replicas: every conversation's second turn goes to the
/// replica that served its first, which then reuses the whole first-turn prompt from its
/// KV cache (another replica has seen at most the chat template's first tokens, each
/// conversation opening differently); and the conversations spread over both replicas.
async fn conversations_stick_to_their_replica(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(gw) = start(backend, |_| {}).await else {
        return;
    };
    let (owner, token) = gw.user(Role::User).await;
    let id = gw
        .deploy_replicas(
            owner,
            InstanceSettings {
                min_replicas: 2,
                max_replicas: 2,
                ..InstanceSettings::default()
            },
            2,
        )
        .await;
    let endpoints: Vec<String> = gw
        .app
        .state
        .routing
        .get(id)
        .unwrap()
        .replicas
        .iter()
        .map(|r| r.endpoint.clone())
        .collect();
    let mut before = Vec::new();
    for e in &endpoints {
        before.push(replica_counter(e, "requests_total").await);
    }
    let conversations = 12;
    for c in 0..conversations {
        let mut messages =
            vec![json!({"role": "user", "content": format!("{c} {c} {c}: name a colour.")})];
        let turn = |messages: &Vec<Value>| json!({"model": MODEL, "messages": messages, "max_tokens": 3, "temperature": 0});
        let (status, first) = gw
            .post("/v1/chat/completions", Some(&token), turn(&messages))
            .await;
        assert_eq!(status, 200, "{first}");
        let prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
        messages.push(first["choices"][0]["message"].clone());
        messages.push(json!({"role": "user", "content": "And another?"}));
        let (status, second) = gw
            .post("/v1/chat/completions", Some(&token), turn(&messages))
            .await;
        assert_eq!(status, 200, "{second}");
        let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert!(
            cached + 1 >= prompt,
            "conversation {c}: turn 2 reused {cached} tokens of turn 1's {prompt}: another replica?"
        );
    }
    let mut served = Vec::new();
    for (e, b) in endpoints.iter().zip(before) {
        served.push(replica_counter(e, "requests_total").await - b);
    }
    assert_eq!(
        served.iter().sum::<f64>(),
        f64::from(2 * conversations),
        "{served:?}"
    );
    // Each conversation's replica is chosen by hash: all 12 on one of two replicas
    // happens with probability 2^-11.
    assert!(
        served.iter().all(|&n| n > 0.0),
        "one replica took everything: {served:?}"
    );
    gw.teardown().await;
}

both_backends!(
    conversations_stick_to_their_replica,
    every_route_streams_and_meters,
    long_requests_are_activity,
    owners_roles_and_error_shapes,
    rate_limits,
    disconnect_cancels_generation,
);
