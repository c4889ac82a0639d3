//! The `ecs` compute driver: each replica is one ECS task on a configured cluster, on
//! Fargate (FARGATE or FARGATE_SPOT) or on GPU EC2 instances through a capacity provider
//! (one per GPU instance type, or one for all).
//!
//! - `launch`: registers (or reuses) the task definition for the model and size (see
//!   `taskdef.rs`), then, by [`LaunchMode`]: RunTask in the configured subnets and
//!   security groups (task mode, the default), or desiredCount + 1 on the instance's ECS
//!   service and a claim of the task it starts (service mode, see [`service`]). The task
//!   carries the tags `corral:instance-id` and `corral:replica-id` (and in task mode
//!   `startedBy` is the replica id). The `driver_ref` is the task ARN in both modes.
//! - `observe`: DescribeTasks; the endpoint is the private IPv4 of the task's ENI. ECS
//!   is eventually consistent right after RunTask: a task it does not list yet counts as
//!   starting for `missing_grace` after its launch (or, for one launched by an earlier
//!   server process, after it was first found missing), and as lost only after that.
//! - `stop`: StopTask of exactly that task; in service mode the service's desiredCount
//!   follows, and the last replica deletes the service.
//! - `logs`: the awslogs driver writes to `<log group>/<instance id>/model/<task id>`;
//!   a replica's are read back with GetLogEvents, the forward token being the cursor.
//!   `instance_logs` reads all of an instance's streams with FilterLogEvents, stopped
//!   and replaced tasks included (see `logs.rs`).
//! - `resources`: none; per-task CPU and memory would come from Container Insights.
//! - `orphans`: tasks tagged by Corral that no known replica owns (an unknown replica, or
//!   a task ARN other than the one the replica's row names: the twin of a retried launch,
//!   the task of a lost replica); in service mode also Corral's services with no task
//!   and service tasks nobody claimed.
//! - RunTask carries a `clientToken` made of the replica id and its launch number, so a
//!   retried call (the SDK retries on timeouts and 5xx) starts no second task.
//!
//! Endpoints: `AWS_ENDPOINT_URL` (read by aws-config) or `EcsConfig::endpoint_url`, which
//! is how the tests point the driver at moto.
//!
//! What the moto tests (tests/moto.rs, moto 5.2) cover and what they cannot: task
//! definitions, RunTask placement (capacity provider, subnet, security groups, ENI
//! address), tags, DescribeTasks, StopTask, orphans, GetLogEvents and FilterLogEvents
//! (over several pages) run against moto itself. moto's CreateService and UpdateService
//! only record desiredCount and never start a task, and ListTasks ignores its
//! serviceName filter; the service-mode tests therefore play the ECS service scheduler
//! themselves (RunTask with the service's definition, network and `service:<name>`
//! group), so desiredCount, claiming, stop and deletion are checked against moto's API
//! but the scheduler's own choices (placement, which task a lower count stops,
//! replacing a dead task) are not. moto also drops a service's capacity provider
//! strategy and gives tasks no createdAt, so neither the service's capacity provider
//! nor the age rule for unclaimed orphan tasks is checked there.

mod logs;
pub mod service;
mod taskdef;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_ecs::error::{DisplayErrorContext, SdkError};
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, NetworkConfiguration, Tag,
    Task, TaskField,
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use chrono::DateTime;
use corral_core::compute::{GpuInstanceType, fargate_sizes, known_gpu_instance_types};
use corral_core::{ComputeOffer, ComputeType, ModelSource};
use corral_drivers::{
    ComputeDriver, Error, LaunchSpec, LogLine, LogPage, Observed, ReplicaRef, ResourceUsage,
    Result, Runtime, is_owned,
};
use uuid::Uuid;

pub use taskdef::{CONTAINER, PORT};

pub const TAG_INSTANCE: &str = "corral:instance-id";
pub const TAG_REPLICA: &str = "corral:replica-id";
/// DescribeTasks takes at most this many tasks per call.
const DESCRIBE_BATCH: usize = 100;

