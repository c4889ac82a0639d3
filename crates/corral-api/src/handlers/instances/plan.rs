//! Turning a start request into a size that can be launched: the defaults (local
//! compute, the smallest size that fits the model) and every check, all before anything
//! is created. Pure functions over the catalog entry and the drivers' offers, so each
//! rule is tested without a server.

use corral_core::{CatalogModel, ComputeOffer, ComputeSpec, ComputeType, InstanceSettings};

/// Replicas per instance at most: enough to spread load over a few machines, few enough
/// that one request cannot take a whole cluster.
pub const MAX_REPLICAS: u32 = 8;
/// The longest idle timeout: a week. Longer is what 0 (never) is for.
pub const MAX_IDLE_SECONDS: u32 = 7 * 24 * 3600;

/// The size fields of a start request, as sent.
#[derive(Debug, Default, Clone)]
pub struct SizeRequest {
    pub compute_type: Option<ComputeType>,
    pub cpu: Option<f64>,
    pub memory: Option<u32>,
    pub gpu_count: Option<u32>,
    pub instance_type: Option<String>,
    pub spot: bool,
}

/// A size that passed every check, and the driver that offers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub driver: String,
    pub spec: ComputeSpec,
}

/// Why a request was refused: a machine-readable code and a sentence saying what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

fn supports(model: &CatalogModel, kind: ComputeType) -> bool {
    match kind {
        ComputeType::Gpu => model.gpu_supported,
        ComputeType::Local | ComputeType::Fargate => model.cpu_supported,
    }
}

