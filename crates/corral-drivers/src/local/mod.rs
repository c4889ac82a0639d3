//! The `local` driver: each replica is a process on this host — `corral-runner` (the
//! default) or `ollama serve` — listening on a 127.0.0.1 port.
//!
//! Files under the data dir:
//! - `logs/<instance_id>/<replica_id>.<launch>.log`: the stdout and stderr of one launch
//!   of a replica (`<launch>`: its launch time in µs, also in the `driver_ref`), written
//!   by the replica itself; rotated to `.log.1` past `log_max_bytes` (checked on
//!   `observe`). The file stays after the replica stops, so the logs of stopped,
//!   sleeping and crashed replicas can still be read through the `driver_ref` the
//!   store kept. Retention: each launch of a replica keeps the files of its
//!   `log_runs_kept` latest launches and deletes older ones (a crash loop cannot fill
//!   the disk), and `forget_instance` deletes an instance's whole folder once the
//!   instance is deleted.
//! - `ollama/models`: `OLLAMA_MODELS`, shared by all ollama replicas.
//! - `ollama/replicas/<replica_id>/`: its Modelfile and the `ready` marker.
//!
//! Replicas run in a session of their own (setsid): the terminal's Ctrl-C and the exit of
//! `corral serve` do not reach them, and a restarted server adopts them through their
//! `driver_ref` (pid + start time, see [`handle`]). Each carries `CORRAL_REPLICA_ID`,
//! `CORRAL_INSTANCE_ID`, `CORRAL_DATA_DIR` and `CORRAL_LOG_LAUNCH` in its environment:
//! that is how `orphans` finds replicas nobody recorded (with a reference that reads
//! their log) and how `stop` finds stragglers of a replica.
//!
//! Sizes: vCPUs set the llama.cpp thread count (at least 1), not a CPU quota. Memory is
//! not enforced: RLIMIT_AS counts llama.cpp's mmap of the whole model file and every
//! thread's reserved stack, so it breaks loads far below real use, and cgroups need a
//! delegated hierarchy that a server started from a shell rarely has. The offer keeps
//! requests within the host's memory, and `resources` reports the replica's RSS.
//!
//! Ollama (when installed or configured): `ollama serve` with `OLLAMA_HOST` on a free
//! port and `OLLAMA_MODELS` under the data dir. A helper in the replica's process group
//! then creates the model under its catalog id from a Modelfile — `FROM` the local GGUF
//! when the spec has one, else `ollama pull` of the spec's Ollama registry name first —
//! with `num_ctx` and `num_thread` set, and marks the replica ready. The helper lives in
//! the replica's session, so a restart of `corral serve` does not interrupt it; if setup
//! fails it stops the whole replica, whose log then says why.

mod handle;
mod logfile;
mod offers;
mod procfs;

use corral_guard::files as private;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use corral_core::{ComputeOffer, ComputeType, ModelSource};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    ComputeDriver, Error, LaunchSpec, LogLine, LogPage, Observed, ReplicaRef, ResourceUsage,
    Result, Runtime,
};
use handle::Handle;

const RUNNER_NAME: &str = "corral-runner";
const ENV_REPLICA: &str = "CORRAL_REPLICA_ID";
const ENV_INSTANCE: &str = "CORRAL_INSTANCE_ID";
const ENV_DATA_DIR: &str = "CORRAL_DATA_DIR";
/// The launch number of the replica's log file (`Handle::log`), so `orphans` rebuilds
/// a reference that reads the right log.
const ENV_LOG_LAUNCH: &str = "CORRAL_LOG_LAUNCH";
/// Variables a replica inherits from `corral serve`. Everything else is dropped: the
/// server's environment holds secrets (JWT keys, database and cloud credentials) a model
/// server has no use for, and its RUST_LOG would filter the runner's own logs away.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];
/// How long `stop` waits for a process to go after SIGKILL, and `observe` for the exit
/// status of a child that has ended.
const EXIT_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// Runs `ollama serve` in the replica's process group and, next to it, sets up the model:
/// waits for the server, pulls (when `$2` names a registry model), creates the model from
/// the Modelfile, then touches the ready marker. The helper is forked twice so that init
/// reaps it, not ollama (which would leave it a zombie); `kill 0` on failure stops the
/// whole group, ollama included. Arguments: ollama binary, pull name or "", Modelfile,
/// model name, ready marker.
const OLLAMA_SCRIPT: &str = r#"
ollama=$1 pull=$2 modelfile=$3 name=$4 ready=$5
( (
    tries=0
    until "$ollama" list >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 600 ]; then
            echo "corral: ollama serve did not answer within 60 s; stopping" >&2
            kill -s TERM 0
            exit 1
        fi
        sleep 0.1
    done
    if { [ -z "$pull" ] || "$ollama" pull "$pull"; } && "$ollama" create "$name" -f "$modelfile"; then
        : > "$ready"
        echo "corral: model $name is ready"
    else
        echo "corral: setting up model $name failed; stopping" >&2
        kill -s TERM 0
    fi
) & )
exec "$ollama" serve
"#;

