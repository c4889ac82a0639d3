//! Quotas and capacity admission: who an instance's compute is charged to
//! (`quota_subject`), what an instance holds while it exists (`Allocation::of`), and
//! the limits a change of it must stay within (`Limits`). The store applies the
//! difference of two allocations to per-subject counters in the same transaction as
//! the instance change, refusing it when a counter that grows would pass its limit;
//! these pure rules are what every backend applies.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::instance::{Desired, Instance};

/// Whom counters and limits belong to. Its `key` names the counters in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    User(Uuid),
    Team(Uuid),
    /// A machine whose memory and vCPUs the local driver commits (by name, so that
    /// several `corral serve` processes on one host share its counters).
    Host(String),
}

impl Subject {
    pub fn key(&self) -> String {
        match self {
            Subject::User(id) => format!("user:{id}"),
            Subject::Team(id) => format!("team:{id}"),
            Subject::Host(name) => format!("host:{name}"),
        }
    }
}

/// The one rule for whose quota an instance counts against: its team's when it
/// belongs to one, else its owner's.
pub fn quota_subject(inst: &Instance) -> Subject {
    match inst.team_id {
        Some(team) => Subject::Team(team),
        None => Subject::User(inst.owner_id),
    }
}

/// What one instance holds, or the totals of a subject. vCPUs are counted in
/// thousandths so that fractional sizes (0.25 on Fargate) add up exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub instances: i64,
    pub replicas: i64,
    pub milli_vcpu: i64,
    pub memory_mib: i64,
    pub gpus: i64,
}

/// One limited quantity, as named in refusals (`details.limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    MaxInstances,
    MaxReplicas,
    MaxVcpu,
    MaxMemoryMib,
    MaxGpus,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::MaxInstances,
        Resource::MaxReplicas,
        Resource::MaxVcpu,
        Resource::MaxMemoryMib,
        Resource::MaxGpus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::MaxInstances => "max_instances",
            Resource::MaxReplicas => "max_replicas",
            Resource::MaxVcpu => "max_vcpu",
            Resource::MaxMemoryMib => "max_memory_mib",
            Resource::MaxGpus => "max_gpus",
        }
    }
}

/// vCPUs in thousandths (rounded up, so a size never counts for less than it is).
pub fn milli_vcpu(cpu: f64) -> i64 {
    (cpu.max(0.0) * 1000.0).ceil() as i64
}

impl Allocation {
    /// What an instance holds: one instance slot until it is deleted, and its target
    /// replicas times its size while it is asked to run. Sleeping and stopped
    /// instances hold no compute, so waking one is an increase that is checked.
    pub fn of(inst: &Instance) -> Allocation {
        if inst.desired == Desired::Deleted {
            return Allocation::default();
        }
        let replicas = if inst.desired == Desired::Running {
            i64::from(inst.target_replicas)
        } else {
            0
        };
        Allocation {
            instances: 1,
            replicas,
            milli_vcpu: replicas * milli_vcpu(inst.compute.cpu),
            memory_mib: replicas * i64::from(inst.compute.memory),
            gpus: replicas * i64::from(inst.compute.gpu_count),
        }
    }

    /// `Allocation::of` an optional instance (none: nothing held).
    pub fn of_opt(inst: Option<&Instance>) -> Allocation {
        inst.map(Allocation::of).unwrap_or_default()
    }

    pub fn minus(self, other: Allocation) -> Allocation {
        Allocation {
            instances: self.instances - other.instances,
            replicas: self.replicas - other.replicas,
            milli_vcpu: self.milli_vcpu - other.milli_vcpu,
            memory_mib: self.memory_mib - other.memory_mib,
            gpus: self.gpus - other.gpus,
        }
    }

    pub fn is_zero(self) -> bool {
        self == Allocation::default()
    }

