//! What a replica's task definition contains, and how the container gets its model.
//!
//! One family per model and size (`corral-<model>-<cpu units>-<MiB>` on Fargate,
//! `corral-<model>-<instance type>-<n>gpu` on GPU). The definition carries a fingerprint
//! of its contents as a Docker label, so a launch reuses the family's latest ACTIVE
//! revision when it is identical and registers a new revision otherwise.
//!
//! Nothing per replica goes into the definition (replica ids travel as task tags and
//! `startedBy`), so replicas and relaunches of one instance share a revision. The log
//! stream prefix is the instance id, as the logs are read per instance: two instances of
//! the same model and size therefore alternate revisions of one family, which is cheap.
//!
//! How the container gets its model:
//! - `ollama/ollama` (the Ollama runtime): the entry point is a shell script that runs
//!   `ollama serve` on a private port, pulls `CORRAL_OLLAMA_PULL` from the Ollama
//!   registry, creates `CORRAL_MODEL` from it with the context length, stops that server
//!   and `exec`s `ollama serve` on 0.0.0.0:11434. The public port only answers once the
//!   model is there, so the reconciler's health check (`GET /api/version`) means ready.
//! - the runner image (corral-runner): its own entry point reads `CORRAL_MODEL` (the
//!   name to serve), `CORRAL_MODEL_URL` + `CORRAL_MODEL_SHA256` or `CORRAL_MODEL_OLLAMA`
//!   (where the GGUF comes from), `CORRAL_PARALLEL`, `CORRAL_CTX` and `CORRAL_PORT`,
//!   fetches the weights and starts `corral-runner --host 0.0.0.0`.

use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, KeyValuePair, LogConfiguration, LogDriver, NetworkMode,
    PortMapping, ResourceRequirement, ResourceType, TaskDefinitionPlacementConstraint,
    TaskDefinitionPlacementConstraintType, TransportProtocol,
};
use corral_core::compute::{cpu_units, known_gpu_instance_types};
use corral_core::{ComputeType, ModelSource};
use corral_drivers::{Error, LaunchSpec, Result, Runtime};

use crate::EcsConfig;

/// The model server's port inside the task (Ollama's default, which both runtimes use).
pub const PORT: i32 = 11434;
/// The one container of a replica's task; part of its log stream name.
pub const CONTAINER: &str = "model";
/// Docker label holding the fingerprint of the definition's contents.
const FINGERPRINT_LABEL: &str = "corral.definition";

/// See the module docs: serve privately while setting up, then publicly once ready.
const OLLAMA_SCRIPT: &str = r#"set -u
private=127.0.0.1:11435
OLLAMA_HOST=$private ollama serve & setup=$!
until OLLAMA_HOST=$private ollama list >/dev/null 2>&1; do sleep 1; done
printf 'FROM %s\nPARAMETER num_ctx %s\n' "$CORRAL_OLLAMA_PULL" "$OLLAMA_CONTEXT_LENGTH" > /tmp/Modelfile
if OLLAMA_HOST=$private ollama pull "$CORRAL_OLLAMA_PULL" && OLLAMA_HOST=$private ollama create "$CORRAL_MODEL" -f /tmp/Modelfile; then
    kill "$setup"; wait "$setup"
    echo "corral: model $CORRAL_MODEL is ready"
    exec ollama serve
fi
echo "corral: setting up model $CORRAL_MODEL failed" >&2
exit 1
"#;

/// Everything RegisterTaskDefinition gets, built from a launch spec.
#[derive(Debug)]
pub struct TaskDef {
    pub family: String,
    pub compatibility: Compatibility,
    /// Task-level sizes (Fargate only; on EC2 the container's memory places it).
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub container: ContainerDefinition,
    pub placement: Option<TaskDefinitionPlacementConstraint>,
    pub fingerprint: String,
}

impl TaskDef {
    pub fn network_mode() -> NetworkMode {
        // awsvpc on GPU too: every task gets its own ENI, so the endpoint is always the
        // task's private IP on port 11434, with no host port mapping to track.
        NetworkMode::Awsvpc
    }

    /// Whether an existing definition's container is this one (same fingerprint).
    pub fn matches(&self, existing: &ContainerDefinition) -> bool {
        existing
            .docker_labels()
            .and_then(|l| l.get(FINGERPRINT_LABEL))
            .is_some_and(|f| *f == self.fingerprint)
    }
}

