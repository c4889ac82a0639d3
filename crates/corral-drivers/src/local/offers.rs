//! What the local driver offers: any whole number of this host's cores (and half a
//! core), with memory sizes up to what the host has.

use corral_core::compute::CpuMemoryPair;
use corral_core::{ComputeOffer, ComputeType};

/// Memory sizes in MiB up to `total_mib`: 512 MiB steps to 4 GiB, 1 GiB steps to
/// 16 GiB, 4 GiB steps to 64 GiB, then 16 GiB steps. Fine steps where models are
/// small, and a list that stays short on big hosts (90 entries on 1 TiB).
pub(crate) fn memory_sizes(total_mib: u64) -> Vec<u32> {
    const GIB: u32 = 1024;
    let steps = [
        (4 * GIB, 512),
        (16 * GIB, GIB),
        (64 * GIB, 4 * GIB),
        (u32::MAX, 16 * GIB),
    ];
    let total = u32::try_from(total_mib).unwrap_or(u32::MAX);
    let mut sizes = Vec::new();
    let mut size = 512;
    while size <= total {
        sizes.push(size);
        let step = steps
            .iter()
            .find(|(upto, _)| size < *upto)
            .map_or(16 * GIB, |(_, step)| *step);
        size = match size.checked_add(step) {
            Some(s) => s,
            None => break,
        };
    }
    sizes
}

/// vCPU choices: 0.5 and 1..=cores. They set the replica's llama.cpp thread count
/// (at least one thread), not a hard CPU quota.
pub(crate) fn cpu_choices(cores: usize) -> Vec<f64> {
    std::iter::once(0.5)
        .chain((1..=cores.max(1)).map(|c| c as f64))
        .collect()
}

pub(crate) fn local_offer(cores: usize, total_mib: u64) -> ComputeOffer {
    let memory = memory_sizes(total_mib);
    ComputeOffer {
        driver: "local".into(),
        compute_type: ComputeType::Local,
        sizes: cpu_choices(cores)
            .into_iter()
            .map(|cpu| CpuMemoryPair {
                cpu,
                memory: memory.clone(),
            })
            .collect(),
        gpu_instance_types: Vec::new(),
        spot: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::ComputeSpec;

    fn spec(cpu: f64, memory: u32) -> ComputeSpec {
        ComputeSpec {
            compute_type: ComputeType::Local,
            cpu,
            memory,
            gpu_count: 0,
            instance_type: None,
            spot: false,
        }
    }

    #[test]
    fn memory_steps() {
        assert_eq!(memory_sizes(100), Vec::<u32>::new());
        assert_eq!(memory_sizes(1500), [512, 1024]);
        let m = memory_sizes(24105);
        assert_eq!(
            &m[..9],
            [512, 1024, 1536, 2048, 2560, 3072, 3584, 4096, 5120]
        );
        assert_eq!(*m.last().unwrap(), 20 * 1024, "16 GiB, then 4 GiB steps");
        assert_eq!(m.len(), 8 + 12 + 1);
        let big = memory_sizes(1024 * 1024);
        assert_eq!(*big.last().unwrap(), 1024 * 1024);
        assert_eq!(big.len(), 8 + 12 + 12 + 60);
        assert!(big.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn offer_validates_local_sizes() {
        let offer = local_offer(2, 24105);
        assert_eq!(offer.compute_type, ComputeType::Local);
        assert!(!offer.spot);
        assert!(offer.gpu_instance_types.is_empty());
        let cpus: Vec<f64> = offer.sizes.iter().map(|p| p.cpu).collect();
        assert_eq!(cpus, [0.5, 1.0, 2.0]);
        assert!(offer.validate(&spec(0.5, 512)).is_ok());
        assert!(offer.validate(&spec(2.0, 20 * 1024)).is_ok());
        assert!(
            offer
                .validate(&spec(3.0, 1024))
                .unwrap_err()
                .contains("3 vCPU is not offered")
        );
        assert!(
            offer
                .validate(&spec(1.0, 700))
                .unwrap_err()
                .contains("not valid")
        );
        assert!(
            offer.validate(&spec(1.0, 64 * 1024)).is_err(),
            "more than the host has"
        );
        let mut gpu = spec(1.0, 1024);
        gpu.gpu_count = 1;
        assert!(offer.validate(&gpu).is_err());
        let mut spot = spec(1.0, 1024);
        spot.spot = true;
        assert!(offer.validate(&spot).is_err());
    }
}
