//! What running an instance costs: its running time × an hourly price for its size.
//! Defaults are AWS us-east-1 on-demand list prices; local compute costs nothing.
//! Administrators can override every figure (e.g. with their negotiated rates).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

use crate::compute::{ComputeSpec, ComputeType, known_gpu_instance_types};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct PriceTable {
    /// USD per vCPU-hour on Fargate (Linux/x86).
    pub fargate_vcpu_hour: f64,
    /// USD per GB-hour of memory on Fargate.
    pub fargate_gb_hour: f64,
    pub fargate_spot_vcpu_hour: f64,
    pub fargate_spot_gb_hour: f64,
    /// Fraction of the on-demand price charged for EC2 Spot GPU capacity.
    pub ec2_spot_discount: f64,
    /// USD per hour per EC2 instance type.
    pub gpu_instance_hour: HashMap<String, f64>,
    /// USD per hour for a local replica (default 0: the machine is already paid for).
    pub local_hour: f64,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable {
            fargate_vcpu_hour: 0.04048,
            fargate_gb_hour: 0.004445,
            fargate_spot_vcpu_hour: 0.01334058,
            fargate_spot_gb_hour: 0.00146489,
            ec2_spot_discount: 0.3,
            gpu_instance_hour: known_gpu_instance_types()
                .into_iter()
                .map(|t| (t.name, t.hourly_usd))
                .collect(),
            local_hour: 0.0,
        }
    }
}

impl PriceTable {
    /// USD per hour for one replica of this size; None when the instance type is unpriced.
    pub fn hourly(&self, spec: &ComputeSpec) -> Option<f64> {
        match spec.compute_type {
            ComputeType::Local => Some(self.local_hour),
            ComputeType::Fargate => {
                let gb = f64::from(spec.memory) / 1024.0;
                Some(if spec.spot {
                    spec.cpu * self.fargate_spot_vcpu_hour + gb * self.fargate_spot_gb_hour
                } else {
                    spec.cpu * self.fargate_vcpu_hour + gb * self.fargate_gb_hour
                })
            }
            ComputeType::Gpu => {
                let price = *self.gpu_instance_hour.get(spec.instance_type.as_deref()?)?;
                Some(if spec.spot {
                    price * self.ec2_spot_discount
                } else {
                    price
                })
            }
        }
    }

    /// Cost in USD of `replica_seconds` (running seconds summed over replicas, to the
    /// microsecond: AWS bills Fargate and EC2 per second) of this size.
    pub fn cost(&self, spec: &ComputeSpec, replica_seconds: f64) -> Option<f64> {
        Some(self.hourly(spec)? * replica_seconds.max(0.0) / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        compute_type: ComputeType,
        cpu: f64,
        memory: u32,
        it: Option<&str>,
        spot: bool,
    ) -> ComputeSpec {
        ComputeSpec {
            compute_type,
            cpu,
            memory,
            gpu_count: u32::from(compute_type == ComputeType::Gpu),
            instance_type: it.map(Into::into),
            spot,
        }
    }

    #[test]
    fn fargate_hour() {
        let p = PriceTable::default();
        let h = p
            .hourly(&spec(ComputeType::Fargate, 1.0, 2048, None, false))
            .unwrap();
        assert!((h - (0.04048 + 2.0 * 0.004445)).abs() < 1e-12);
        let spot = p
            .hourly(&spec(ComputeType::Fargate, 1.0, 2048, None, true))
            .unwrap();
        assert!(spot < h);
        assert!(
            (p.cost(&spec(ComputeType::Fargate, 1.0, 2048, None, false), 1800.0)
                .unwrap()
                - h / 2.0)
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn gpu_and_local() {
        let p = PriceTable::default();
        assert_eq!(
            p.hourly(&spec(
                ComputeType::Gpu,
                4.0,
                16384,
                Some("g5.xlarge"),
                false
            )),
            Some(1.006)
        );
        assert_eq!(
            p.hourly(&spec(ComputeType::Gpu, 4.0, 16384, Some("x9.huge"), false)),
            None
        );
        assert_eq!(
            p.hourly(&spec(ComputeType::Local, 2.0, 2048, None, false)),
            Some(0.0)
        );
    }
}