/// Settings of the ECS driver (`[ecs]` in corral.toml).
#[derive(Debug, Clone)]
pub struct EcsConfig {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Subnets the tasks' ENIs go in (private ones, normally).
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// Only for public subnets without a NAT: the task needs a route to pull its image.
    /// Fargate only (ECS gives tasks on EC2 instances no public IP).
    pub assign_public_ip: bool,
    /// Image for the Ollama runtime.
    pub runtime_image: String,
    /// Image for the corral-runner runtime; None: that runtime is not offered on ECS.
    pub runner_image: Option<String>,
    /// Role the ECS agent uses to pull the image and write logs.
    pub execution_role_arn: String,
    /// Role the model server runs as; it needs no AWS access, so usually none.
    pub task_role_arn: Option<String>,
    /// CloudWatch Logs group of the awslogs driver (it must exist).
    pub log_group: String,
    pub region: String,
    /// EC2 capacity provider of GPU instances, for the types without one of their own
    /// in `gpu_capacity_providers`.
    pub gpu_capacity_provider: Option<String>,
    /// GPU instance types offered (from `known_gpu_instance_types`).
    pub gpu_instance_types: Vec<String>,
    /// A capacity provider per GPU instance type, where each type has an Auto Scaling
    /// group of its own; its types are offered too. No GPU offer when this is empty and
    /// `gpu_capacity_provider` is None.
    pub gpu_capacity_providers: BTreeMap<String, String>,
    /// Overrides the AWS endpoint (otherwise `AWS_ENDPOINT_URL` or AWS's own).
    pub endpoint_url: Option<String>,
    /// How replicas become ECS tasks (see [`LaunchMode`]).
    pub launch: LaunchMode,
    /// Service mode: how long `launch` waits for the service scheduler to start the task
    /// it asked for (the task, not its readiness: a task exists, PROVISIONING, within
    /// seconds even while a capacity provider is still adding an instance).
    pub service_start_timeout: Duration,
    /// How long after its launch a task DescribeTasks does not list (yet) counts as
    /// starting rather than lost.
    pub missing_grace: Duration,
}

impl EcsConfig {
    pub const DEFAULT_RUNTIME_IMAGE: &str = "ollama/ollama:latest";
    pub const DEFAULT_SERVICE_START_TIMEOUT: Duration = Duration::from_secs(60);
    /// ECS usually lists a new task within seconds; a minute covers its slow days.
    pub const DEFAULT_MISSING_GRACE: Duration = Duration::from_secs(60);

    /// The runtime tasks run: corral-runner when its image is configured (it reads any
    /// registry or URL source), else the Ollama image, which every configuration has.
    pub fn runtime(&self) -> Runtime {
        if self.runner_image.is_some() {
            Runtime::CorralRunner
        } else {
            Runtime::Ollama
        }
    }
}

/// How the driver turns a replica into an ECS task (`[ecs] launch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LaunchMode {
    /// One RunTask per replica (the default). Corral's reconciler already does what an
    /// ECS service scheduler would (replacement, health checks, scaling, sleep), so a
    /// standalone task per replica maps one to one onto it: `stop` ends exactly that
    /// task and nothing else decides which tasks run.
    #[default]
    Task,
    /// One ECS service per instance whose desiredCount is the number of replicas (see
    /// [`service`]): the instance appears as a service in the console, with ECS's service
    /// events and metrics, for operators who run everything as services.
    Service,
}

impl std::str::FromStr for LaunchMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "task" => Ok(LaunchMode::Task),
            "service" => Ok(LaunchMode::Service),
            other => Err(Error::Invalid(format!(
                "ecs launch mode {other:?}: expected \"task\" or \"service\""
            ))),
        }
    }
}

pub struct EcsDriver {
    cfg: EcsConfig,
    ecs: aws_sdk_ecs::Client,
    logs: aws_sdk_cloudwatchlogs::Client,
    offers: Vec<ComputeOffer>,
    /// Service mode: launches and stops of one instance take turns (see [`service`]).
    locks: std::sync::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// The replica of each task whose log lines were read (see `logs.rs`).
    task_replicas: std::sync::Mutex<HashMap<String, Uuid>>,
    /// Since when each task DescribeTasks has not listed yet has been expected: its
    /// launch, or the first observation that missed it (see [`missing`]).
    unlisted: std::sync::Mutex<HashMap<String, Instant>>,
}