/// Settings of the local driver.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Corral's data dir; logs and ollama's files go below it.
    pub data_dir: PathBuf,
    /// The `corral-runner` binary; None: next to the current executable, else in PATH.
    pub runner_bin: Option<PathBuf>,
    /// The `ollama` binary; None: from PATH when installed, else the Ollama runtime is
    /// unavailable.
    pub ollama_bin: Option<PathBuf>,
    /// llama.cpp threads per replica; None: the requested vCPUs rounded down, at least 1.
    pub threads_per_replica: Option<u32>,
    /// A replica's log is rotated (one previous file kept) once it is larger than this.
    pub log_max_bytes: u64,
    /// Log files kept per replica, one per launch: the latest this many (at least 1,
    /// the running one) survive each new launch of the same replica.
    pub log_runs_kept: usize,
}

impl LocalConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalConfig {
            data_dir: data_dir.into(),
            runner_bin: None,
            ollama_bin: None,
            threads_per_replica: None,
            log_max_bytes: 20 << 20,
            log_runs_kept: 5,
        }
    }
}

/// How a child this server spawned ended, as its waiter task saw it.
#[derive(Debug, Clone)]
struct Ended {
    /// The exit status, or why waiting for it failed.
    status: std::result::Result<ExitStatus, String>,
    at: Instant,
}

/// How long the exit status of an ended child is kept for `observe` to report; after
/// that the replica reads as `Lost`, and the map of children stays small on a server
/// that runs for months.
const ENDED_KEPT: Duration = Duration::from_secs(3600);

/// A process this server spawned. Its waiter task reaps it (no zombies) and publishes
/// the exit status, which only the parent can learn.
struct Spawned {
    pid: i32,
    start: u64,
    ended: watch::Receiver<Option<Ended>>,
}

struct CpuSample {
    pid: i32,
    start: u64,
    at: Instant,
    ticks: u64,
}

/// What to execute for one replica.
struct Plan {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    /// The port the replica was told to use; None when it picks one itself.
    port: Option<u16>,
    /// For the log's first line.
    description: String,
}

pub struct LocalDriver {
    data_dir: PathBuf,
    runner_bin: PathBuf,
    ollama_bin: Option<PathBuf>,
    threads_per_replica: Option<u32>,
    log_max_bytes: u64,
    log_runs_kept: usize,
    offer: ComputeOffer,
    children: Mutex<HashMap<Uuid, Spawned>>,
    cpu: Mutex<HashMap<Uuid, CpuSample>>,
}

/// This host's total memory in MiB (None where /proc/meminfo cannot be read): what
/// capacity admission commits local replicas against.
pub fn host_memory_mib() -> Option<u64> {
    procfs::total_memory_mib()
}

