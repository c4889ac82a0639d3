//! Conformance of quotas and admission counters: the counters equal the sum of what
//! the instances hold after any sequence of changes, growth past a limit is refused
//! with nothing written, concurrent changes are admitted exactly, and `desired` is a
//! compare-and-set that never leaves `Deleted`.

use corral_core::{
    Admission, Allocation, Desired, Instance, InstanceSettings, LimitKind, Limits, Quota, Resource,
    Subject, quota_subject,
};
use futures_util::future::join_all;
use uuid::Uuid;

use super::{get_instance, instance, new_model, new_user, now, unique};
use crate::{DesiredChange, Error, Store};

/// The sum of `Allocation::of` over the instances: what the counters must say.
fn sum(instances: &[Instance]) -> Allocation {
    instances.iter().fold(Allocation::default(), |acc, i| {
        let a = Allocation::of(i);
        Allocation {
            instances: acc.instances + a.instances,
            replicas: acc.replicas + a.replicas,
            milli_vcpu: acc.milli_vcpu + a.milli_vcpu,
            memory_mib: acc.memory_mib + a.memory_mib,
            gpus: acc.gpus + a.gpus,
        }
    })
}

fn refused(err: Error) -> corral_core::Refusal {
    match err {
        Error::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub async fn quota_documents_round_trip(store: &dyn Store) {
    let user = Subject::User(Uuid::now_v7());
    let team = Subject::Team(Uuid::now_v7());
    assert_eq!(store.quota(&user).await.unwrap(), None);
    let quota = Quota {
        max_instances: Some(0),
        max_vcpu: Some(2.5),
        monthly_budget_usd: Some(12.75),
        budget_alert_percent: Some(80),
        ..Quota::default()
    };
    store.set_quota(&user, &quota, now()).await.unwrap();
    assert_eq!(store.quota(&user).await.unwrap(), Some(quota.clone()));
    assert_eq!(store.quota(&team).await.unwrap(), None, "per subject");
    // Replaced whole: a field set back to null is the default again.
    let smaller = Quota {
        max_instances: Some(1),
        ..Quota::default()
    };
    store.set_quota(&user, &smaller, now()).await.unwrap();
    assert_eq!(store.quota(&user).await.unwrap(), Some(smaller));
    assert_eq!(
        store.allocation(&team).await.unwrap(),
        Allocation::default(),
        "nothing held yet"
    );
}

pub async fn concurrent_creates_stop_at_max_instances(store: &dyn Store) {
    let owner = new_user(store).await;
    let model = new_model(store).await;
    let admission = Admission {
        quota: Limits {
            instances: Some(3),
            ..Limits::default()
        },
        host: None,
    };
    let t = now();
    let attempts: Vec<Instance> = (0..20).map(|_| instance(&owner, &model, t)).collect();
    let results = join_all(
        attempts
            .iter()
            .map(|inst| store.create_instance(inst, &admission)),
    )
    .await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 3, "{results:?}");
    for err in results.into_iter().filter_map(|r| r.err()) {
        let r = refused(err);
        assert_eq!(
            (r.kind, r.resource, r.allowed, r.in_use, r.requested),
            (LimitKind::Quota, Resource::MaxInstances, 3, 3, 1)
        );
    }
    let listed = store.list_instances(Some(owner.id)).await.unwrap();
    assert_eq!(listed.len(), 3);
    let subject = Subject::User(owner.id);
    assert_eq!(store.allocation(&subject).await.unwrap(), sum(&listed));
}

pub async fn allocation_counters_exact_after_mixed_operations(store: &dyn Store) {
    let owner = new_user(store).await;
    let model = new_model(store).await;
    let host = unique("host");
    let admission = Admission {
        quota: Limits {
            replicas: Some(6),
            ..Limits::default()
        },
        host: Some((host.clone(), Limits::default())),
    };
    let subject = Subject::User(owner.id);
    let host_subject = Subject::Host(host);
    let check = |step: &'static str| {
        let subject = subject.clone();
        let host_subject = host_subject.clone();
        async move {
            let listed = store.list_instances(Some(owner.id)).await.unwrap();
            let expected = sum(&listed);
            assert_eq!(
                store.allocation(&subject).await.unwrap(),
                expected,
                "{step}"
            );
            assert_eq!(
                store.allocation(&host_subject).await.unwrap(),
                expected,
                "{step}: host"
            );
        }
    };
    let t = now();
    let (a, b) = (instance(&owner, &model, t), instance(&owner, &model, t));
    assert_eq!(quota_subject(&a), subject);
    store.create_instance(&a, &admission).await.unwrap();
    store.create_instance(&b, &admission).await.unwrap();
    check("created").await;
    assert!(
        store
            .set_target_replicas(a.id, 3, &admission, t)
            .await
            .unwrap()
    );
    check("scaled up").await;
    let adm = &admission;
    let set = |id, from, to| async move {
        match store.set_desired(id, from, to, adm, t).await {
            Ok(Some(DesiredChange::Set(i))) => i,
            other => panic!("{from:?} -> {to:?}: {other:?}"),
        }
    };
    set(a.id, Desired::Running, Desired::Sleeping).await;
    check("asleep").await;
    let settings = InstanceSettings {
        min_replicas: 2,
        max_replicas: 4,
        ..InstanceSettings::default()
    };
    let b2 = store
        .update_instance_settings(b.id, &settings, &admission, t)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b2.target_replicas, 2, "brought within the new bounds");
    check("settings").await;
    set(a.id, Desired::Sleeping, Desired::Running).await;
    check("woken").await;
    set(b.id, Desired::Running, Desired::Stopped).await;
    set(b.id, Desired::Stopped, Desired::Deleted).await;
    check("deleted").await;
    assert!(store.delete_instance(b.id, &admission).await.unwrap());
    assert!(store.delete_instance(a.id, &admission).await.unwrap());
    check("removed").await;
    assert_eq!(
        store.allocation(&subject).await.unwrap(),
        Allocation::default()
    );
}