impl EcsDriver {
    /// Checks the configuration and builds the AWS clients. Makes no AWS call:
    /// credentials are resolved (from the usual chain) on first use.
    pub async fn new(cfg: EcsConfig) -> Result<Self> {
        for (what, empty) in [
            ("cluster", cfg.cluster.is_empty()),
            ("subnets", cfg.subnets.is_empty()),
            ("security_groups", cfg.security_groups.is_empty()),
            ("execution_role_arn", cfg.execution_role_arn.is_empty()),
            ("log_group", cfg.log_group.is_empty()),
            ("region", cfg.region.is_empty()),
        ] {
            if empty {
                return Err(Error::Invalid(format!("ecs driver: {what} is not set")));
            }
        }
        let offers = offers(&cfg)?;
        let sdk = sdk_config(&cfg.region, cfg.endpoint_url.as_deref()).await;
        tracing::info!(cluster = %cfg.cluster, region = %cfg.region, "ecs driver ready");
        Ok(EcsDriver {
            ecs: aws_sdk_ecs::Client::new(&sdk),
            logs: aws_sdk_cloudwatchlogs::Client::new(&sdk),
            cfg,
            offers,
            locks: Default::default(),
            task_replicas: Default::default(),
            unlisted: Default::default(),
        })
    }

    /// The family's latest ACTIVE revision when it is this definition, else a new one.
    async fn task_definition(&self, def: &taskdef::TaskDef) -> Result<String> {
        // A family that does not exist yet is an error here; registering creates it.
        if let Ok(out) = self
            .ecs
            .describe_task_definition()
            .task_definition(&def.family)
            .send()
            .await
            && let Some(td) = out.task_definition()
            && td.status() == Some(&aws_sdk_ecs::types::TaskDefinitionStatus::Active)
            && td
                .container_definitions()
                .first()
                .is_some_and(|c| def.matches(c))
            && let Some(arn) = td.task_definition_arn()
        {
            return Ok(arn.to_string());
        }
        let out = self
            .ecs
            .register_task_definition()
            .family(&def.family)
            .requires_compatibilities(def.compatibility.clone())
            .network_mode(taskdef::TaskDef::network_mode())
            .set_cpu(def.cpu.clone())
            .set_memory(def.memory.clone())
            .execution_role_arn(&self.cfg.execution_role_arn)
            .set_task_role_arn(self.cfg.task_role_arn.clone())
            .container_definitions(def.container.clone())
            .set_placement_constraints(def.placement.clone().map(|p| vec![p]))
            .send()
            .await
            .map_err(provider("RegisterTaskDefinition"))?;
        let arn = out
            .task_definition()
            .and_then(|td| td.task_definition_arn())
            .ok_or_else(|| Error::Provider("RegisterTaskDefinition returned no ARN".into()))?;
        tracing::info!(family = %def.family, arn, "registered task definition");
        Ok(arn.to_string())
    }