    pub fn get(self, r: Resource) -> i64 {
        match r {
            Resource::MaxInstances => self.instances,
            Resource::MaxReplicas => self.replicas,
            Resource::MaxVcpu => self.milli_vcpu,
            Resource::MaxMemoryMib => self.memory_mib,
            Resource::MaxGpus => self.gpus,
        }
    }
}

/// The limits of one subject in the counters' units (None: not limited). A host
/// limits only memory and vCPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub instances: Option<i64>,
    pub replicas: Option<i64>,
    pub milli_vcpu: Option<i64>,
    pub memory_mib: Option<i64>,
    pub gpus: Option<i64>,
}

impl Limits {
    pub fn get(self, r: Resource) -> Option<i64> {
        match r {
            Resource::MaxInstances => self.instances,
            Resource::MaxReplicas => self.replicas,
            Resource::MaxVcpu => self.milli_vcpu,
            Resource::MaxMemoryMib => self.memory_mib,
            Resource::MaxGpus => self.gpus,
        }
    }

    /// The first limit that `delta` added to `in_use` would pass. Only growing
    /// quantities are checked: giving compute back is always allowed, even above a
    /// limit that was lowered meanwhile.
    pub fn exceeded(self, in_use: Allocation, delta: Allocation) -> Option<Resource> {
        Resource::ALL.into_iter().find(|&r| {
            let d = delta.get(r);
            d > 0 && self.get(r).is_some_and(|max| in_use.get(r) + d > max)
        })
    }
}

/// Which kind of limit refused a change: a user's or team's quota (409
/// `quota_exceeded`) or the host's capacity (409 `insufficient_capacity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Quota,
    Capacity,
}

/// A refused change: nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: LimitKind,
    pub resource: Resource,
    /// In the counters' units (vCPUs in thousandths).
    pub allowed: i64,
    pub in_use: i64,
    pub requested: i64,
}

impl Refusal {
    pub fn new(
        kind: LimitKind,
        limits: Limits,
        in_use: Allocation,
        delta: Allocation,
    ) -> Option<Self> {
        let resource = limits.exceeded(in_use, delta)?;
        Some(Refusal {
            kind,
            resource,
            allowed: limits.get(resource).unwrap_or_default(),
            in_use: in_use.get(resource),
            requested: delta.get(resource),
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: i64| match self.resource {
            Resource::MaxVcpu => format!("{}", v as f64 / 1000.0),
            _ => v.to_string(),
        };
        match self.kind {
            LimitKind::Quota => write!(
                f,
                "quota {} is {}: {} in use, this needs {} more",
                self.resource.as_str(),
                show(self.allowed),
                show(self.in_use),
                show(self.requested)
            ),
            LimitKind::Capacity => write!(
                f,
                "the host has {} {} free of {} ({} committed), this needs {}",
                show((self.allowed - self.in_use).max(0)),
                self.resource.as_str().trim_start_matches("max_"),
                show(self.allowed),
                show(self.in_use),
                show(self.requested)
            ),
        }
    }
}

/// Who may use how much: what an admin stored for a user or team. `None` in any field
/// means the configured default; 0 means none allowed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// Total replicas of the instances asked to run.
    #[serde(default)]
    pub max_replicas: Option<u32>,
    /// vCPUs of those replicas (fractions allowed).
    #[serde(default)]
    pub max_vcpu: Option<f64>,
    #[serde(default)]
    pub max_memory_mib: Option<u32>,
    #[serde(default)]
    pub max_gpus: Option<u32>,
    /// Gateway requests in flight at once.
    #[serde(default)]
    pub max_concurrent_requests: Option<u32>,
    /// Monthly spend limit in USD (enforced by the budget feature; stored and shown).
    #[serde(default)]
    pub monthly_budget_usd: Option<f64>,
    /// Percent of the budget at which to alert, 1..=100.
    #[serde(default)]
    pub budget_alert_percent: Option<u32>,
}

impl Quota {
    /// Every field this quota leaves unset, taken from `defaults`.
    pub fn or(&self, defaults: &Quota) -> Quota {
        Quota {
            max_instances: self.max_instances.or(defaults.max_instances),
            max_replicas: self.max_replicas.or(defaults.max_replicas),
            max_vcpu: self.max_vcpu.or(defaults.max_vcpu),
            max_memory_mib: self.max_memory_mib.or(defaults.max_memory_mib),
            max_gpus: self.max_gpus.or(defaults.max_gpus),
            max_concurrent_requests: self
                .max_concurrent_requests
                .or(defaults.max_concurrent_requests),
            monthly_budget_usd: self.monthly_budget_usd.or(defaults.monthly_budget_usd),
            budget_alert_percent: self.budget_alert_percent.or(defaults.budget_alert_percent),
        }
    }

