//! Compute sizes: what a driver can offer and how a requested size is validated
//! before anything is launched. The Fargate table is AWS's list of valid task sizes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What kind of compute an instance runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComputeType {
    /// A child process on the Corral host.
    Local,
    /// ECS on Fargate (CPU only).
    Fargate,
    /// ECS on EC2 GPU instances through a capacity provider.
    Gpu,
}

impl ComputeType {
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeType::Local => "local",
            ComputeType::Fargate => "fargate",
            ComputeType::Gpu => "gpu",
        }
    }
}

impl std::str::FromStr for ComputeType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(ComputeType::Local),
            "fargate" => Ok(ComputeType::Fargate),
            "gpu" => Ok(ComputeType::Gpu),
            other => Err(format!(
                "unknown compute type {other:?}: expected local, fargate or gpu"
            )),
        }
    }
}

/// The size a user asked for, after defaults are applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComputeSpec {
    pub compute_type: ComputeType,
    /// vCPUs (0.25 steps on Fargate).
    pub cpu: f64,
    /// Memory in MiB.
    pub memory: u32,
    #[serde(default)]
    pub gpu_count: u32,
    /// EC2 instance type for GPU compute, e.g. `g5.xlarge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Fargate Spot / EC2 Spot: cheaper, may be interrupted.
    #[serde(default)]
    pub spot: bool,
}

/// One valid vCPU setting and the memory sizes allowed with it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CpuMemoryPair {
    pub cpu: f64,
    /// Allowed memory sizes in MiB, ascending.
    pub memory: Vec<u32>,
}

/// A GPU instance type the administrator enabled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuInstanceType {
    pub name: String,
    pub gpus: u32,
    pub gpu_model: String,
    pub cpu: f64,
    /// MiB.
    pub memory: u32,
    /// On-demand USD per hour (us-east-1).
    pub hourly_usd: f64,
}

/// What one driver offers for one compute type (`GET /api/compute`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ComputeOffer {
    pub driver: String,
    pub compute_type: ComputeType,
    /// Valid vCPU/memory pairs (CPU compute).
    pub sizes: Vec<CpuMemoryPair>,
    /// Valid instance types (GPU compute).
    pub gpu_instance_types: Vec<GpuInstanceType>,
    pub spot: bool,
}

impl ComputeOffer {
    /// Checks a requested size against this offer; the error says what is valid.
    pub fn validate(&self, spec: &ComputeSpec) -> Result<(), String> {
        if spec.compute_type != self.compute_type {
            return Err(format!(
                "driver {} offers {} compute, not {}",
                self.driver,
                self.compute_type.as_str(),
                spec.compute_type.as_str()
            ));
        }
        if spec.spot && !self.spot {
            return Err(format!(
                "spot capacity is not available for {} compute",
                self.compute_type.as_str()
            ));
        }
        if self.compute_type == ComputeType::Gpu {
            let name = spec
                .instance_type
                .as_deref()
                .ok_or("gpu compute needs an instance_type")?;
            let it = self
                .gpu_instance_types
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = self
                        .gpu_instance_types
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect();
                    format!(
                        "instance type {name:?} is not offered; choose one of {}",
                        names.join(", ")
                    )
                })?;
            if spec.gpu_count == 0 || spec.gpu_count > it.gpus {
                return Err(format!(
                    "{name} has {} GPU(s); gpu_count must be 1..={}",
                    it.gpus, it.gpus
                ));
            }
            return Ok(());
        }
        if spec.gpu_count > 0 {
            return Err(format!(
                "{} compute has no GPUs; use compute_type gpu",
                self.compute_type.as_str()
            ));
        }
        let pair = self
            .sizes
            .iter()
            .find(|p| (p.cpu - spec.cpu).abs() < 1e-9)
            .ok_or_else(|| {
                let cpus: Vec<String> = self.sizes.iter().map(|p| fmt_cpu(p.cpu)).collect();
                format!(
                    "{} vCPU is not offered; choose one of {}",
                    fmt_cpu(spec.cpu),
                    cpus.join(", ")
                )
            })?;
        if !pair.memory.contains(&spec.memory) {
            let (lo, hi) = (
                pair.memory.first().copied().unwrap_or(0),
                pair.memory.last().copied().unwrap_or(0),
            );
            return Err(format!(
                "{} MiB is not valid with {} vCPU; choose {lo}..={hi} MiB in the listed steps",
                spec.memory,
                fmt_cpu(spec.cpu)
            ));
        }
        Ok(())
    }
}

fn fmt_cpu(cpu: f64) -> String {
    format!("{cpu}")
}