    /// Checks the spec (again: nothing invalid may reach AWS) and works out where its
    /// task goes: the task definition, the capacity provider and the network.
    async fn placement(&self, spec: &LaunchSpec) -> Result<Placement> {
        let offer = self
            .offers
            .iter()
            .find(|o| o.compute_type == spec.compute.compute_type)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the ecs driver offers no {} compute",
                    spec.compute.compute_type.as_str()
                ))
            })?;
        offer.validate(&spec.compute).map_err(Error::Invalid)?;
        if spec.parallel == 0 || spec.context == 0 {
            return Err(Error::Invalid(
                "parallel and context must be at least 1".into(),
            ));
        }
        let capacity_provider = match spec.compute.compute_type {
            ComputeType::Gpu => spec
                .compute
                .instance_type
                .as_ref()
                .and_then(|t| self.cfg.gpu_capacity_providers.get(t))
                .or(self.cfg.gpu_capacity_provider.as_ref())
                .cloned()
                // `offers` lists a GPU type only with a provider; this is the same check.
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "GPU instance type {:?} has no capacity provider",
                        spec.compute.instance_type
                    ))
                })?,
            _ if spec.compute.spot => "FARGATE_SPOT".into(),
            _ => "FARGATE".into(),
        };
        let def = taskdef::build(&self.cfg, spec)?;
        let task_definition = self.task_definition(&def).await?;
        let network = AwsVpcConfiguration::builder()
            .set_subnets(Some(self.cfg.subnets.clone()))
            .set_security_groups(Some(self.cfg.security_groups.clone()))
            // ECS refuses public IPs for tasks on EC2 instances; only Fargate gets one.
            .assign_public_ip(
                if self.cfg.assign_public_ip && spec.compute.compute_type == ComputeType::Fargate {
                    AssignPublicIp::Enabled
                } else {
                    AssignPublicIp::Disabled
                },
            )
            .build()
            .map_err(|e| Error::Invalid(format!("network configuration: {e}")))?;
        Ok(Placement {
            strategy: CapacityProviderStrategyItem::builder()
                .capacity_provider(&capacity_provider)
                .weight(1)
                .build()
                .map_err(|e| Error::Invalid(format!("capacity provider: {e}")))?,
            capacity_provider,
            task_definition,
            network: NetworkConfiguration::builder()
                .awsvpc_configuration(network)
                .build(),
        })
    }

    /// Task mode: one standalone task for the replica.
    async fn run_task(&self, spec: &LaunchSpec, placement: Placement) -> Result<ReplicaRef> {
        let out = self
            .ecs
            .run_task()
            .cluster(&self.cfg.cluster)
            .task_definition(&placement.task_definition)
            .count(1)
            .capacity_provider_strategy(placement.strategy)
            .network_configuration(placement.network)
            // A UUID is 36 characters, ECS's limit for startedBy; ListTasks can filter on it.
            .started_by(spec.replica_id.to_string())
            .client_token(client_token(spec.replica_id, spec.launch))
            .set_tags(Some(replica_tags(spec.instance_id, spec.replica_id)))
            .enable_ecs_managed_tags(true)
            .send()
            .await
            .map_err(provider("RunTask"))?;
        let capacity_provider = placement.capacity_provider;
        let Some(arn) = out.tasks().first().and_then(|t| t.task_arn()) else {
            let why: Vec<String> = out
                .failures()
                .iter()
                .map(|f| {
                    format!(
                        "{}{}",
                        f.reason().unwrap_or("unknown"),
                        f.detail().map(|d| format!(": {d}")).unwrap_or_default()
                    )
                })
                .collect();
            return Err(Error::Provider(format!(
                "RunTask placed no task on {capacity_provider}: {}",
                if why.is_empty() {
                    "no reason given".into()
                } else {
                    why.join("; ")
                }
            )));
        };
        tracing::info!(
            replica = %spec.replica_id,
            task = arn,
            %capacity_provider,
            "started ECS task"
        );
        self.expect(arn);
        Ok(ReplicaRef {
            instance_id: spec.instance_id,
            replica_id: spec.replica_id,
            driver_ref: arn.to_string(),
        })
    }

    /// A task was just started: until DescribeTasks lists it, it is starting.
    pub(crate) fn expect(&self, arn: &str) {
        lock(&self.unlisted).insert(arn.to_string(), Instant::now());
    }

    /// StopTask; a task ECS no longer knows counts as stopped.
    async fn stop_task(&self, replica: &ReplicaRef) -> Result<()> {
        lock(&self.unlisted).remove(&replica.driver_ref);
        let result = self
            .ecs
            .stop_task()
            .cluster(&self.cfg.cluster)
            .task(&replica.driver_ref)
            .reason(format!(
                "stopped by Corral (replica {})",
                replica.replica_id
            ))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // A task ECS has forgotten (stopped long ago) is as stopped as it gets.
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_invalid_parameter_exception()
                        && s.message().is_some_and(|m| m.contains("not found"))
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(provider("StopTask")(e)),
        }
    }

    async fn describe(&self, arns: Vec<String>) -> Result<Vec<Task>> {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(&self.cfg.cluster)
            .set_tasks(Some(arns))
            .include(TaskField::Tags)
            .send()
            .await
            .map_err(provider("DescribeTasks"))?;
        Ok(out.tasks().to_vec())
    }
}

/// The AWS SDK configuration the driver uses: the region, the endpoint override if any
/// (else `AWS_ENDPOINT_URL`), credentials from the usual chain, and HTTPS through rustls
/// on ring, which the workspace already builds (see Cargo.toml).
pub async fn sdk_config(region: &str, endpoint_url: Option<&str>) -> aws_config::SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http);
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// ECS capacity provider names: 1 to 255 letters, digits, `-` and `_`.
fn check_capacity_provider(name: &str, what: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "ecs driver: {what}: {name:?} is not a capacity provider name \
             (1 to 255 letters, digits, '-' and '_')"
        )))
    }
}