impl LocalDriver {
    /// Resolves the runtime binaries and creates the data dir. Fails when `corral-runner`
    /// cannot be found, since without it this driver cannot launch anything by default.
    pub fn new(config: LocalConfig) -> Result<Self> {
        private::create_private_dir(&config.data_dir).map_err(|source| Error::Io {
            context: format!("cannot create data dir {}", config.data_dir.display()),
            source,
        })?;
        let data_dir = fs::canonicalize(&config.data_dir).map_err(|source| Error::Io {
            context: format!("cannot resolve data dir {}", config.data_dir.display()),
            source,
        })?;
        let path_var = std::env::var_os("PATH");
        let runner_bin = match config.runner_bin {
            Some(p) => executable(&p)?,
            None => {
                let exe = std::env::current_exe().ok();
                let exe_dir = exe.as_deref().and_then(Path::parent);
                find_runner(exe_dir, path_var.as_deref()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{RUNNER_NAME} was not found next to {} nor in PATH; build it with \
                         `cargo build --release -p corral-runner` (it lands next to `corral`) \
                         or configure its path",
                        exe.as_deref()
                            .map_or("this program".into(), |e| e.display().to_string())
                    ))
                })?
            }
        };
        let ollama_bin = match config.ollama_bin {
            Some(p) => Some(executable(&p)?),
            None => find_in_path("ollama", path_var.as_deref()),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let memory = procfs::total_memory_mib().unwrap_or(0);
        tracing::info!(
            runner = %runner_bin.display(),
            ollama = ?ollama_bin,
            cores,
            memory_mib = memory,
            "local driver ready"
        );
        Ok(LocalDriver {
            data_dir,
            runner_bin,
            ollama_bin,
            threads_per_replica: config.threads_per_replica,
            log_max_bytes: config.log_max_bytes,
            log_runs_kept: config.log_runs_kept.max(1),
            offer: offers::local_offer(cores, memory),
            children: Mutex::new(HashMap::new()),
            cpu: Mutex::new(HashMap::new()),
        })
    }

    fn log_dir(&self, instance_id: Uuid) -> PathBuf {
        self.data_dir.join("logs").join(instance_id.to_string())
    }

    /// The log file of one launch (`Handle::log`) of a replica.
    fn log_path(&self, instance_id: Uuid, replica_id: Uuid, launch: Option<u64>) -> PathBuf {
        self.log_dir(instance_id).join(match launch {
            Some(launch) => format!("{replica_id}.{launch}.log"),
            None => format!("{replica_id}.log"),
        })
    }

    fn ollama_dir(&self, replica_id: Uuid) -> PathBuf {
        self.data_dir
            .join("ollama")
            .join("replicas")
            .join(replica_id.to_string())
    }

    fn runner_plan(&self, spec: &LaunchSpec, threads: u32) -> Result<Plan> {
        let model = local_weights(spec)?.ok_or_else(|| not_local(spec))?;
        let mut args: Vec<OsString> = vec!["--model".into(), model.into_os_string()];
        for (flag, value) in [
            ("--name", spec.model_id.clone()),
            ("--host", "127.0.0.1".into()),
            // The runner binds a free port itself and we read it from its socket: no
            // window in which another process can take a port we picked.
            ("--port", "0".into()),
            ("--parallel", spec.parallel.to_string()),
            ("--ctx", spec.context.to_string()),
            ("--threads", threads.to_string()),
        ] {
            args.push(flag.into());
            args.push(value.into());
        }
        let description = std::iter::once(self.runner_bin.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Plan {
            program: self.runner_bin.clone(),
            args,
            env: Vec::new(),
            port: None,
            description,
        })
    }

    fn ollama_plan(&self, spec: &LaunchSpec, threads: u32) -> Result<Plan> {
        let ollama = self.ollama_bin.as_ref().ok_or_else(|| {
            Error::Invalid(
                "ollama is not installed on this host (not in PATH, not configured); \
                 use the corral-runner runtime"
                    .into(),
            )
        })?;
        let (pull, from) = match (local_weights(spec)?, &spec.source) {
            (Some(path), _) => (String::new(), path.to_string_lossy().into_owned()),
            (None, ModelSource::Ollama { name }) => (name.clone(), name.clone()),
            (None, _) => return Err(not_local(spec)),
        };
        if from.contains('\n') {
            return Err(Error::Invalid(format!(
                "model source {from:?} has a newline"
            )));
        }
        let dir = self.ollama_dir(spec.replica_id);
        let io = |context: &str| {
            let context = format!("{context} ({})", dir.display());
            move |source| Error::Io { context, source }
        };
        private::create_private_dir(&dir).map_err(io("cannot create the replica dir"))?;
        let modelfile = dir.join("Modelfile");
        let ready = dir.join("ready");
        match fs::remove_file(&ready) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io("cannot clear the ready marker")(e));
            }
            _ => {}
        }
        private::write_private(
            &modelfile,
            format!(
                "FROM {from}\nPARAMETER num_ctx {}\nPARAMETER num_thread {threads}\n",
                spec.context
            )
            .as_bytes(),
        )
        .map_err(io("cannot write the Modelfile"))?;
        let models = self.data_dir.join("ollama").join("models");
        private::create_private_dir(&models).map_err(|source| Error::Io {
            context: format!("cannot create {}", models.display()),
            source,
        })?;
        // ollama binds at once (it loads no model before listening), so the window in
        // which another process could take this port is a few milliseconds.
        let port = free_port()?;
        let description = format!(
            "{} serve on 127.0.0.1:{port}, then {}create {} from {}",
            ollama.display(),
            if pull.is_empty() {
                String::new()
            } else {
                format!("pull {pull}, ")
            },
            spec.model_id,
            modelfile.display()
        );
        Ok(Plan {
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                OLLAMA_SCRIPT.into(),
                "corral-ollama".into(),
                ollama.into(),
                pull.into(),
                modelfile.into(),
                spec.model_id.clone().into(),
                ready.into(),
            ],
            env: vec![
                ("OLLAMA_HOST", format!("127.0.0.1:{port}").into()),
                ("OLLAMA_MODELS", models.into()),
                ("OLLAMA_NUM_PARALLEL", spec.parallel.to_string().into()),
                ("OLLAMA_CONTEXT_LENGTH", spec.context.to_string().into()),
                // Corral decides when a replica sleeps; ollama must not unload on its own.
                ("OLLAMA_KEEP_ALIVE", "-1".into()),
                ("OLLAMA_MAX_LOADED_MODELS", "1".into()),
                // The models dir is shared: one replica's start must not prune the blobs
                // another is still pulling.
                ("OLLAMA_NOPRUNE", "1".into()),
            ],
            port: Some(port),
            description,
        })
    }

    /// This server's own child behind `h`, if it spawned it.
    fn own(&self, replica_id: Uuid, h: &Handle) -> Option<watch::Receiver<Option<Ended>>> {
        lock(&self.children)
            .get(&replica_id)
            .filter(|c| c.pid == h.pid && c.start == h.start)
            .map(|c| c.ended.clone())
    }

    /// Whether the process behind `h` is running (same pid, same start time, not a zombie).
    fn alive(h: &Handle) -> Option<procfs::Stat> {
        procfs::stat(h.pid).filter(|st| st.start == h.start && st.is_alive())
    }

    /// Whether the replica's main process is gone for good: reaped, for our own child
    /// (so stop never leaves a zombie behind); not running, for an adopted one (init
    /// reaps it).
    fn gone(&self, replica_id: Uuid, h: &Handle) -> bool {
        match self.own(replica_id, h) {
            Some(ended) => ended.borrow().is_some(),
            None => Self::alive(h).is_none(),
        }
    }

    async fn wait_gone(&self, replica_id: Uuid, h: &Handle, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.gone(replica_id, h) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Processes of this data dir that carry `replica_id` (helpers, ollama's model
    /// runners) whose group leader is gone.
    fn stragglers(&self, replica_id: Uuid) -> Vec<i32> {
        let id = replica_id.to_string();
        let me = std::process::id() as i32;
        procfs::pids()
            .into_iter()
            .filter(|pid| *pid != me)
            .filter(|pid| {
                procfs::environ(*pid).is_some_and(|env| {
                    env.get(ENV_REPLICA) == Some(&id) && self.is_our_data_dir(&env)
                })
            })
            .filter(|pid| procfs::stat(*pid).is_some_and(|st| st.is_alive()))
            .collect()
    }

    fn is_our_data_dir(&self, env: &HashMap<String, String>) -> bool {
        env.get(ENV_DATA_DIR).map(String::as_str) == Some(&*self.data_dir.to_string_lossy())
    }
}

#[async_trait]
impl ComputeDriver for LocalDriver {
    fn name(&self) -> &'static str {
        "local"
    }

    fn offers(&self) -> Vec<ComputeOffer> {
        vec![self.offer.clone()]
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<ReplicaRef> {
        if spec.compute.compute_type != ComputeType::Local {
            return Err(Error::Invalid(format!(
                "the local driver runs local compute, not {}",
                spec.compute.compute_type.as_str()
            )));
        }
        if spec.parallel == 0 || spec.context == 0 {
            return Err(Error::Invalid(
                "parallel and context must be at least 1".into(),
            ));
        }
        let threads = self
            .threads_per_replica
            .unwrap_or(spec.compute.cpu.floor() as u32)
            .max(1);
        let plan = match spec.runtime {
            Runtime::CorralRunner => self.runner_plan(spec, threads)?,
            Runtime::Ollama => self.ollama_plan(spec, threads)?,
        };

        let launch = u64::try_from(Utc::now().timestamp_micros())
            .map_err(|_| Error::Invalid("the clock is before 1970".into()))?;
        let log_path = self.log_path(spec.instance_id, spec.replica_id, Some(launch));
        let log_io = |context: &str| {
            let context = format!("{context} {}", log_path.display());
            move |source| Error::Io { context, source }
        };
        let log_dir = self.log_dir(spec.instance_id);
        // Logs echo prompts and model output: private, like everything under the data dir.
        private::create_private_dir(&log_dir).map_err(log_io("cannot create the log dir of"))?;
        // Earlier launches of this replica have ended (one launch runs at a time), so
        // their files can go; the new one counts toward what is kept.
        if let Err(e) = logfile::prune_launches(&log_dir, spec.replica_id, self.log_runs_kept - 1) {
            tracing::warn!(replica = %spec.replica_id, "cannot prune old replica logs: {e}");
        }
        let mut log = private::private_options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(log_io("cannot open"))?;
        writeln!(
            log,
            "{} corral: starting replica {} of instance {}: {}",
            Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            spec.replica_id,
            spec.instance_id,
            plan.description
        )
        .map_err(log_io("cannot write"))?;
        let stderr = log.try_clone().map_err(log_io("cannot share"))?;

        let mut cmd = tokio::process::Command::new(&plan.program);
        cmd.args(&plan.args)
            .env_clear()
            .envs(
                INHERITED_ENV
                    .iter()
                    .filter_map(|k| Some((k, std::env::var_os(k)?))),
            )
            .envs(plan.env)
            .env(ENV_REPLICA, spec.replica_id.to_string())
            .env(ENV_INSTANCE, spec.instance_id.to_string())
            .env(ENV_DATA_DIR, &self.data_dir)
            .env(ENV_LOG_LAUNCH, launch.to_string())
            // Plain text in the log file rather than terminal colour codes.
            .env("NO_COLOR", "1")
            .current_dir(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        // A session of its own makes the replica the leader of a new process group: no
        // controlling terminal (no Ctrl-C, no SIGHUP when the terminal closes), and one
        // group that `stop` can signal as a whole.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| Error::Io {
            context: format!("cannot start {}", plan.program.display()),
            source,
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| Error::Invalid("the replica process ended at once".into()))?;
        // The child is not reaped before the waiter below runs, so its /proc entry is there.
        let start = procfs::stat(pid)
            .ok_or_else(|| Error::Invalid(format!("process {pid} vanished right after start")))?
            .start;
        let (tx, ended) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.map_err(|e| e.to_string());
            // No receiver left only means nobody asks any more.
            let _ = tx.send(Some(Ended {
                status,
                at: Instant::now(),
            }));
        });
        let mut children = lock(&self.children);
        children.retain(|_, c| {
            c.ended
                .borrow()
                .as_ref()
                .is_none_or(|e| e.at.elapsed() < ENDED_KEPT)
        });
        children.insert(spec.replica_id, Spawned { pid, start, ended });
        drop(children);
        let handle = Handle {
            pid,
            start,
            runtime: spec.runtime,
            port: plan.port,
            log: Some(launch),
        };
        tracing::info!(
            replica = %spec.replica_id,
            instance = %spec.instance_id,
            pid,
            log = %log_path.display(),
            "launched replica"
        );
        Ok(ReplicaRef {
            instance_id: spec.instance_id,
            replica_id: spec.replica_id,
            driver_ref: handle.encode(),
        })
    }

    async fn observe(&self, replica: &ReplicaRef) -> Result<Observed> {
        let h = Handle::decode(&replica.driver_ref)?;
        let log_path = self.log_path(replica.instance_id, replica.replica_id, h.log);
        if Self::alive(&h).is_some() {
            let cap = self.log_max_bytes;
            let path = log_path.clone();
            if let Err(e) = blocking(move || logfile::rotate_if_over(&path, cap)).await? {
                tracing::warn!(log = %log_path.display(), "cannot rotate replica log: {e}");
            }
            // /proc/PID/net/tcp lists every socket of the host's network namespace: its
            // read grows with the host's connections, so it stays off the async threads.
            let pid = h.pid;
            let ports = blocking(move || procfs::listening_ports(pid)).await?;
            let port = match h.port {
                Some(p) => ports.contains(&p).then_some(p),
                None => ports.first().copied(),
            };
            let ready = match (port, h.runtime) {
                (None, _) => false,
                (Some(_), Runtime::CorralRunner) => true,
                (Some(_), Runtime::Ollama) => {
                    self.ollama_dir(replica.replica_id).join("ready").exists()
                }
            };
            return Ok(match port {
                Some(p) if ready => Observed::Running {
                    endpoint: format!("http://127.0.0.1:{p}"),
                },
                _ => Observed::Starting,
            });
        }
        let Some(mut ended) = self.own(replica.replica_id, &h) else {
            // Not alive and not our child: it ended while another server process (or
            // none) was its parent, so nobody here knows how.
            return Ok(Observed::Lost);
        };
        // It is our child and has ended; the waiter may not have reaped it yet.
        let outcome = tokio::time::timeout(EXIT_WAIT, ended.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|o| o.clone()));
        let reason = match outcome {
            Some(e) => blocking(move || exit_reason(&e.status, &log_path)).await?,
            None => "ended; its exit status was not collected yet".into(),
        };
        Ok(Observed::Exited { reason })
    }

    async fn stop(&self, replica: &ReplicaRef, grace: Duration) -> Result<()> {
        let h = Handle::decode(&replica.driver_ref)?;
        if let Some(st) = Self::alive(&h) {
            signal(&h, &st, libc::SIGTERM);
            if !self.wait_gone(replica.replica_id, &h, grace).await
                && let Some(st) = Self::alive(&h)
            {
                tracing::warn!(pid = h.pid, "replica ignored SIGTERM; killing it");
                signal(&h, &st, libc::SIGKILL);
            }
        }
        if !self.wait_gone(replica.replica_id, &h, EXIT_WAIT).await {
            return Err(Error::Provider(format!(
                "process {} of replica {} did not exit within {} s of SIGKILL",
                h.pid,
                replica.replica_id,
                EXIT_WAIT.as_secs()
            )));
        }
        // With the leader gone its process group may live on (ollama's model runners,
        // the setup helper); they carry the replica id.
        for pid in self.stragglers(replica.replica_id) {
            tracing::warn!(pid, replica = %replica.replica_id, "killing a leftover process");
            // SAFETY: plain syscall; pid was just seen carrying this replica's id.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match fs::remove_dir_all(self.ollama_dir(replica.replica_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(replica = %replica.replica_id, "cannot remove ollama files: {e}")
            }
            _ => {}
        }
        lock(&self.cpu).remove(&replica.replica_id);
        Ok(())
    }

    async fn logs(
        &self,
        replica: &ReplicaRef,
        cursor: Option<&str>,
        tail: usize,
    ) -> Result<LogPage> {
        let offset = cursor
            .map(|c| {
                c.parse::<u64>()
                    .map_err(|_| Error::Invalid(format!("invalid log cursor {c:?}")))
            })
            .transpose()?;
        let h = Handle::decode(&replica.driver_ref)?;
        let path = self.log_path(replica.instance_id, replica.replica_id, h.log);
        let context = format!("cannot read {}", path.display());
        let chunk = blocking(move || match offset {
            Some(offset) => logfile::read_from(&path, offset),
            None => logfile::read_tail(&path, tail),
        })
        .await?
        .map_err(|source| Error::Io { context, source })?;
        Ok(LogPage {
            lines: chunk
                .lines
                .into_iter()
                .map(|line| LogLine {
                    at: logfile::line_time(&line),
                    replica_id: replica.replica_id,
                    line,
                })
                .collect(),
            next: Some(chunk.next.to_string()),
        })
    }

    async fn resources(&self, replica: &ReplicaRef) -> Result<Option<ResourceUsage>> {
        let h = Handle::decode(&replica.driver_ref)?;
        let Some(leader) = Self::alive(&h) else {
            lock(&self.cpu).remove(&replica.replica_id);
            return Ok(None);
        };
        // corral-runner is one process; ollama runs each model in a child process of
        // its own, in the same group.
        let members = match h.runtime {
            Runtime::CorralRunner => vec![(h.pid, leader)],
            Runtime::Ollama => procfs::group_members(h.pid),
        };
        let ticks: u64 = members.iter().map(|(_, st)| st.cpu_ticks).sum();
        let memory_bytes = members
            .iter()
            .filter_map(|(pid, _)| procfs::rss_bytes(*pid))
            .sum();
        let hz = procfs::clock_ticks() as f64;
        let now = Instant::now();
        let previous = lock(&self.cpu).insert(
            replica.replica_id,
            CpuSample {
                pid: h.pid,
                start: h.start,
                at: now,
                ticks,
            },
        );
        let cpu_percent = match previous.filter(|p| p.pid == h.pid && p.start == h.start) {
            Some(p) if now > p.at => {
                // Saturating: a group member that ended takes its CPU time with it.
                ticks.saturating_sub(p.ticks) as f64 / hz / (now - p.at).as_secs_f64() * 100.0
            }
            // First sample: the average since the process started.
            _ => {
                let age = procfs::uptime_secs().unwrap_or(0.0) - leader.start as f64 / hz;
                if age > 0.0 {
                    ticks as f64 / hz / age * 100.0
                } else {
                    0.0
                }
            }
        };
        Ok(Some(ResourceUsage {
            cpu_percent,
            memory_bytes,
        }))
    }

    async fn forget_instance(&self, instance_id: Uuid) -> Result<()> {
        let dir = self.log_dir(instance_id);
        let context = format!("cannot delete the logs in {}", dir.display());
        match blocking(move || fs::remove_dir_all(dir)).await? {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Io { context, source: e }),
            _ => Ok(()),
        }
    }

    /// By replica id only: a replica's process is found again by the id in its
    /// environment, and the handle rebuilt here may differ in form from the recorded one
    /// (the port is only known for ollama). Twins cannot arise: a relaunch stops first.
    async fn orphans(&self, known: &[ReplicaRef]) -> Result<Vec<ReplicaRef>> {
        let runner_name = file_name(&self.runner_bin);
        let ollama_name = self.ollama_bin.as_deref().map(file_name);
        let mut found: Vec<ReplicaRef> = Vec::new();
        for pid in procfs::pids() {
            // Replicas lead their own process group; the rest of a group follows its leader.
            let Some(st) = procfs::stat(pid).filter(|st| st.pgrp == pid && st.is_alive()) else {
                continue;
            };
            let Some(env) = procfs::environ(pid) else {
                continue;
            };
            if !self.is_our_data_dir(&env) {
                continue;
            }
            let ids = |key| env.get(key).and_then(|v| Uuid::parse_str(v).ok());
            let (Some(replica_id), Some(instance_id)) = (ids(ENV_REPLICA), ids(ENV_INSTANCE))
            else {
                continue;
            };
            if known.iter().any(|k| k.replica_id == replica_id)
                || found.iter().any(|r| r.replica_id == replica_id)
            {
                continue;
            }
            let exe = procfs::exe_name(pid);
            let (runtime, port) = if exe.as_deref() == Some(&*runner_name) {
                (Runtime::CorralRunner, None)
            } else if exe.is_some() && exe.as_deref() == ollama_name.as_deref() {
                let port = env
                    .get("OLLAMA_HOST")
                    .and_then(|h| h.rsplit_once(':')?.1.parse().ok());
                (Runtime::Ollama, port)
            } else {
                continue;
            };
            let handle = Handle {
                pid,
                start: st.start,
                runtime,
                port,
                log: env.get(ENV_LOG_LAUNCH).and_then(|v| v.parse().ok()),
            };
            found.push(ReplicaRef {
                instance_id,
                replica_id,
                driver_ref: handle.encode(),
            });
        }
        Ok(found)
    }
}