pub fn build(cfg: &EcsConfig, spec: &LaunchSpec) -> Result<TaskDef> {
    let (image, entry_point, env) = runtime_setup(cfg, spec)?;
    let gpu = spec.compute.compute_type == ComputeType::Gpu;
    let (family, compatibility, cpu, memory, placement) = if gpu {
        let instance_type = spec
            .compute
            .instance_type
            .as_deref()
            .ok_or_else(|| Error::Invalid("gpu compute needs an instance_type".into()))?;
        (
            format!(
                "corral-{}-{instance_type}-{}gpu",
                spec.model_id, spec.compute.gpu_count
            ),
            Compatibility::Ec2,
            None,
            None,
            Some(
                TaskDefinitionPlacementConstraint::builder()
                    .r#type(TaskDefinitionPlacementConstraintType::MemberOf)
                    .expression(format!("attribute:ecs.instance-type == {instance_type}"))
                    .build(),
            ),
        )
    } else {
        let units = cpu_units(spec.compute.cpu);
        (
            format!("corral-{}-{units}-{}", spec.model_id, spec.compute.memory),
            Compatibility::Fargate,
            Some(units.to_string()),
            Some(spec.compute.memory.to_string()),
            None,
        )
    };
    let log = LogConfiguration::builder()
        .log_driver(LogDriver::Awslogs)
        .options("awslogs-group", &cfg.log_group)
        .options("awslogs-region", &cfg.region)
        .options("awslogs-stream-prefix", spec.instance_id.to_string())
        .build()
        .map_err(|e| Error::Invalid(format!("log configuration: {e}")))?;
    let mut container_memory = spec.compute.memory;
    if gpu
        && let Some(it) = known_gpu_instance_types()
            .into_iter()
            .find(|t| Some(&t.name) == spec.compute.instance_type.as_ref())
    {
        // The ECS agent and the OS keep part of an instance's memory: a hard limit of the
        // type's nominal memory would never be placed. 15/16 of it fits the ECS-optimised
        // GPU AMIs.
        container_memory = container_memory.min(it.memory / 16 * 15);
    }
    let memory_mib = i32::try_from(container_memory)
        .map_err(|_| Error::Invalid(format!("{container_memory} MiB is too large")))?;
    let container = |label: Option<&str>| {
        let mut c = ContainerDefinition::builder()
            .name(CONTAINER)
            .image(&image)
            .essential(true)
            .port_mappings(
                PortMapping::builder()
                    .container_port(PORT)
                    .protocol(TransportProtocol::Tcp)
                    .build(),
            )
            .set_environment(Some(
                env.iter()
                    .map(|(k, v)| KeyValuePair::builder().name(*k).value(v).build())
                    .collect(),
            ))
            .set_entry_point(entry_point.clone())
            // The container gets the whole task's memory as its hard limit (on GPU, what
            // the instance can give; see above).
            .memory(memory_mib);
        if gpu {
            c = c.resource_requirements(
                ResourceRequirement::builder()
                    .r#type(ResourceType::Gpu)
                    .value(spec.compute.gpu_count.to_string())
                    .build()
                    .expect("type and value are set"),
            );
        }
        // Both are maps, whose Debug order varies: left out of the fingerprinted form,
        // whose text names the log settings instead.
        if let Some(label) = label {
            c = c
                .log_configuration(log.clone())
                .docker_labels(FINGERPRINT_LABEL, label);
        }
        c.build()
    };
    let family = family_name(&family);
    // The Debug form of the SDK's types covers every field; a new SDK version may print
    // differently, which costs one extra revision per family, nothing more.
    let fingerprint = format!(
        "{:016x}",
        fnv1a(
            format!(
                "{family}|{compatibility:?}|{cpu:?}|{memory:?}|{placement:?}|{}|{}|{}|{:?}|{:?}|{:?}",
                cfg.log_group,
                cfg.region,
                spec.instance_id,
                cfg.execution_role_arn,
                cfg.task_role_arn,
                container(None)
            )
            .as_bytes()
        )
    );
    Ok(TaskDef {
        container: container(Some(&fingerprint)),
        family,
        compatibility,
        cpu,
        memory,
        placement,
        fingerprint,
    })
}

