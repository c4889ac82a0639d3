//! The local driver against real processes: `corral-runner` serving the real demo model,
//! and a stand-in `ollama` CLI for the ollama runtime's orchestration.
//!
//! The runner tests need two things, and fail (rather than pass silently) without them:
//! - the runner binary: `CORRAL_RUNNER_BIN`, else `corral-runner` in this test's target
//!   dir (`cargo build -p corral-runner`, which `cargo test --workspace` also does);
//! - the model: `CORRAL_TEST_MODEL`, else `.corral/models/smollm2-135m.gguf` in the
//!   workspace (`scripts/fetch-model.sh`).
//!
//! `CORRAL_SKIP_RUNNER=1` skips the runner tests explicitly.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_core::{ComputeSpec, ComputeType, ModelSource};
use corral_drivers::local::{LocalConfig, LocalDriver};
use corral_drivers::{ComputeDriver, Error, LaunchSpec, Observed, ReplicaRef, Runtime};
use uuid::Uuid;

struct Runner {
    bin: PathBuf,
    model: PathBuf,
}

/// The runner binary and model, or None when skipped on purpose.
fn runner() -> Option<Runner> {
    if std::env::var_os("CORRAL_SKIP_RUNNER").is_some_and(|v| v == "1") {
        eprintln!("CORRAL_SKIP_RUNNER=1: skipping the corral-runner tests");
        return None;
    }
    let bin = std::env::var_os("CORRAL_RUNNER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // This test runs from <target>/<profile>/deps/; binaries live one level up.
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("corral-runner")
        });
    assert!(
        bin.is_file(),
        "corral-runner not found at {}: build it with `cargo build -p corral-runner`, set \
         CORRAL_RUNNER_BIN to the binary, or set CORRAL_SKIP_RUNNER=1 to skip these tests",
        bin.display()
    );
    let model = std::env::var_os("CORRAL_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.corral/models/smollm2-135m.gguf")
        });
    assert!(
        model.is_file(),
        "test model not found at {}: run scripts/fetch-model.sh, set CORRAL_TEST_MODEL to a \
         GGUF file, or set CORRAL_SKIP_RUNNER=1 to skip these tests",
        model.display()
    );
    Some(Runner { bin, model })
}

fn spec(model_path: Option<PathBuf>, runtime: Runtime, model_id: &str) -> LaunchSpec {
    LaunchSpec {
        instance_id: Uuid::now_v7(),
        replica_id: Uuid::now_v7(),
        launch: 0,
        model_id: model_id.into(),
        source: ModelSource::Ollama {
            name: format!("library/{model_id}"),
        },
        model_path,
        compute: ComputeSpec {
            compute_type: ComputeType::Local,
            cpu: 1.0,
            memory: 1024,
            gpu_count: 0,
            instance_type: None,
            spot: false,
        },
        runtime,
        parallel: 2,
        context: 512,
    }
}

fn pid(r: &ReplicaRef) -> i32 {
    r.driver_ref
        .split(';')
        .find_map(|kv| kv.strip_prefix("pid="))
        .unwrap()
        .parse()
        .unwrap()
}