/// Signals the replica's process group, or only the process when it does not lead one
/// (then it was not started by this driver's setsid and its group is not ours to kill).
fn signal(h: &Handle, st: &procfs::Stat, sig: libc::c_int) {
    let target = if st.pgrp == h.pid { -h.pid } else { h.pid };
    // SAFETY: plain syscall. The pid was just checked to be the replica (same start time).
    unsafe { libc::kill(target, sig) };
}

/// "exit code 1: <last log line>", "killed by signal 9 (SIGKILL)".
fn exit_reason(status: &std::result::Result<ExitStatus, String>, log: &Path) -> String {
    let status = match status {
        Err(e) => return format!("ended; cannot get its exit status: {e}"),
        Ok(status) => status,
    };
    let (mut reason, explain) = match (status.code(), status.signal()) {
        (Some(code), _) => (format!("exit code {code}"), code != 0),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGHUP => " (SIGHUP)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGQUIT => " (SIGQUIT)",
                libc::SIGILL => " (SIGILL)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGBUS => " (SIGBUS)",
                libc::SIGFPE => " (SIGFPE)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGPIPE => " (SIGPIPE)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            let core = if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            };
            // A kill from outside says nothing about the replica; a crash might.
            let external = matches!(sig, libc::SIGKILL | libc::SIGTERM | libc::SIGINT);
            (format!("killed by signal {sig}{name}{core}"), !external)
        }
        (None, None) => (format!("ended ({status})"), true),
    };
    if explain && let Some(line) = logfile::last_line(log) {
        let line: String = line.chars().take(300).collect();
        reason.push_str(": ");
        reason.push_str(&line);
    }
    reason
}