pub async fn refusals_change_nothing(store: &dyn Store) {
    let owner = new_user(store).await;
    let model = new_model(store).await;
    // local_spec: 2 vCPU, 4096 MiB per replica.
    let quota = Admission {
        quota: Limits {
            replicas: Some(2),
            ..Limits::default()
        },
        host: None,
    };
    let t = now();
    let inst = instance(&owner, &model, t);
    store.create_instance(&inst, &quota).await.unwrap();
    let subject = Subject::User(owner.id);
    let before = store.allocation(&subject).await.unwrap();

    let r = refused(
        store
            .set_target_replicas(inst.id, 3, &quota, t)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (r.resource, r.allowed, r.in_use, r.requested),
        (Resource::MaxReplicas, 2, 1, 2)
    );
    let settings = InstanceSettings {
        min_replicas: 3,
        max_replicas: 3,
        ..InstanceSettings::default()
    };
    refused(
        store
            .update_instance_settings(inst.id, &settings, &quota, t)
            .await
            .unwrap_err(),
    );
    assert_eq!(get_instance(store, inst.id).await, inst, "unchanged");
    assert_eq!(store.allocation(&subject).await.unwrap(), before);

    // Waking is growth: a sleeping instance over the (lowered) quota stays asleep.
    store
        .set_desired(inst.id, Desired::Running, Desired::Sleeping, &quota, t)
        .await
        .unwrap();
    let none = Admission {
        quota: Limits {
            replicas: Some(0),
            ..Limits::default()
        },
        host: None,
    };
    refused(
        store
            .set_desired(inst.id, Desired::Sleeping, Desired::Running, &none, t)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        get_instance(store, inst.id).await.desired,
        Desired::Sleeping
    );

    // The host's capacity: a deploy larger than what is free creates nothing.
    let host = unique("host");
    let small_host = Admission {
        quota: Limits::default(),
        host: Some((
            host.clone(),
            Limits {
                memory_mib: Some(6000),
                ..Limits::default()
            },
        )),
    };
    let first = instance(&owner, &model, t);
    store.create_instance(&first, &small_host).await.unwrap();
    let second = instance(&owner, &model, t);
    let r = refused(
        store
            .create_instance(&second, &small_host)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (r.kind, r.resource, r.allowed, r.in_use, r.requested),
        (
            LimitKind::Capacity,
            Resource::MaxMemoryMib,
            6000,
            4096,
            4096
        )
    );
    assert_eq!(store.instance(second.id).await.unwrap(), None);
    let host_use = store.allocation(&Subject::Host(host)).await.unwrap();
    assert_eq!(host_use.memory_mib, 4096);
    // ...and the quota subject was not charged for the refused one either.
    let listed = store.list_instances(Some(owner.id)).await.unwrap();
    assert_eq!(store.allocation(&subject).await.unwrap(), sum(&listed));
}

pub async fn set_desired_concurrently_wins_once(store: &dyn Store) {
    let owner = new_user(store).await;
    let model = new_model(store).await;
    let t = now();
    let mut inst = instance(&owner, &model, t);
    inst.desired = Desired::Sleeping;
    store
        .create_instance(&inst, &Admission::unlimited())
        .await
        .unwrap();
    // A wake and a delete race from the same value: one wins, the other sees it.
    let free = Admission::unlimited();
    let (wake, delete) = tokio::join!(
        store.set_desired(inst.id, Desired::Sleeping, Desired::Running, &free, t),
        store.set_desired(inst.id, Desired::Sleeping, Desired::Deleted, &free, t),
    );
    let outcomes = [wake.unwrap().unwrap(), delete.unwrap().unwrap()];
    let won: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, DesiredChange::Set(_)))
        .collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    let now_desired = get_instance(store, inst.id).await.desired;
    assert!(matches!(now_desired, Desired::Running | Desired::Deleted));
    for o in &outcomes {
        if let DesiredChange::Stale(seen) = o {
            assert_eq!(
                seen.desired, now_desired,
                "the loser sees the winner's value"
            );
        }
    }
    // Ten concurrent stops from running: exactly one is written.
    let other = instance(&owner, &model, t);
    store.create_instance(&other, &free).await.unwrap();
    let results = join_all(
        (0..10).map(|_| store.set_desired(other.id, Desired::Running, Desired::Stopped, &free, t)),
    )
    .await;
    let set = results
        .iter()
        .filter(|r| matches!(r, Ok(Some(DesiredChange::Set(_)))))
        .count();
    assert_eq!(set, 1, "{results:?}");
}