    /// The compute limits in the counters' units (an unset field limits nothing).
    pub fn limits(&self) -> Limits {
        Limits {
            instances: self.max_instances.map(i64::from),
            replicas: self.max_replicas.map(i64::from),
            milli_vcpu: self.max_vcpu.map(milli_vcpu),
            memory_mib: self.max_memory_mib.map(i64::from),
            gpus: self.max_gpus.map(i64::from),
        }
    }

    /// Refuses values no limit can have; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(v) = self.max_vcpu
            && !(v.is_finite() && (0.0..=100_000.0).contains(&v))
        {
            return Err(format!("max_vcpu {v} must be between 0 and 100000"));
        }
        if let Some(v) = self.monthly_budget_usd
            && !(v.is_finite() && (0.0..=1e12).contains(&v))
        {
            return Err(format!(
                "monthly_budget_usd {v} must be between 0 and 1000000000000"
            ));
        }
        if let Some(p) = self.budget_alert_percent
            && !(1..=100).contains(&p)
        {
            return Err(format!(
                "budget_alert_percent {p} must be between 1 and 100"
            ));
        }
        Ok(())
    }
}

/// What one change of an instance does to the counters of each subject it touches,
/// with the limits that apply there: the quota subject's, and the host's when the
/// instance runs on the local driver.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub subject: Subject,
    pub kind: LimitKind,
    pub limits: Limits,
    pub delta: Allocation,
}

/// The limits a change is admitted against: the instance's quota (the caller resolves
/// it for `quota_subject` of the instance) and, for local instances, the host.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Admission {
    pub quota: Limits,
    pub host: Option<(String, Limits)>,
}

impl Admission {
    /// No limits at all (tests and callers that only give compute back).
    pub fn unlimited() -> Self {
        Admission::default()
    }

    /// The counter changes of moving an instance from `old` to `new` (None: not
    /// there), in a fixed order (quota subject, then host) so that concurrent
    /// transactions lock counters in the same order. Subjects whose counters do not
    /// change are left out.
    pub fn charges(&self, old: Option<&Instance>, new: Option<&Instance>) -> Vec<Charge> {
        let inst = new
            .or(old)
            .expect("a change has an instance before or after");
        let delta = Allocation::of_opt(new).minus(Allocation::of_opt(old));
        if delta.is_zero() {
            return Vec::new();
        }
        let mut out = vec![Charge {
            subject: quota_subject(inst),
            kind: LimitKind::Quota,
            limits: self.quota,
            delta,
        }];
        if let Some((host, limits)) = &self.host
            && inst.driver == LOCAL_DRIVER
        {
            // The host commits memory and vCPUs; instance and replica counts are kept
            // too (for `GET /api/compute`) but not limited.
            out.push(Charge {
                subject: Subject::Host(host.clone()),
                kind: LimitKind::Capacity,
                limits: *limits,
                delta,
            });
        }
        out
    }
}