fn offers(cfg: &EcsConfig) -> Result<Vec<ComputeOffer>> {
    if let Some(p) = &cfg.gpu_capacity_provider {
        check_capacity_provider(p, "gpu_capacity_provider")?;
    }
    for (instance_type, p) in &cfg.gpu_capacity_providers {
        check_capacity_provider(p, &format!("the capacity provider of {instance_type}"))?;
    }
    let mut offers = vec![ComputeOffer {
        driver: "ecs".into(),
        compute_type: ComputeType::Fargate,
        sizes: fargate_sizes(),
        gpu_instance_types: vec![],
        spot: true,
    }];
    if cfg.gpu_capacity_provider.is_some() || !cfg.gpu_capacity_providers.is_empty() {
        let known = known_gpu_instance_types();
        let mut names: Vec<&String> = cfg.gpu_instance_types.iter().collect();
        names.extend(
            cfg.gpu_capacity_providers
                .keys()
                .filter(|t| !cfg.gpu_instance_types.contains(t)),
        );
        let types = names
            .into_iter()
            .map(|name| {
                if cfg.gpu_capacity_provider.is_none()
                    && !cfg.gpu_capacity_providers.contains_key(name)
                {
                    return Err(Error::Invalid(format!(
                        "ecs driver: GPU instance type {name} has no capacity provider"
                    )));
                }
                known
                    .iter()
                    .find(|t| t.name == *name)
                    .cloned()
                    .ok_or_else(|| {
                        let names: Vec<&str> = known.iter().map(|t| t.name.as_str()).collect();
                        Error::Invalid(format!(
                            "ecs driver: unknown GPU instance type {name:?}; known: {}",
                            names.join(", ")
                        ))
                    })
            })
            .collect::<Result<Vec<GpuInstanceType>>>()?;
        if types.is_empty() {
            return Err(Error::Invalid(
                "ecs driver: a GPU capacity provider needs gpu_instance_types".into(),
            ));
        }
        offers.push(ComputeOffer {
            driver: "ecs".into(),
            compute_type: ComputeType::Gpu,
            sizes: vec![],
            gpu_instance_types: types,
            // Spot for GPU would be the capacity provider's own (ASG) business.
            spot: false,
        });
    }
    Ok(offers)
}

/// The service's code and message for a refusal; the whole error chain otherwise (the
/// SDK's Display of a service error carries the raw response, too long for a log line).
fn provider<E, R>(call: &'static str) -> impl Fn(SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| {
        Error::Provider(match e.as_service_error() {
            Some(s) => format!(
                "{call}: {}: {}",
                s.code().unwrap_or("error"),
                s.message().unwrap_or("no message")
            ),
            None => format!("{call}: {}", DisplayErrorContext(&e)),
        })
    }
}

/// Where a replica's task goes, worked out before anything is started.
struct Placement {
    task_definition: String,
    capacity_provider: String,
    strategy: CapacityProviderStrategyItem,
    network: NetworkConfiguration,
}

/// The tags that make a task a replica's (RunTask's, or the claim of a service task).
fn replica_tags(instance_id: Uuid, replica_id: Uuid) -> Vec<Tag> {
    [(TAG_INSTANCE, instance_id), (TAG_REPLICA, replica_id)]
        .map(|(k, v)| Tag::builder().key(k).value(v.to_string()).build())
        .to_vec()
}

/// RunTask's idempotency token (at most 64 characters): the same for a retried call of
/// one launch, another for the replica's next launch.
fn client_token(replica_id: Uuid, launch: u32) -> String {
    format!("{}-{launch}", replica_id.simple())
}

/// What a task DescribeTasks does not list is, `since` it was expected: still starting
/// within the grace (ECS lists new tasks eventually), lost after it.
fn missing(since: Instant, now: Instant, grace: Duration) -> Observed {
    if now.saturating_duration_since(since) < grace {
        Observed::Starting
    } else {
        Observed::Lost
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent between statements; a panic elsewhere leaves them usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

fn tag<'a>(task: &'a Task, key: &str) -> Option<&'a str> {
    task.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// `http://<private IPv4>:11434` from the task's ENI attachment, once it has one.
fn endpoint(task: &Task) -> Option<String> {
    task.attachments()
        .iter()
        .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value())
        .map(|ip| format!("http://{ip}:{PORT}"))
}