/// Kills the process groups a test started if it fails half-way, so a failed run leaves
/// no model servers behind. Only groups whose leader still carries this test's data dir.
struct Cleanup {
    data_dir: PathBuf,
    pids: Vec<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let marker = format!(
            "CORRAL_DATA_DIR={}",
            self.data_dir.canonicalize().unwrap().display()
        );
        for pid in &self.pids {
            let ours = fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false);
            if ours {
                // SAFETY: plain syscall on a process group this test started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}

async fn observe_until(
    driver: &LocalDriver,
    r: &ReplicaRef,
    timeout: Duration,
    done: impl Fn(&Observed) -> bool,
) -> Observed {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = driver.observe(r).await.unwrap();
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "still {seen:?} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_running(driver: &LocalDriver, r: &ReplicaRef) -> String {
    let seen = observe_until(driver, r, Duration::from_secs(60), |o| {
        !matches!(o, Observed::Starting)
    })
    .await;
    match seen {
        Observed::Running { endpoint } => endpoint,
        other => panic!("expected Running, got {other:?}"),
    }
}

/// GET over plain HTTP/1.1; returns status line and body.
fn http_get(endpoint: &str, path: &str) -> String {
    let addr = endpoint.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn proc_gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_lifecycle_crash_adoption_orphans_stop() {
    let Some(runner) = runner() else { return };
    let data = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup {
        data_dir: data.path().into(),
        pids: Vec::new(),
    };
    let mut config = LocalConfig::new(data.path());
    config.runner_bin = Some(runner.bin.clone());
    let driver = LocalDriver::new(config.clone()).unwrap();
    assert_eq!(driver.name(), "local");

    // Launch: Starting while the model loads, then Running on a 127.0.0.1 port.
    let first = driver
        .launch(&spec(
            Some(runner.model.clone()),
            Runtime::CorralRunner,
            "smollm2:135m",
        ))
        .await
        .unwrap();
    cleanup.pids.push(pid(&first));
    assert_eq!(driver.observe(&first).await.unwrap(), Observed::Starting);
    let endpoint = wait_running(&driver, &first).await;
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint}");
    let tags = http_get(&endpoint, "/api/tags");
    assert!(tags.starts_with("HTTP/1.1 200"), "{tags}");
    assert!(tags.contains("\"smollm2:135m\""), "{tags}");

    // Logs: our header, the runner's startup lines, timestamps parsed.
    let page = driver.logs(&first, None, 1000).await.unwrap();
    let text: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
    let has = |needle: &str| text.iter().any(|l| l.contains(needle));
    assert!(has("corral: starting replica"), "{text:#?}");
    assert!(has(&format!("listening on {endpoint}")), "{text:#?}");
    assert!(has("loaded"), "{text:#?}");
    assert!(page.lines.iter().all(|l| l.replica_id == first.replica_id));
    assert!(page.lines.iter().filter(|l| l.at.is_some()).count() > 10);
    assert!(
        !text.iter().any(|l| l.contains('\u{1b}')),
        "no colour codes"
    );
    let tail = driver.logs(&first, None, 3).await.unwrap();
    assert_eq!(tail.lines.len(), 3);
    assert_eq!(tail.next, page.next);
    // Following from the cursor returns only what came after it.
    let follow = driver
        .logs(&first, page.next.as_deref(), 1000)
        .await
        .unwrap();
    assert!(!follow.lines.iter().any(|l| l.line.contains("listening on")));
    assert!(matches!(
        driver.logs(&first, Some("x"), 10).await,
        Err(Error::Invalid(_))
    ));

    // Resources: the loaded model is resident.
    let usage = driver.resources(&first).await.unwrap().unwrap();
    assert!(usage.memory_bytes > 50 << 20, "{usage:?}");
    assert!(usage.cpu_percent > 0.0, "loading took CPU: {usage:?}");
    let again = driver.resources(&first).await.unwrap().unwrap();
    assert!(again.cpu_percent >= 0.0);

    // A crash: kill -9 is reported as such, and the child is reaped.
    let first_pid = pid(&first);
    // SAFETY: plain syscall on the runner this test started.
    unsafe { libc::kill(first_pid, libc::SIGKILL) };
    let seen = observe_until(&driver, &first, Duration::from_secs(10), |o| {
        matches!(o, Observed::Exited { .. })
    })
    .await;
    let Observed::Exited { reason } = seen else {
        unreachable!()
    };
    assert!(reason.contains("signal 9"), "{reason}");
    assert!(proc_gone(first_pid), "pid {first_pid} left as a zombie");
    assert!(driver.resources(&first).await.unwrap().is_none());
    driver.stop(&first, Duration::from_secs(1)).await.unwrap();
    // The log of the dead replica stays readable through its reference.
    let kept = driver.logs(&first, None, 1000).await.unwrap();
    assert_eq!(
        kept.lines.len(),
        page.lines.len() + follow.lines.len(),
        "{kept:#?}"
    );

    // The same replica launched again writes a log of its own: the first run's lines
    // stay apart, under the first reference.
    let mut again_spec = spec(
        Some(runner.model.clone()),
        Runtime::CorralRunner,
        "smollm2:135m",
    );
    again_spec.instance_id = first.instance_id;
    again_spec.replica_id = first.replica_id;
    let relaunched = driver.launch(&again_spec).await.unwrap();
    cleanup.pids.push(pid(&relaunched));
    assert_ne!(relaunched.driver_ref, first.driver_ref);
    wait_running(&driver, &relaunched).await;
    let old_run = driver.logs(&first, None, 1000).await.unwrap();
    assert_eq!(
        old_run.lines, kept.lines,
        "the first run's log is unchanged"
    );
    let new_run = driver.logs(&relaunched, None, 1000).await.unwrap();
    let starts = |p: &corral_drivers::LogPage| {
        p.lines
            .iter()
            .filter(|l| l.line.contains("corral: starting replica"))
            .count()
    };
    assert_eq!((starts(&old_run), starts(&new_run)), (1, 1));
    driver
        .stop(&relaunched, Duration::from_secs(5))
        .await
        .unwrap();
    // Deleting the instance deletes its logs; a second time is a no-op.
    let log_dir = data.path().join(format!("logs/{}", first.instance_id));
    assert_eq!(
        fs::read_dir(&log_dir).unwrap().count(),
        2,
        "one file per launch"
    );
    driver.forget_instance(first.instance_id).await.unwrap();
    assert!(!log_dir.exists());
    driver.forget_instance(first.instance_id).await.unwrap();
    assert!(
        driver
            .logs(&first, None, 10)
            .await
            .unwrap()
            .lines
            .is_empty()
    );

    // Launch again, then a second driver on the same data dir (a restarted server)
    // adopts the live replica.
    let second = driver
        .launch(&spec(
            Some(runner.model.clone()),
            Runtime::CorralRunner,
            "smollm2:135m",
        ))
        .await
        .unwrap();
    let second_pid = pid(&second);
    cleanup.pids.push(second_pid);
    let endpoint = wait_running(&driver, &second).await;
    let before = driver.logs(&second, None, 1).await.unwrap().next.unwrap();
    // The restarted server also keeps logs small: the runner's startup output is past
    // this cap, so its first observe rotates the log.
    let mut small_logs = config.clone();
    small_logs.log_max_bytes = 4096;
    let restarted = LocalDriver::new(small_logs).unwrap();
    assert_eq!(
        restarted.observe(&second).await.unwrap(),
        Observed::Running {
            endpoint: endpoint.clone()
        }
    );
    assert!(restarted.resources(&second).await.unwrap().is_some());
    let launch = second
        .driver_ref
        .split(';')
        .find_map(|kv| kv.strip_prefix("log="))
        .expect("the reference names its log");
    let log = data.path().join(format!(
        "logs/{}/{}.{launch}.log",
        second.instance_id, second.replica_id
    ));
    let mut rotated = log.clone().into_os_string();
    rotated.push(".1");
    assert!(
        fs::read_to_string(&rotated)
            .unwrap()
            .contains("listening on")
    );
    assert!(fs::metadata(&log).unwrap().len() < 4096);
    // A cursor from before the rotation is past the new end: reading starts over.
    let after = restarted.logs(&second, Some(&before), 10).await.unwrap();
    assert!(after.next.unwrap().parse::<u64>().unwrap() < 4096);

    // Orphans: a replica the restarted server does not know about.
    let orphans = restarted
        .orphans(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(orphans, std::slice::from_ref(&second));
    assert!(
        restarted
            .orphans(std::slice::from_ref(&second))
            .await
            .unwrap()
            .is_empty()
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let mut other_config = config.clone();
    other_config.data_dir = elsewhere.path().into();
    let other = LocalDriver::new(other_config).unwrap();
    assert!(
        other.orphans(&[]).await.unwrap().is_empty(),
        "another data dir's replicas are not ours"
    );

    // Stop through the adopting driver: SIGTERM, graceful exit, nothing left behind.
    restarted
        .stop(&orphans[0], Duration::from_secs(10))
        .await
        .unwrap();
    assert!(proc_gone(second_pid), "pid {second_pid} still there");
    assert_eq!(restarted.observe(&second).await.unwrap(), Observed::Lost);
    // The original parent reaped it and knows how it ended.
    assert_eq!(
        driver.observe(&second).await.unwrap(),
        Observed::Exited {
            reason: "exit code 0".into()
        }
    );
    restarted
        .stop(&second, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(restarted.orphans(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_that_cannot_load_reports_why() {
    let Some(runner) = runner() else { return };
    let data = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(data.path());
    config.runner_bin = Some(runner.bin);
    let driver = LocalDriver::new(config).unwrap();
    let bogus = data.path().join("bogus.gguf");
    fs::write(&bogus, b"not a gguf file").unwrap();
    let r = driver
        .launch(&spec(Some(bogus), Runtime::CorralRunner, "bogus:1b"))
        .await
        .unwrap();
    let seen = observe_until(&driver, &r, Duration::from_secs(30), |o| {
        matches!(o, Observed::Exited { .. })
    })
    .await;
    let Observed::Exited { reason } = seen else {
        unreachable!()
    };
    assert!(
        reason.starts_with("exit code 1: corral-runner:"),
        "{reason}"
    );
}

#[tokio::test]
async fn launch_refuses_what_it_cannot_run() {
    let data = tempfile::tempdir().unwrap();
    let fake = fake_ollama(data.path());
    let mut config = LocalConfig::new(data.path());
    // Any executable: these launches fail before a runner would start.
    config.runner_bin = Some(fake.clone());
    config.ollama_bin = Some(fake);
    let driver = LocalDriver::new(config).unwrap();

    let no_weights = spec(None, Runtime::CorralRunner, "llama2:7b");
    let err = driver.launch(&no_weights).await.unwrap_err().to_string();
    assert!(err.contains("not on this host"), "{err}");

    let mut missing = spec(
        Some(data.path().join("missing.gguf")),
        Runtime::CorralRunner,
        "x:1",
    );
    let err = driver.launch(&missing).await.unwrap_err().to_string();
    assert!(err.contains("missing.gguf"), "{err}");

    missing.model_path = None;
    missing.source = ModelSource::Url {
        url: "https://example.com/x.gguf".into(),
        sha256: "00".into(),
    };
    missing.runtime = Runtime::Ollama;
    let err = driver.launch(&missing).await.unwrap_err().to_string();
    assert!(err.contains("not on this host"), "{err}");

    let mut fargate = spec(None, Runtime::CorralRunner, "x:1");
    fargate.compute.compute_type = ComputeType::Fargate;
    assert!(matches!(
        driver.launch(&fargate).await,
        Err(Error::Invalid(_))
    ));
    let mut zero = spec(None, Runtime::CorralRunner, "x:1");
    zero.parallel = 0;
    assert!(matches!(driver.launch(&zero).await, Err(Error::Invalid(_))));
    assert!(
        fs::read_dir(data.path().join("logs")).is_err(),
        "nothing was started"
    );

    let offers = driver.offers();
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].compute_type, ComputeType::Local);
    assert!(!offers[0].sizes.is_empty());
}

/// A stand-in for the ollama CLI: `serve` listens on OLLAMA_HOST (python's http.server),
/// `list` succeeds once the server answers, `pull` and `create` just succeed (create fails
/// for the model `broken:model`). Every call is recorded in `$OLLAMA_MODELS/calls`.
fn fake_ollama(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let path = bin.join("ollama");
    fs::write(
        &path,
        r#"#!/bin/sh
echo "$*" >> "$OLLAMA_MODELS/calls"
case "$1" in
    serve) exec python3 -m http.server --bind 127.0.0.1 "${OLLAMA_HOST##*:}" ;;
    list) exec python3 -c "import os, urllib.request; urllib.request.urlopen('http://' + os.environ['OLLAMA_HOST'] + '/')" ;;
    pull) sleep 0.3 ;;
    create) [ "$2" != "broken:model" ] ;;
    *) exit 2 ;;
esac
"#,
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_runtime_sets_up_the_model_then_serves() {
    let data = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup {
        data_dir: data.path().into(),
        pids: Vec::new(),
    };
    let fake = fake_ollama(data.path());
    let mut config = LocalConfig::new(data.path());
    config.runner_bin = Some(fake.clone());
    config.ollama_bin = Some(fake);
    let driver = LocalDriver::new(config).unwrap();

    // From the registry: pull, then create under the catalog id with our parameters.
    let r = driver
        .launch(&spec(None, Runtime::Ollama, "smollm2:135m"))
        .await
        .unwrap();
    cleanup.pids.push(pid(&r));
    assert!(
        r.driver_ref.contains(";rt=ollama;port="),
        "{}",
        r.driver_ref
    );
    assert_eq!(driver.observe(&r).await.unwrap(), Observed::Starting);
    let endpoint = wait_running(&driver, &r).await;
    let port = endpoint.rsplit(':').next().unwrap();
    assert!(
        r.driver_ref.contains(&format!(";port={port};")),
        "{}",
        r.driver_ref
    );
    assert!(http_get(&endpoint, "/").starts_with("HTTP/1.0 200"));

    let calls = fs::read_to_string(data.path().join("ollama/models/calls")).unwrap();
    let modelfile = data
        .path()
        .canonicalize()
        .unwrap()
        .join(format!("ollama/replicas/{}/Modelfile", r.replica_id));
    // The helper starts before `serve` does, so their order is not fixed.
    let lines: Vec<&str> = calls.lines().collect();
    assert!(
        lines.contains(&"serve") && lines.contains(&"list"),
        "{calls}"
    );
    assert!(
        calls.ends_with(&format!(
            "pull library/smollm2:135m\ncreate smollm2:135m -f {}\n",
            modelfile.display()
        )),
        "{calls}"
    );
    assert_eq!(
        fs::read_to_string(&modelfile).unwrap(),
        "FROM library/smollm2:135m\nPARAMETER num_ctx 512\nPARAMETER num_thread 1\n"
    );
    let logs = driver.logs(&r, None, 100).await.unwrap();
    assert!(
        logs.lines
            .iter()
            .any(|l| l.line == "corral: model smollm2:135m is ready"),
        "{logs:#?}"
    );
    assert!(driver.resources(&r).await.unwrap().unwrap().memory_bytes > 0);

    driver.stop(&r, Duration::from_secs(5)).await.unwrap();
    assert!(proc_gone(pid(&r)));
    assert!(
        !modelfile.parent().unwrap().exists(),
        "replica files removed"
    );
    assert!(matches!(
        driver.observe(&r).await.unwrap(),
        Observed::Exited { .. }
    ));

    // A model that cannot be set up takes its replica down, and the log says why.
    let gguf = data.path().join("weights.gguf");
    fs::write(&gguf, b"GGUF").unwrap();
    let broken = driver
        .launch(&spec(Some(gguf.clone()), Runtime::Ollama, "broken:model"))
        .await
        .unwrap();
    cleanup.pids.push(pid(&broken));
    let seen = observe_until(&driver, &broken, Duration::from_secs(30), |o| {
        matches!(o, Observed::Exited { .. })
    })
    .await;
    assert_eq!(
        seen,
        Observed::Exited {
            reason: "killed by signal 15 (SIGTERM)".into()
        }
    );
    let modelfile = data
        .path()
        .canonicalize()
        .unwrap()
        .join(format!("ollama/replicas/{}/Modelfile", broken.replica_id));
    assert!(
        fs::read_to_string(modelfile).unwrap().starts_with(&format!(
            "FROM {}\n",
            gguf.canonicalize().unwrap().display()
        )),
        "local weights are used as they are"
    );
    let logs = driver.logs(&broken, None, 100).await.unwrap();
    assert!(
        logs.lines
            .iter()
            .any(|l| l.line.contains("setting up model broken:model failed")),
        "{logs:#?}"
    );
    driver.stop(&broken, Duration::from_secs(1)).await.unwrap();
}

/// Issue 13 item 11: file permissions. What the driver writes under the data dir (the
/// dir itself, replica logs, the ollama runtime's Modelfile and model store) is private
/// to the server's user, whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let fake = fake_ollama(tmp.path());
    let mut config = LocalConfig::new(&data_dir);
    config.runner_bin = Some(fake.clone());
    config.ollama_bin = Some(fake);
    let driver = LocalDriver::new(config).unwrap();
    let mut cleanup = Cleanup {
        data_dir: data_dir.clone(),
        pids: Vec::new(),
    };
    let r = driver
        .launch(&spec(None, Runtime::Ollama, "smollm2:135m"))
        .await
        .unwrap();
    cleanup.pids.push(pid(&r));
    let mode = |p: PathBuf| {
        let m = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        (p.strip_prefix(&data_dir).unwrap().display().to_string(), m)
    };
    let logs = data_dir.join("logs").join(r.instance_id.to_string());
    let log = fs::read_dir(&logs).unwrap().next().unwrap().unwrap().path();
    let replica = data_dir.join(format!("ollama/replicas/{}", r.replica_id));
    for (path, expected) in [
        (data_dir.clone(), 0o700),
        (data_dir.join("logs"), 0o700),
        (logs, 0o700),
        (log, 0o600),
        (replica.clone(), 0o700),
        (replica.join("Modelfile"), 0o600),
        (data_dir.join("ollama/models"), 0o700),
    ] {
        let (name, got) = mode(path);
        assert_eq!(got, expected, "{name}: {got:o}");
    }
    driver.stop(&r, Duration::from_secs(5)).await.unwrap();
}