/// AWS Fargate's valid task sizes (Linux): vCPU → memory in MiB.
pub fn fargate_sizes() -> Vec<CpuMemoryPair> {
    let gib = |from: u32, to: u32, step: u32| {
        (from..=to)
            .step_by(step as usize)
            .map(|g| g * 1024)
            .collect::<Vec<_>>()
    };
    vec![
        CpuMemoryPair {
            cpu: 0.25,
            memory: vec![512, 1024, 2048],
        },
        CpuMemoryPair {
            cpu: 0.5,
            memory: gib(1, 4, 1),
        },
        CpuMemoryPair {
            cpu: 1.0,
            memory: gib(2, 8, 1),
        },
        CpuMemoryPair {
            cpu: 2.0,
            memory: gib(4, 16, 1),
        },
        CpuMemoryPair {
            cpu: 4.0,
            memory: gib(8, 30, 1),
        },
        CpuMemoryPair {
            cpu: 8.0,
            memory: gib(16, 60, 4),
        },
        CpuMemoryPair {
            cpu: 16.0,
            memory: gib(32, 120, 8),
        },
    ]
}

/// ECS `cpu` units for a vCPU count (1 vCPU = 1024 units).
pub fn cpu_units(cpu: f64) -> u32 {
    (cpu * 1024.0).round() as u32
}

/// Well-known GPU instance types with on-demand prices (us-east-1, USD/hour), from
/// which an administrator picks the ones the cluster's capacity provider can launch.
pub fn known_gpu_instance_types() -> Vec<GpuInstanceType> {
    let t = |name: &str, gpus, model: &str, cpu, mem_gib: u32, usd| GpuInstanceType {
        name: name.into(),
        gpus,
        gpu_model: model.into(),
        cpu,
        memory: mem_gib * 1024,
        hourly_usd: usd,
    };
    vec![
        t("g4dn.xlarge", 1, "NVIDIA T4", 4.0, 16, 0.526),
        t("g4dn.2xlarge", 1, "NVIDIA T4", 8.0, 32, 0.752),
        t("g5.xlarge", 1, "NVIDIA A10G", 4.0, 16, 1.006),
        t("g5.2xlarge", 1, "NVIDIA A10G", 8.0, 32, 1.212),
        t("g5.12xlarge", 4, "NVIDIA A10G", 48.0, 192, 5.672),
        t("g6.xlarge", 1, "NVIDIA L4", 4.0, 16, 0.805),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fargate() -> ComputeOffer {
        ComputeOffer {
            driver: "ecs".into(),
            compute_type: ComputeType::Fargate,
            sizes: fargate_sizes(),
            gpu_instance_types: vec![],
            spot: true,
        }
    }

    fn spec(cpu: f64, memory: u32) -> ComputeSpec {
        ComputeSpec {
            compute_type: ComputeType::Fargate,
            cpu,
            memory,
            gpu_count: 0,
            instance_type: None,
            spot: false,
        }
    }

    #[test]
    fn fargate_pairs() {
        let offer = fargate();
        assert!(offer.validate(&spec(0.25, 512)).is_ok());
        assert!(offer.validate(&spec(1.0, 8192)).is_ok());
        assert!(offer.validate(&spec(8.0, 20 * 1024)).is_ok());
        assert!(
            offer.validate(&spec(8.0, 18 * 1024)).is_err(),
            "8 vCPU steps by 4 GiB"
        );
        assert!(
            offer
                .validate(&spec(0.25, 4096))
                .unwrap_err()
                .contains("not valid with 0.25 vCPU")
        );
        assert!(
            offer
                .validate(&spec(3.0, 8192))
                .unwrap_err()
                .contains("3 vCPU is not offered")
        );
        assert_eq!(cpu_units(0.25), 256);
        assert_eq!(cpu_units(16.0), 16384);
    }

    #[test]
    fn gpu_types() {
        let offer = ComputeOffer {
            driver: "ecs".into(),
            compute_type: ComputeType::Gpu,
            sizes: vec![],
            gpu_instance_types: known_gpu_instance_types(),
            spot: false,
        };
        let mut s = ComputeSpec {
            compute_type: ComputeType::Gpu,
            cpu: 4.0,
            memory: 16384,
            gpu_count: 1,
            instance_type: Some("g5.xlarge".into()),
            spot: false,
        };
        assert!(offer.validate(&s).is_ok());
        s.gpu_count = 2;
        assert!(offer.validate(&s).is_err());
        s.instance_type = Some("p5.48xlarge".into());
        assert!(offer.validate(&s).unwrap_err().contains("not offered"));
    }
}