fn observed(task: &Task) -> Observed {
    match task.last_status().unwrap_or("PROVISIONING") {
        "PROVISIONING" | "PENDING" | "ACTIVATING" => Observed::Starting,
        // No address yet would be an ECS oddity; look again rather than guess.
        "RUNNING" => endpoint(task).map_or(Observed::Starting, |endpoint| Observed::Running {
            endpoint,
        }),
        // DEACTIVATING, STOPPING, DEPROVISIONING, STOPPED: it is not coming back.
        _ => {
            let mut reason = task
                .stopped_reason()
                .filter(|r| !r.is_empty())
                .unwrap_or("task stopped")
                .to_string();
            if let Some(code) = task.containers().iter().find_map(|c| c.exit_code()) {
                reason.push_str(&format!(" (container exit code {code})"));
            }
            Observed::Exited { reason }
        }
    }
}

#[async_trait]
impl ComputeDriver for EcsDriver {
    fn name(&self) -> &'static str {
        "ecs"
    }

    fn offers(&self) -> Vec<ComputeOffer> {
        self.offers.clone()
    }

    /// The task pulls the model itself (see `taskdef.rs`).
    fn reads_model_path(&self) -> bool {
        false
    }

    fn runtime(&self) -> Runtime {
        self.cfg.runtime()
    }

    fn check_model(&self, model_id: &str, source: &ModelSource, runtime: Runtime) -> Result<()> {
        taskdef::check_source(&self.cfg, runtime, model_id, source)
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<ReplicaRef> {
        let placement = self.placement(spec).await?;
        match self.cfg.launch {
            LaunchMode::Task => self.run_task(spec, placement).await,
            LaunchMode::Service => self.launch_in_service(spec, placement).await,
        }
    }

    async fn observe(&self, replica: &ReplicaRef) -> Result<Observed> {
        let arn = &replica.driver_ref;
        let tasks = self.describe(vec![arn.clone()]).await?;
        let mut unlisted = lock(&self.unlisted);
        Ok(match tasks.iter().find(|t| t.task_arn() == Some(arn)) {
            Some(task) => {
                unlisted.remove(arn);
                observed(task)
            }
            None => {
                let since = *unlisted.entry(arn.clone()).or_insert_with(Instant::now);
                missing(since, Instant::now(), self.cfg.missing_grace)
            }
        })
    }

    /// ECS sends SIGTERM and, after the container's stop timeout (30 s by default), SIGKILL;
    /// `grace` cannot change that per call.
    async fn stop(&self, replica: &ReplicaRef, _grace: Duration) -> Result<()> {
        if self.stop_in_service(replica).await? {
            return Ok(());
        }
        self.stop_task(replica).await
    }

    async fn logs(
        &self,
        replica: &ReplicaRef,
        cursor: Option<&str>,
        tail: usize,
    ) -> Result<LogPage> {
        let stream = format!(
            "{}/{CONTAINER}/{}",
            replica.instance_id,
            task_id(&replica.driver_ref)
        );
        let mut req = self
            .logs
            .get_log_events()
            .log_group_name(&self.cfg.log_group)
            .log_stream_name(&stream);
        req = match cursor {
            Some(token) => req.next_token(token).start_from_head(true),
            None => req
                .start_from_head(false)
                .limit(tail.clamp(1, logs::MAX_EVENTS) as i32),
        };
        let out = match req.send().await {
            Ok(out) => out,
            // The stream appears with the container's first line; until then there is
            // nothing to read, and following starts from the tail next time.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Ok(LogPage {
                    lines: vec![],
                    next: cursor.map(String::from),
                });
            }
            Err(e) => return Err(provider("GetLogEvents")(e)),
        };
        let lines = out
            .events()
            .iter()
            .map(|e| LogLine {
                at: e.timestamp().and_then(DateTime::from_timestamp_millis),
                replica_id: replica.replica_id,
                line: e.message().unwrap_or_default().trim_end().to_string(),
            })
            .collect();
        Ok(LogPage {
            lines,
            next: out
                .next_forward_token()
                .map(String::from)
                .or_else(|| cursor.map(String::from)),
        })
    }

    async fn instance_logs(
        &self,
        instance_id: Uuid,
        cursor: Option<&str>,
        tail: usize,
    ) -> Result<Option<LogPage>> {
        self.read_instance_logs(instance_id, cursor, tail)
            .await
            .map(Some)
    }

    async fn resources(&self, _replica: &ReplicaRef) -> Result<Option<ResourceUsage>> {
        // Per-task CPU and memory are only in Container Insights (CloudWatch metrics),
        // which is optional on a cluster and lags by a minute; not read yet.
        Ok(None)
    }

    async fn orphans(&self, known: &[ReplicaRef]) -> Result<Vec<ReplicaRef>> {
        let mut arns = Vec::new();
        let mut pages = self
            .ecs
            .list_tasks()
            .cluster(&self.cfg.cluster)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            arns.extend(page.map_err(provider("ListTasks"))?.task_arns().to_vec());
        }
        let mut orphans = Vec::new();
        for batch in arns.chunks(DESCRIBE_BATCH) {
            for task in self.describe(batch.to_vec()).await? {
                // Only tasks Corral started (both tags) and that still hold capacity.
                let ids = (
                    tag(&task, TAG_INSTANCE).and_then(|v| v.parse().ok()),
                    tag(&task, TAG_REPLICA).and_then(|v| v.parse().ok()),
                    task.task_arn(),
                );
                let Some(found) = (match ids {
                    (Some(instance_id), Some(replica_id), Some(arn)) => Some(ReplicaRef {
                        instance_id,
                        replica_id,
                        driver_ref: arn.to_string(),
                    }),
                    _ => None,
                }) else {
                    continue;
                };
                if !is_owned(known, &found) && task.last_status() != Some("STOPPED") {
                    orphans.push(found);
                }
            }
        }
        // Only in service mode: task mode needs no service permissions (deploy/aws grants
        // them for service mode). Services left by a switch back to task mode go with
        // their last replica's stop, or by hand.
        if self.cfg.launch == LaunchMode::Service {
            orphans.extend(self.service_orphans().await?);
        }
        Ok(orphans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::{ComputeSpec, ModelSource};
    use corral_drivers::Runtime;

    fn config() -> EcsConfig {
        EcsConfig {
            cluster: "corral".into(),
            subnets: vec!["subnet-1".into()],
            security_groups: vec!["sg-1".into()],
            assign_public_ip: false,
            runtime_image: EcsConfig::DEFAULT_RUNTIME_IMAGE.into(),
            runner_image: None,
            execution_role_arn: "arn:aws:iam::123456789012:role/x".into(),
            task_role_arn: None,
            log_group: "/corral".into(),
            region: "us-east-1".into(),
            gpu_capacity_provider: None,
            gpu_instance_types: vec![],
            gpu_capacity_providers: BTreeMap::new(),
            // Nothing listens there: a call that reached "AWS" would fail as Provider.
            endpoint_url: Some("http://127.0.0.1:9".into()),
            launch: LaunchMode::Task,
            service_start_timeout: EcsConfig::DEFAULT_SERVICE_START_TIMEOUT,
            missing_grace: EcsConfig::DEFAULT_MISSING_GRACE,
        }
    }

    #[test]
    fn tasks_run_ollama_unless_a_runner_image_is_configured() {
        let ollama_only = config();
        assert_eq!(ollama_only.runtime(), Runtime::Ollama);
        // The configured runtime accepts a registry model (what the catalog's entries are).
        let registry = ModelSource::Ollama {
            name: "llama2:7b".into(),
        };
        taskdef::check_source(&ollama_only, ollama_only.runtime(), "llama2:7b", &registry).unwrap();
        let with_runner = EcsConfig {
            runner_image: Some("example.test/corral-runner:1".into()),
            ..config()
        };
        assert_eq!(with_runner.runtime(), Runtime::CorralRunner);
        taskdef::check_source(&with_runner, with_runner.runtime(), "llama2:7b", &registry).unwrap();
    }

    #[test]
    fn a_missing_task_is_starting_within_the_grace_then_lost() {
        let grace = Duration::from_secs(60);
        let since = Instant::now();
        assert_eq!(missing(since, since, grace), Observed::Starting);
        let later = since + Duration::from_secs(59);
        assert_eq!(missing(since, later, grace), Observed::Starting);
        let later = since + grace;
        assert_eq!(missing(since, later, grace), Observed::Lost);
    }

    #[test]
    fn client_tokens_name_one_launch_within_ecs_limit() {
        let id = Uuid::now_v7();
        assert_eq!(client_token(id, 3), client_token(id, 3));
        assert_ne!(client_token(id, 3), client_token(id, 4));
        assert_ne!(client_token(id, 0), client_token(Uuid::now_v7(), 0));
        assert!(client_token(id, u32::MAX).len() <= 64);
    }

    #[tokio::test]
    async fn invalid_fargate_pair_is_refused_before_any_aws_call() {
        let driver = EcsDriver::new(config()).await.unwrap();
        let spec = LaunchSpec {
            instance_id: Uuid::now_v7(),
            replica_id: Uuid::now_v7(),
            launch: 0,
            model_id: "smollm2:135m".into(),
            source: ModelSource::Ollama {
                name: "smollm2:135m".into(),
            },
            model_path: None,
            compute: ComputeSpec {
                compute_type: ComputeType::Fargate,
                cpu: 0.25,
                memory: 4096,
                gpu_count: 0,
                instance_type: None,
                spot: false,
            },
            runtime: Runtime::Ollama,
            parallel: 1,
            context: 2048,
        };
        match driver.launch(&spec).await {
            Err(Error::Invalid(why)) => assert!(why.contains("not valid with 0.25 vCPU"), "{why}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
        let gpu = ComputeSpec {
            compute_type: ComputeType::Gpu,
            gpu_count: 1,
            instance_type: Some("g5.xlarge".into()),
            ..spec.compute.clone()
        };
        let spec = LaunchSpec {
            compute: gpu,
            ..spec
        };
        assert!(
            matches!(driver.launch(&spec).await, Err(Error::Invalid(_))),
            "no GPU offer without a capacity provider"
        );
    }

    #[tokio::test]
    async fn gpu_offer_lists_the_configured_types() {
        let mut cfg = config();
        cfg.gpu_capacity_provider = Some("gpu".into());
        cfg.gpu_instance_types = vec!["g5.xlarge".into(), "g4dn.xlarge".into()];
        let offers = EcsDriver::new(cfg.clone()).await.unwrap().offers();
        assert_eq!(offers.len(), 2);
        assert!(offers[0].spot && offers[0].compute_type == ComputeType::Fargate);
        let names: Vec<&str> = offers[1]
            .gpu_instance_types
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["g5.xlarge", "g4dn.xlarge"]);
        cfg.gpu_instance_types = vec!["p9.huge".into()];
        assert!(matches!(
            EcsDriver::new(cfg.clone()).await.map(|_| ()),
            Err(Error::Invalid(_))
        ));

        // One provider per type: those types are offered; a listed type without one is not.
        cfg.gpu_capacity_provider = None;
        cfg.gpu_instance_types = vec![];
        cfg.gpu_capacity_providers = BTreeMap::from([
            ("g5.xlarge".to_string(), "cp-g5".to_string()),
            ("g4dn.xlarge".to_string(), "cp-g4dn".to_string()),
        ]);
        let offers = EcsDriver::new(cfg.clone()).await.unwrap().offers();
        let names: Vec<&str> = offers[1]
            .gpu_instance_types
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["g4dn.xlarge", "g5.xlarge"]);
        cfg.gpu_instance_types = vec!["g5.2xlarge".into()];
        match EcsDriver::new(cfg.clone()).await.map(|_| ()) {
            Err(Error::Invalid(why)) => assert!(
                why.contains("GPU instance type g5.2xlarge has no capacity provider"),
                "{why}"
            ),
            other => panic!("expected Invalid, got {other:?}"),
        }
        cfg.gpu_instance_types = vec![];
        cfg.gpu_capacity_providers
            .insert("g5.xlarge".into(), "cp g5".into());
        match EcsDriver::new(cfg).await.map(|_| ()) {
            Err(Error::Invalid(why)) => assert!(why.contains("of g5.xlarge"), "{why}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
}