/// Whether a task of this driver can get the model at all: the ollama image pulls from
/// the Ollama registry only; the runner image (when one is configured) fetches a URL or
/// the registry; neither can read a file on the Corral host. The API asks this before
/// it creates an instance (`ComputeDriver::check_model`), and `launch` again.
pub fn check_source(
    cfg: &EcsConfig,
    runtime: Runtime,
    model_id: &str,
    source: &ModelSource,
) -> Result<()> {
    if runtime == Runtime::CorralRunner {
        runner_image(cfg)?;
    }
    source_env(runtime, model_id, source).map(|_| ())
}

fn runner_image(cfg: &EcsConfig) -> Result<String> {
    cfg.runner_image.clone().ok_or_else(|| {
        Error::Invalid(
            "no runner image is configured for the ecs driver (ecs.runner_image); \
             use the ollama runtime"
                .into(),
        )
    })
}

/// The environment that tells the container where its weights come from.
fn source_env(
    runtime: Runtime,
    model_id: &str,
    source: &ModelSource,
) -> Result<Vec<(&'static str, String)>> {
    match (runtime, source) {
        (Runtime::Ollama, ModelSource::Ollama { name }) => {
            Ok(vec![("CORRAL_OLLAMA_PULL", name.clone())])
        }
        (Runtime::Ollama, _) => Err(Error::Invalid(format!(
            "the ollama runtime on ECS pulls from the Ollama registry; model {model_id} \
             comes from elsewhere: use the corral-runner runtime"
        ))),
        (Runtime::CorralRunner, ModelSource::Url { url, sha256 }) => Ok(vec![
            ("CORRAL_MODEL_URL", url.clone()),
            ("CORRAL_MODEL_SHA256", sha256.clone()),
        ]),
        (Runtime::CorralRunner, ModelSource::Ollama { name }) => {
            Ok(vec![("CORRAL_MODEL_OLLAMA", name.clone())])
        }
        (Runtime::CorralRunner, ModelSource::File { path }) => Err(Error::Invalid(format!(
            "model {model_id} is a file on the Corral host ({path}), which an ECS task \
             cannot read"
        ))),
    }
}

type RuntimeSetup = (String, Option<Vec<String>>, Vec<(&'static str, String)>);

/// The image, its entry point override and environment for the spec's runtime.
fn runtime_setup(cfg: &EcsConfig, spec: &LaunchSpec) -> Result<RuntimeSetup> {
    let mut env = vec![
        ("OLLAMA_HOST", format!("0.0.0.0:{PORT}")),
        ("CORRAL_MODEL", spec.model_id.clone()),
        ("CORRAL_INSTANCE_ID", spec.instance_id.to_string()),
    ];
    let image = match spec.runtime {
        Runtime::Ollama => cfg.runtime_image.clone(),
        Runtime::CorralRunner => runner_image(cfg)?,
    };
    env.extend(source_env(spec.runtime, &spec.model_id, &spec.source)?);
    match spec.runtime {
        Runtime::Ollama => {
            env.extend([
                ("OLLAMA_NUM_PARALLEL", spec.parallel.to_string()),
                ("OLLAMA_CONTEXT_LENGTH", spec.context.to_string()),
                // Corral decides when a replica sleeps; ollama must not unload on its own.
                ("OLLAMA_KEEP_ALIVE", "-1".into()),
                ("OLLAMA_MAX_LOADED_MODELS", "1".into()),
            ]);
            Ok((
                image,
                Some(vec!["/bin/sh".into(), "-c".into(), OLLAMA_SCRIPT.into()]),
                env,
            ))
        }
        Runtime::CorralRunner => {
            env.extend([
                ("CORRAL_PARALLEL", spec.parallel.to_string()),
                ("CORRAL_CTX", spec.context.to_string()),
                ("CORRAL_PORT", PORT.to_string()),
            ]);
            Ok((image, None, env))
        }
    }
}

/// ECS family names allow letters, digits, `-` and `_`, up to 255 characters.
fn family_name(raw: &str) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(255)
        .collect()
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_names_are_valid() {
        assert_eq!(
            family_name("corral-smollm2:135m-256-512"),
            "corral-smollm2-135m-256-512"
        );
        assert_eq!(family_name("corral-a/b.c"), "corral-a-b-c");
        assert_eq!(family_name(&"x".repeat(300)).len(), 255);
    }
}
