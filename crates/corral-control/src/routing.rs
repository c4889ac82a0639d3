//! The routing table: for each instance, its ready replicas and how many requests each
//! has in flight. The reconciler writes it when replicas become ready or go away; the
//! gateway reads it on every request (one short read lock, no store query) and picks
//! the replica with the fewest outstanding requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// One ready replica as the gateway sees it.
#[derive(Debug)]
pub struct ReplicaRoute {
    pub replica_id: Uuid,
    /// Base URL of the replica's Ollama-compatible API.
    pub endpoint: String,
    in_flight: AtomicU32,
}

impl ReplicaRoute {
    pub fn new(replica_id: Uuid, endpoint: String) -> Self {
        ReplicaRoute {
            replica_id,
            endpoint,
            in_flight: AtomicU32::new(0),
        }
    }

    /// Acquire: pairs with the release in `InFlight::drop`, so what a request wrote
    /// before it ended (its activity stamp) is seen by whoever sees it ended.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// An instance's routing entry.
#[derive(Debug)]
pub struct InstanceRoute {
    pub instance_id: Uuid,
    pub owner_id: Uuid,
    pub model_id: String,
    pub replicas: Vec<Arc<ReplicaRoute>>,
    /// Unix milliseconds of the last request, for idle shutdown; flushed to the store
    /// by the reconciler so the gateway never writes to the store per request.
    last_activity_ms: AtomicU64,
}

impl InstanceRoute {
    pub fn new(
        instance_id: Uuid,
        owner_id: Uuid,
        model_id: String,
        replicas: Vec<Arc<ReplicaRoute>>,
    ) -> Self {
        InstanceRoute {
            instance_id,
            owner_id,
            model_id,
            replicas,
            last_activity_ms: AtomicU64::new(0),
        }
    }

    /// The replica with the fewest requests in flight, reserved for one request until
    /// the returned guard is dropped (stream finished or client gone).
    pub fn acquire(&self) -> Option<InFlight> {
        let replica = self.replicas.iter().min_by_key(|r| r.in_flight())?.clone();
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Some(InFlight { replica })
    }

    /// Records activity now. Besides at its start (`acquire`), the gateway calls this
    /// when a request ends and now and then while a stream runs: a request that lasted
    /// longer than the idle timeout must not leave the instance idle the moment it ends.
    pub fn touch(&self) {
        self.last_activity_ms.fetch_max(now_ms(), Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.replicas.iter().map(|r| r.in_flight()).sum()
    }

    pub fn last_activity_ms(&self) -> u64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }
}

/// A reserved slot on a replica; releases it on drop.
#[derive(Debug)]
pub struct InFlight {
    pub replica: Arc<ReplicaRoute>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.in_flight.fetch_sub(1, Ordering::Release);
    }
}

#[derive(Debug, Default, Clone)]
pub struct RoutingTable {
    routes: Arc<RwLock<HashMap<Uuid, Arc<InstanceRoute>>>>,
}

impl RoutingTable {
    pub fn get(&self, instance_id: Uuid) -> Option<Arc<InstanceRoute>> {
        self.read().get(&instance_id).cloned()
    }

    /// The caller's routable instance of a model (the gateway's `model` routing); when
    /// several exist, the least loaded.
    pub fn for_owner_model(&self, owner_id: Uuid, model_id: &str) -> Option<Arc<InstanceRoute>> {
        self.read()
            .values()
            .filter(|r| r.owner_id == owner_id && r.model_id == model_id && !r.replicas.is_empty())
            .min_by_key(|r| r.in_flight())
            .cloned()
    }

    /// Replaces an instance's ready replicas, keeping the in-flight counters and the
    /// activity time of replicas that stay (so a refresh never loses accounting).
    pub fn set(&self, instance_id: Uuid, owner_id: Uuid, model_id: &str, ready: &[(Uuid, String)]) {
        let mut routes = self.write();
        let previous = routes.get(&instance_id).cloned();
        let replicas = ready
            .iter()
            .map(|(id, endpoint)| {
                previous
                    .as_ref()
                    .and_then(|p| {
                        p.replicas
                            .iter()
                            .find(|r| r.replica_id == *id && &r.endpoint == endpoint)
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(ReplicaRoute::new(*id, endpoint.clone())))
            })
            .collect();
        let route = InstanceRoute::new(instance_id, owner_id, model_id.to_string(), replicas);
        if let Some(p) = &previous {
            route
                .last_activity_ms
                .store(p.last_activity_ms(), Ordering::Relaxed);
        }
        routes.insert(instance_id, Arc::new(route));
    }

    /// Every routed instance (for gauges such as ready replicas and requests in flight).
    /// Whether the instance is routed to exactly `ready`, in that order.
    pub fn routes_to(&self, instance_id: Uuid, ready: &[(Uuid, String)]) -> bool {
        self.get(instance_id).is_some_and(|c| {
            c.replicas.len() == ready.len()
                && c.replicas
                    .iter()
                    .zip(ready)
                    .all(|(r, (id, ep))| r.replica_id == *id && r.endpoint == *ep)
        })
    }

    pub fn all(&self) -> Vec<Arc<InstanceRoute>> {
        self.read().values().cloned().collect()
    }

    pub fn remove(&self, instance_id: Uuid) {
        self.write().remove(&instance_id);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, Arc<InstanceRoute>>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, Arc<InstanceRoute>>> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_outstanding_requests() {
        let table = RoutingTable::default();
        let (inst, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        table.set(
            inst,
            owner,
            "m",
            &[(a, "http://a".into()), (b, "http://b".into())],
        );
        let route = table.get(inst).unwrap();
        let first = route.acquire().unwrap();
        let second = route.acquire().unwrap();
        assert_ne!(
            first.replica.replica_id, second.replica.replica_id,
            "spread over replicas"
        );
        assert_eq!(route.in_flight(), 2);
        drop(first);
        assert_eq!(route.in_flight(), 1);
        let started = route.last_activity_ms();
        assert!(started > 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        route.touch();
        assert!(route.last_activity_ms() > started, "moved on by the end");
    }

    #[test]
    fn refresh_keeps_counters_and_owner_routing() {
        let table = RoutingTable::default();
        let (inst, owner) = (Uuid::now_v7(), Uuid::now_v7());
        let a = Uuid::now_v7();
        table.set(inst, owner, "m", &[(a, "http://a".into())]);
        let held = table.get(inst).unwrap().acquire().unwrap();
        table.set(
            inst,
            owner,
            "m",
            &[(a, "http://a".into()), (Uuid::now_v7(), "http://b".into())],
        );
        assert_eq!(table.get(inst).unwrap().in_flight(), 1);
        drop(held);
        assert_eq!(table.get(inst).unwrap().in_flight(), 0);
        assert!(table.for_owner_model(owner, "m").is_some());
        assert!(
            table.for_owner_model(Uuid::now_v7(), "m").is_none(),
            "owner-scoped"
        );
        table.remove(inst);
        assert!(table.get(inst).is_none());
    }
}
