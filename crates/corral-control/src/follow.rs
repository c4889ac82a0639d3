//! A process that does not lead still serves the gateway: it follows the store instead
//! of health-checking replicas itself. Every tick it reads the instances and replicas
//! and routes to each running instance's replicas that the leader marked ready; it also
//! flushes its own gateway activity to the store, so the leader's idle check sees the
//! requests this process served.

use std::collections::HashMap;
use std::future::Future;

use chrono::DateTime;
use corral_core::{Desired, Instance, Replica, ReplicaState};
use uuid::Uuid;

use crate::control::Inner;

/// One instance's route as the store describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRoute {
    pub owner_id: Uuid,
    pub team_id: Option<Uuid>,
    pub model_id: String,
    pub ready: Vec<(Uuid, String)>,
}

/// The routes the store implies: the ready replicas (with an endpoint) of instances
/// meant to run, in replica id order; instances with none are left out.
pub(crate) fn stored_routes(
    instances: &[Instance],
    replicas: &[Replica],
) -> HashMap<Uuid, StoredRoute> {
    let mut routes: HashMap<Uuid, StoredRoute> = instances
        .iter()
        .filter(|i| i.desired == Desired::Running)
        .map(|i| {
            let route = StoredRoute {
                owner_id: i.owner_id,
                team_id: i.team_id,
                model_id: i.model_id.clone(),
                ready: Vec::new(),
            };
            (i.id, route)
        })
        .collect();
    for r in replicas.iter().filter(|r| r.state == ReplicaState::Ready) {
        if let (Some(route), Some(endpoint)) = (routes.get_mut(&r.instance_id), &r.endpoint) {
            route.ready.push((r.id, endpoint.clone()));
        }
    }
    routes.retain(|_, r| !r.ready.is_empty());
    for route in routes.values_mut() {
        route.ready.sort();
    }
    routes
}

/// Follows the store until `until` resolves (this process became leader, or stops);
/// returns what `until` did.
pub(crate) async fn follow<T>(inner: &Inner, until: impl Future<Output = T>) -> T {
    tokio::pin!(until);
    let mut flushed: HashMap<Uuid, u64> = HashMap::new();
    let mut last_flush = tokio::time::Instant::now();
    loop {
        if let Err(e) = refresh(inner).await {
            tracing::warn!(error = %e, "following the store's routes failed");
        }
        if last_flush.elapsed() >= inner.settings.activity_flush {
            last_flush = tokio::time::Instant::now();
            flush_activity(inner, &mut flushed).await;
        }
        tokio::select! {
            done = &mut until => return done,
            _ = tokio::time::sleep(inner.settings.tick) => {}
        }
    }
}

async fn refresh(inner: &Inner) -> corral_store::Result<()> {
    let instances = inner.store.list_instances(None).await?;
    let replicas = inner.store.all_replicas().await?;
    let routes = stored_routes(&instances, &replicas);
    let mut changed = false;
    for route in inner.routing.all() {
        if !routes.contains_key(&route.instance_id) {
            inner.routing.remove(route.instance_id);
            changed = true;
        }
    }
    for (id, route) in &routes {
        if !inner.routing.routes_to(*id, &route.ready) {
            inner.routing.set(
                *id,
                route.owner_id,
                route.team_id,
                &route.model_id,
                &route.ready,
            );
            changed = true;
        }
    }
    if changed {
        inner.route_changed();
    }
    Ok(())
}

/// Writes the activity this process's gateway saw (only forward in the store).
async fn flush_activity(inner: &Inner, flushed: &mut HashMap<Uuid, u64>) {
    for route in inner.routing.all() {
        let seen = route.last_activity_ms();
        if seen <= flushed.get(&route.instance_id).copied().unwrap_or(0) {
            continue;
        }
        let Some(at) = i64::try_from(seen)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
        else {
            continue;
        };
        match inner.store.touch_activity(route.instance_id, at).await {
            Ok(_) => {
                flushed.insert(route.instance_id, seen);
            }
            Err(e) => tracing::warn!(error = %e, "flushing gateway activity failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn instance(desired: Desired) -> Instance {
        let now = Utc::now();
        Instance {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            team_id: None,
            model_id: "m".into(),
            driver: "local".into(),
            compute: corral_core::ComputeSpec {
                compute_type: corral_core::ComputeType::Local,
                cpu: 1.0,
                memory: 1024,
                gpu_count: 0,
                instance_type: None,
                spot: false,
            },
            settings: Default::default(),
            desired,
            state: corral_core::State::Ready,
            state_reason: None,
            target_replicas: 2,
            created_at: now,
            updated_at: now,
            last_activity_at: now,
            running_since: None,
            running_seconds: 0,
        }
    }

    fn replica(instance_id: Uuid, state: ReplicaState, endpoint: Option<&str>) -> Replica {
        Replica {
            id: Uuid::now_v7(),
            instance_id,
            driver_ref: "pid:1".into(),
            endpoint: endpoint.map(str::to_string),
            state,
            restarts: 0,
            started_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn routes_only_ready_replicas_of_running_instances() {
        let running = instance(Desired::Running);
        let stopping = instance(Desired::Stopped);
        let starting = instance(Desired::Running);
        let ready = replica(running.id, ReplicaState::Ready, Some("http://a"));
        let replicas = vec![
            ready.clone(),
            replica(running.id, ReplicaState::Unhealthy, Some("http://b")),
            replica(running.id, ReplicaState::Ready, None),
            replica(stopping.id, ReplicaState::Ready, Some("http://c")),
            replica(starting.id, ReplicaState::Starting, Some("http://d")),
        ];
        let routes = stored_routes(&[running.clone(), stopping, starting], &replicas);
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(
            routes[&running.id],
            StoredRoute {
                owner_id: running.owner_id,
                team_id: None,
                model_id: "m".into(),
                ready: vec![(ready.id, "http://a".into())],
            }
        );
    }
}