/// The spec's model file, resolved (a relative path would depend on our working dir).
fn local_weights(spec: &LaunchSpec) -> Result<Option<PathBuf>> {
    spec.model_path
        .as_ref()
        .map(|p| {
            fs::canonicalize(p).map_err(|e| {
                Error::Invalid(format!(
                    "model file {} of {}: {e}",
                    p.display(),
                    spec.model_id
                ))
            })
        })
        .transpose()
}

fn not_local(spec: &LaunchSpec) -> Error {
    Error::Invalid(format!(
        "the weights of {} are not on this host; pull the model first",
        spec.model_id
    ))
}

/// `corral-runner` next to our own executable (a release build puts both binaries in
/// one dir), else in PATH.
fn find_runner(exe_dir: Option<&Path>, path_var: Option<&OsStr>) -> Option<PathBuf> {
    exe_dir
        .map(|d| d.join(RUNNER_NAME))
        .filter(|p| is_executable(p))
        .and_then(|p| fs::canonicalize(p).ok())
        .or_else(|| find_in_path(RUNNER_NAME, path_var))
}

/// The binary resolved through symlinks: `orphans` matches it by the name in
/// `/proc/<pid>/exe`, which is the link's target.
fn find_in_path(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .and_then(|p| fs::canonicalize(p).ok())
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn executable(p: &Path) -> Result<PathBuf> {
    if !is_executable(p) {
        return Err(Error::Invalid(format!(
            "{} is not an executable file",
            p.display()
        )));
    }
    fs::canonicalize(p).map_err(|source| Error::Io {
        context: format!("cannot resolve {}", p.display()),
        source,
    })
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            context: "cannot find a free port on 127.0.0.1".into(),
            source,
        })
}