/// The driver whose replicas run on this host.
pub const LOCAL_DRIVER: &str = "local";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::{ComputeSpec, ComputeType};
    use chrono::Utc;

    fn inst(desired: Desired, target: u32) -> Instance {
        let now = Utc::now();
        Instance {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            model_id: "m".into(),
            driver: "local".into(),
            compute: ComputeSpec {
                compute_type: ComputeType::Local,
                cpu: 0.25,
                memory: 512,
                gpu_count: 1,
                instance_type: None,
                spot: false,
            },
            settings: Default::default(),
            desired,
            state: crate::State::Pending,
            state_reason: None,
            target_replicas: target,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            running_since: None,
            running_seconds: 0,
            team_id: None,
        }
    }

    #[test]
    fn running_instances_hold_target_times_size() {
        let a = Allocation::of(&inst(Desired::Running, 3));
        assert_eq!(
            a,
            Allocation {
                instances: 1,
                replicas: 3,
                milli_vcpu: 750,
                memory_mib: 1536,
                gpus: 3
            }
        );
        let asleep = Allocation::of(&inst(Desired::Sleeping, 3));
        assert_eq!((asleep.instances, asleep.replicas), (1, 0));
        assert!(Allocation::of(&inst(Desired::Deleted, 3)).is_zero());
    }

    #[test]
    fn only_growth_is_checked() {
        let limits = Limits {
            instances: Some(1),
            replicas: Some(2),
            ..Limits::default()
        };
        let used = Allocation {
            instances: 1,
            replicas: 5,
            ..Allocation::default()
        };
        let shrink = Allocation {
            replicas: -1,
            ..Allocation::default()
        };
        assert_eq!(limits.exceeded(used, shrink), None, "over a lowered limit");
        let grow = Allocation {
            instances: 1,
            ..Allocation::default()
        };
        let refusal = Refusal::new(LimitKind::Quota, limits, used, grow).unwrap();
        assert_eq!(refusal.resource, Resource::MaxInstances);
        assert_eq!(
            (refusal.allowed, refusal.in_use, refusal.requested),
            (1, 1, 1)
        );
        let zero = Limits {
            gpus: Some(0),
            ..Limits::default()
        };
        let one_gpu = Allocation {
            gpus: 1,
            ..Allocation::default()
        };
        assert_eq!(
            zero.exceeded(Allocation::default(), one_gpu),
            Some(Resource::MaxGpus),
            "0 allows none"
        );
    }

    #[test]
    fn charges_name_the_quota_subject_then_the_host() {
        let old = inst(Desired::Sleeping, 2);
        let mut new = old.clone();
        new.desired = Desired::Running;
        let admission = Admission {
            quota: Limits::default(),
            host: Some(("h1".into(), Limits::default())),
        };
        let charges = admission.charges(Some(&old), Some(&new));
        assert_eq!(charges.len(), 2);
        assert_eq!(charges[0].subject, Subject::User(old.owner_id));
        assert_eq!(charges[1].subject, Subject::Host("h1".into()));
        assert_eq!(charges[0].delta.replicas, 2);
        assert!(admission.charges(Some(&old), Some(&old)).is_empty());
        let mut ecs = new.clone();
        ecs.driver = "ecs".into();
        assert_eq!(admission.charges(None, Some(&ecs)).len(), 1, "no host");
        let team = Uuid::now_v7();
        ecs.team_id = Some(team);
        assert_eq!(
            quota_subject(&ecs),
            Subject::Team(team),
            "a team's instance"
        );
    }

    #[test]
    fn quota_fields_fall_back_and_validate() {
        let defaults = Quota {
            max_instances: Some(3),
            max_vcpu: Some(4.0),
            ..Quota::default()
        };
        let own = Quota {
            max_instances: Some(0),
            ..Quota::default()
        };
        let eff = own.or(&defaults);
        assert_eq!(eff.max_instances, Some(0));
        assert_eq!(eff.limits().milli_vcpu, Some(4000));
        assert!(
            Quota {
                budget_alert_percent: Some(0),
                ..Quota::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Quota {
                max_vcpu: Some(f64::NAN),
                ..Quota::default()
            }
            .validate()
            .is_err()
        );
    }
}