fn kinds(offers: &[ComputeOffer]) -> String {
    let mut names: Vec<&str> = offers.iter().map(|o| o.compute_type.as_str()).collect();
    names.dedup();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// Picks the driver and size for `model`. The request's fields win; what it leaves out
/// is the smallest size of the chosen compute kind that fits the model.
pub fn plan(
    model: &CatalogModel,
    req: &SizeRequest,
    offers: &[ComputeOffer],
) -> Result<Plan, Refusal> {
    let kind = match req.compute_type {
        Some(kind) => kind,
        // Instance types and GPUs only exist on GPU compute, so they name it.
        None if req.instance_type.is_some() || req.gpu_count.is_some_and(|n| n > 0) => {
            ComputeType::Gpu
        }
        None => default_kind(model, offers)?,
    };
    if !supports(model, kind) {
        return Err(refuse(
            "unsupported_compute",
            format!(
                "{} does not run on {} compute; choose {}",
                model.id,
                kind.as_str(),
                if model.cpu_supported {
                    "local or fargate"
                } else {
                    "gpu"
                }
            ),
        ));
    }
    if kind != ComputeType::Gpu && req.instance_type.is_some() {
        return Err(refuse(
            "invalid_size",
            format!(
                "instance_type applies to gpu compute only; for {} compute choose cpu and memory",
                kind.as_str()
            ),
        ));
    }
    let candidates: Vec<&ComputeOffer> = offers.iter().filter(|o| o.compute_type == kind).collect();
    if candidates.is_empty() {
        return Err(refuse(
            "compute_unavailable",
            format!(
                "this server offers no {} compute (it offers {}); GET /api/compute lists the sizes",
                kind.as_str(),
                kinds(offers)
            ),
        ));
    }
    // Usually one offer per kind; with several, the first that accepts the size wins
    // and the first refusal is the one reported.
    let mut refusal = None;
    for offer in candidates {
        let planned = if kind == ComputeType::Gpu {
            plan_gpu(model, req, offer)
        } else {
            plan_cpu(model, req, kind, offer)
        };
        match planned {
            Ok(spec) => {
                return Ok(Plan {
                    driver: offer.driver.clone(),
                    spec,
                });
            }
            Err(e) => {
                refusal.get_or_insert(e);
            }
        }
    }
    Err(refusal.expect("at least one candidate offer"))
}

/// Local when offered (Corral on one machine), else the first offered kind the
/// model runs on.
fn default_kind(model: &CatalogModel, offers: &[ComputeOffer]) -> Result<ComputeType, Refusal> {
    offers
        .iter()
        .map(|o| o.compute_type)
        .filter(|k| supports(model, *k))
        .min_by_key(|k| *k != ComputeType::Local)
        .ok_or_else(|| {
            refuse(
                "compute_unavailable",
                format!(
                    "none of the compute this server offers ({}) runs {}",
                    kinds(offers),
                    model.id
                ),
            )
        })
}

fn plan_cpu(
    model: &CatalogModel,
    req: &SizeRequest,
    kind: ComputeType,
    offer: &ComputeOffer,
) -> Result<ComputeSpec, Refusal> {
    let need = model.memory_required;
    let mut pairs = offer.sizes.clone();
    pairs.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
    let fits = |memory: &[u32]| memory.iter().copied().find(|m| *m >= need);
    let (cpu, memory) = match (req.cpu, req.memory) {
        (Some(cpu), Some(memory)) => (cpu, memory),
        (Some(cpu), None) => match pairs.iter().find(|p| (p.cpu - cpu).abs() < 1e-9) {
            // An unknown vCPU count: `validate` below names the valid ones.
            None => (cpu, need),
            Some(pair) => match fits(&pair.memory) {
                Some(memory) => (cpu, memory),
                None => {
                    return Err(refuse(
                        "insufficient_memory",
                        format!(
                            "{} needs {need} MiB, more than {cpu} vCPU allows (at most {} MiB); {}",
                            model.id,
                            pair.memory.last().copied().unwrap_or(0),
                            suggestion(model, offer, None)
                        ),
                    ));
                }
            },
        },
        (None, Some(memory)) => {
            let cpu = pairs
                .iter()
                .find(|p| p.memory.contains(&memory))
                .or(pairs.first())
                .map_or(1.0, |p| p.cpu);
            (cpu, memory)
        }
        (None, None) => pairs
            .iter()
            .find_map(|p| fits(&p.memory).map(|m| (p.cpu, m)))
            .ok_or_else(|| too_big(model, offer))?,
    };
    let spec = ComputeSpec {
        compute_type: kind,
        cpu,
        memory,
        gpu_count: req.gpu_count.unwrap_or(0),
        instance_type: None,
        spot: req.spot,
    };
    offer.validate(&spec).map_err(|m| {
        refuse(
            "invalid_size",
            format!("{m}; GET /api/compute lists the sizes"),
        )
    })?;
    if memory < need {
        return Err(refuse(
            "insufficient_memory",
            format!(
                "{} needs {need} MiB; choose at least {need} MiB ({})",
                model.id,
                suggestion(model, offer, Some(cpu))
            ),
        ));
    }
    Ok(spec)
}

fn plan_gpu(
    model: &CatalogModel,
    req: &SizeRequest,
    offer: &ComputeOffer,
) -> Result<ComputeSpec, Refusal> {
    let need = model.memory_required;
    let chosen = match &req.instance_type {
        Some(name) => offer.gpu_instance_types.iter().find(|t| &t.name == name),
        None => Some(
            offer
                .gpu_instance_types
                .iter()
                .filter(|t| t.memory >= need)
                .min_by(|a, b| a.hourly_usd.total_cmp(&b.hourly_usd))
                .ok_or_else(|| too_big(model, offer))?,
        ),
    };
    let spec = ComputeSpec {
        compute_type: ComputeType::Gpu,
        cpu: req.cpu.or(chosen.map(|t| t.cpu)).unwrap_or(0.0),
        memory: req.memory.or(chosen.map(|t| t.memory)).unwrap_or(0),
        gpu_count: req.gpu_count.unwrap_or(1),
        instance_type: req.instance_type.clone().or(chosen.map(|t| t.name.clone())),
        spot: req.spot,
    };
    // An unknown instance type is refused here, with the list of offered ones.
    offer
        .validate(&spec)
        .map_err(|m| refuse("invalid_size", format!("{m}; GET /api/compute lists them")))?;
    let it = chosen.expect("validate accepted the instance type");
    if spec.cpu <= 0.0 || spec.cpu > it.cpu || spec.memory > it.memory {
        return Err(refuse(
            "invalid_size",
            format!(
                "{} has {} vCPU and {} MiB; ask for at most that (or leave cpu and memory out)",
                it.name, it.cpu, it.memory
            ),
        ));
    }
    if spec.memory < need {
        return Err(refuse(
            "insufficient_memory",
            format!(
                "{} needs {need} MiB; choose at least {need} MiB ({})",
                model.id,
                suggestion(model, offer, None)
            ),
        ));
    }
    Ok(spec)
}

/// No size of this offer is big enough.
fn too_big(model: &CatalogModel, offer: &ComputeOffer) -> Refusal {
    let largest = offer
        .sizes
        .iter()
        .flat_map(|p| p.memory.iter().copied())
        .chain(offer.gpu_instance_types.iter().map(|t| t.memory))
        .max()
        .unwrap_or(0);
    refuse(
        "insufficient_memory",
        format!(
            "{} needs {} MiB; the largest {} size on driver {} has {largest} MiB; choose a \
             smaller model or other compute",
            model.id,
            model.memory_required,
            offer.compute_type.as_str(),
            offer.driver
        ),
    )
}

/// A concrete size that fits, preferring the vCPU count the caller chose.
fn suggestion(model: &CatalogModel, offer: &ComputeOffer, cpu: Option<f64>) -> String {
    let need = model.memory_required;
    if offer.compute_type == ComputeType::Gpu {
        let names: Vec<&str> = offer
            .gpu_instance_types
            .iter()
            .filter(|t| t.memory >= need)
            .map(|t| t.name.as_str())
            .collect();
        return match names.is_empty() {
            true => "no instance type offered is large enough".into(),
            false => format!("e.g. instance_type {}", names.join(" or ")),
        };
    }
    let mut pairs = offer.sizes.clone();
    pairs.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
    let same_cpu = cpu.and_then(|c| pairs.iter().find(|p| (p.cpu - c).abs() < 1e-9));
    same_cpu
        .into_iter()
        .chain(pairs.iter())
        .find_map(|p| {
            let m = p.memory.iter().find(|m| **m >= need)?;
            Some(format!("e.g. cpu {} with memory {m}", p.cpu))
        })
        .unwrap_or_else(|| "no size offered is large enough".into())
}

/// The rules for an instance's tunable settings, for start and for later changes.
pub fn check_settings(s: &InstanceSettings) -> Result<(), Refusal> {
    if s.min_replicas < 1 || s.min_replicas > s.max_replicas || s.max_replicas > MAX_REPLICAS {
        return Err(refuse(
            "invalid_replicas",
            format!(
                "replicas must satisfy 1 <= min_replicas <= max_replicas <= {MAX_REPLICAS} \
                 (got min {} and max {}); an idle instance sleeps instead of scaling to 0",
                s.min_replicas, s.max_replicas
            ),
        ));
    }
    if s.idle_timeout_seconds > MAX_IDLE_SECONDS {
        return Err(refuse(
            "invalid_idle_timeout",
            format!(
                "idle_timeout_seconds must be at most {MAX_IDLE_SECONDS} (a week), or 0 to \
                 never stop an idle instance"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::ModelSource;
    use corral_core::compute::{CpuMemoryPair, fargate_sizes, known_gpu_instance_types};

    fn model(id: &str, memory_required: u32, gpu: bool) -> CatalogModel {
        CatalogModel {
            id: id.into(),
            family: "T".into(),
            size: "7B".into(),
            cpu_supported: true,
            gpu_supported: gpu,
            memory_required,
            expected_deploy_seconds: 180,
            source: ModelSource::Ollama {
                name: format!("library/{id}"),
            },
            weights_bytes: None,
            builtin: true,
        }
    }

    /// Like the local driver's offer on a 2-core host with 6 GiB.
    fn local() -> ComputeOffer {
        let memory: Vec<u32> = (1..=12).map(|i| i * 512).collect();
        ComputeOffer {
            driver: "local".into(),
            compute_type: ComputeType::Local,
            sizes: [0.5, 1.0, 2.0]
                .into_iter()
                .map(|cpu| CpuMemoryPair {
                    cpu,
                    memory: memory.clone(),
                })
                .collect(),
            gpu_instance_types: vec![],
            spot: false,
        }
    }

    fn ecs() -> Vec<ComputeOffer> {
        vec![
            ComputeOffer {
                driver: "ecs".into(),
                compute_type: ComputeType::Fargate,
                sizes: fargate_sizes(),
                gpu_instance_types: vec![],
                spot: true,
            },
            ComputeOffer {
                driver: "ecs".into(),
                compute_type: ComputeType::Gpu,
                sizes: vec![],
                gpu_instance_types: known_gpu_instance_types(),
                spot: true,
            },
        ]
    }

    fn req() -> SizeRequest {
        SizeRequest::default()
    }

    #[test]
    fn defaults_to_the_smallest_local_size_that_fits() {
        let p = plan(&model("smollm2:135m", 512, true), &req(), &[local()]).unwrap();
        assert_eq!(p.driver, "local");
        assert_eq!(
            (p.spec.compute_type, p.spec.cpu, p.spec.memory),
            (ComputeType::Local, 0.5, 512)
        );
        let p = plan(&model("llama2:7b", 4096, true), &req(), &[local()]).unwrap();
        assert_eq!(p.spec.memory, 4096);
        // Local first even when listed after others.
        let mut offers = ecs();
        offers.push(local());
        let p = plan(&model("llama2:7b", 4096, true), &req(), &offers).unwrap();
        assert_eq!(p.driver, "local");
    }

    #[test]
    fn fills_in_what_the_request_leaves_out() {
        let m = model("llama2:7b", 4096, true);
        let r = SizeRequest {
            cpu: Some(2.0),
            ..req()
        };
        let p = plan(&m, &r, &[local()]).unwrap();
        assert_eq!((p.spec.cpu, p.spec.memory), (2.0, 4096));
        let r = SizeRequest {
            memory: Some(5120),
            ..req()
        };
        let p = plan(&m, &r, &[local()]).unwrap();
        assert_eq!((p.spec.cpu, p.spec.memory), (0.5, 5120));
        let r = SizeRequest {
            compute_type: Some(ComputeType::Fargate),
            ..req()
        };
        let p = plan(&m, &r, &ecs()).unwrap();
        assert_eq!(
            (p.driver.as_str(), p.spec.cpu, p.spec.memory),
            ("ecs", 0.5, 4096)
        );
    }

    #[test]
    fn refuses_memory_below_the_models_need_with_a_size_that_works() {
        let m = model("llama2:7b", 4096, true);
        let r = SizeRequest {
            cpu: Some(1.0),
            memory: Some(2048),
            ..req()
        };
        let e = plan(&m, &r, &[local()]).unwrap_err();
        assert_eq!(e.code, "insufficient_memory");
        assert!(
            e.message
                .starts_with("llama2:7b needs 4096 MiB; choose at least 4096 MiB"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("cpu 1 with memory 4096"),
            "{}",
            e.message
        );
        let big = model("llama2:70b", 40 * 1024, true);
        let e = plan(&big, &req(), &[local()]).unwrap_err();
        assert_eq!(e.code, "insufficient_memory");
        assert!(e.message.contains("largest local size"), "{}", e.message);
    }

    #[test]
    fn refuses_sizes_no_driver_offers() {
        let m = model("smollm2:135m", 512, true);
        let r = SizeRequest {
            cpu: Some(3.0),
            memory: Some(256),
            ..req()
        };
        let e = plan(&m, &r, &[local()]).unwrap_err();
        assert_eq!(e.code, "invalid_size");
        assert!(e.message.contains("3 vCPU is not offered"), "{}", e.message);
        let r = SizeRequest {
            compute_type: Some(ComputeType::Fargate),
            ..req()
        };
        let e = plan(&m, &r, &[local()]).unwrap_err();
        assert_eq!(e.code, "compute_unavailable");
        let r = SizeRequest {
            instance_type: Some("ml.m5.large".into()),
            ..req()
        };
        let e = plan(&m, &r, &ecs()).unwrap_err();
        assert_eq!(e.code, "invalid_size");
        assert!(e.message.contains("not offered"), "{}", e.message);
        let r = SizeRequest {
            compute_type: Some(ComputeType::Local),
            instance_type: Some("g5.xlarge".into()),
            ..req()
        };
        assert_eq!(plan(&m, &r, &[local()]).unwrap_err().code, "invalid_size");
        let r = SizeRequest {
            spot: true,
            ..req()
        };
        assert_eq!(plan(&m, &r, &[local()]).unwrap_err().code, "invalid_size");
    }

    #[test]
    fn gpu_sizes() {
        let m = model("llama2:13b", 8192, true);
        let r = SizeRequest {
            compute_type: Some(ComputeType::Gpu),
            ..req()
        };
        let p = plan(&m, &r, &ecs()).unwrap();
        let spec = p.spec;
        assert_eq!(
            spec.instance_type.as_deref(),
            Some("g4dn.xlarge"),
            "the cheapest"
        );
        assert_eq!((spec.gpu_count, spec.cpu, spec.memory), (1, 4.0, 16384));
        let r = SizeRequest {
            instance_type: Some("g5.xlarge".into()),
            memory: Some(32768),
            ..req()
        };
        assert_eq!(plan(&m, &r, &ecs()).unwrap_err().code, "invalid_size");
        let cpu_only = model("cpu:1b", 512, false);
        let r = SizeRequest {
            compute_type: Some(ComputeType::Gpu),
            ..req()
        };
        assert_eq!(
            plan(&cpu_only, &r, &ecs()).unwrap_err().code,
            "unsupported_compute"
        );
    }

    #[test]
    fn settings_bounds() {
        let ok = InstanceSettings::default();
        assert!(check_settings(&ok).is_ok());
        for (min, max) in [(0, 1), (3, 2), (1, MAX_REPLICAS + 1)] {
            let s = InstanceSettings {
                min_replicas: min,
                max_replicas: max,
                ..ok.clone()
            };
            assert_eq!(check_settings(&s).unwrap_err().code, "invalid_replicas");
        }
        let s = InstanceSettings {
            idle_timeout_seconds: MAX_IDLE_SECONDS + 1,
            ..ok
        };
        assert_eq!(check_settings(&s).unwrap_err().code, "invalid_idle_timeout");
    }
}