/// File work (log reads, rotation copies, /proc scans) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Io {
        context: "a background file task failed".into(),
        source: io::Error::other(e),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_lookup_prefers_the_exe_dir() {
        let exe_dir = tempfile::tempdir().unwrap();
        let path_dir = tempfile::tempdir().unwrap();
        let make = |dir: &Path| {
            let p = dir.join(RUNNER_NAME);
            fs::write(&p, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let path_var = std::env::join_paths([path_dir.path()]).unwrap();
        assert_eq!(find_runner(Some(exe_dir.path()), Some(&path_var)), None);

        let in_path = make(path_dir.path()).canonicalize().unwrap();
        assert_eq!(
            find_runner(Some(exe_dir.path()), Some(&path_var)),
            Some(in_path)
        );
        let beside = make(exe_dir.path()).canonicalize().unwrap();
        assert_eq!(
            find_runner(Some(exe_dir.path()), Some(&path_var)),
            Some(beside)
        );
        // Not executable: not a candidate.
        let plain = tempfile::tempdir().unwrap();
        fs::write(plain.path().join(RUNNER_NAME), "").unwrap();
        assert_eq!(find_runner(Some(plain.path()), None), None);
    }

    #[test]
    fn missing_runner_says_how_to_build_it() {
        let data = tempfile::tempdir().unwrap();
        let mut config = LocalConfig::new(data.path());
        config.runner_bin = Some(data.path().join("nope"));
        let err = LocalDriver::new(config).err().unwrap().to_string();
        assert!(err.contains("not an executable"), "{err}");
        // The default lookup: a test binary has no corral-runner beside it unless the
        // workspace built one, so only check the message when the lookup fails.
        if let Err(e) = LocalDriver::new(LocalConfig::new(data.path())) {
            let e = e.to_string();
            assert!(e.contains("cargo build --release -p corral-runner"), "{e}");
        }
    }

    #[test]
    fn exit_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("r.log");
        fs::write(
            &log,
            "loading\ncorral-runner: model file /x.gguf not found\n",
        )
        .unwrap();
        let reason = |raw| exit_reason(&Ok(ExitStatus::from_raw(raw)), &log);
        assert_eq!(reason(0), "exit code 0");
        assert_eq!(
            reason(1 << 8),
            "exit code 1: corral-runner: model file /x.gguf not found"
        );
        assert_eq!(reason(9), "killed by signal 9 (SIGKILL)");
        assert_eq!(reason(15), "killed by signal 15 (SIGTERM)");
        assert_eq!(
            reason(11 | 0x80),
            "killed by signal 11 (SIGSEGV), core dumped: corral-runner: model file /x.gguf not found"
        );
    }
}
