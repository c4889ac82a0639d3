//! The routing table: for each instance, its ready replicas and how many requests each
//! has in flight. The reconciler writes it when replicas become ready or go away; the
//! gateway reads it on every request (one short read lock, no store query) and picks a
//! replica with `pick`: the one most likely to hold the request's prompt prefix in its KV
//! cache, within a load bound, else the one with the fewest outstanding requests.

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
    /// The team the instance belongs to: its members may use it too.
    pub team_id: Option<Uuid>,
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
        team_id: Option<Uuid>,
        model_id: String,
        replicas: Vec<Arc<ReplicaRoute>>,
    ) -> Self {
        InstanceRoute {
            instance_id,
            owner_id,
            team_id,
            model_id,
            replicas,
            last_activity_ms: AtomicU64::new(0),
        }
    }

    /// The replica `pick` chooses for a request with this prefix key (None: no prefix,
    /// e.g. embeddings), reserved for one request until the returned guard is dropped
    /// (stream finished or client gone). Two requests picking at the same moment may
    /// both see the same counts: the bound is then exceeded by at most the race, never
    /// for long, and taking a lock per request to close it is not worth it.
    pub fn acquire(&self, prefix: Option<u64>) -> Option<InFlight> {
        let loads: Vec<(Uuid, u32)> = self
            .replicas
            .iter()
            .map(|r| (r.replica_id, r.in_flight()))
            .collect();
        let replica = self.replicas.get(pick(prefix, &loads)?)?.clone();
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
        self.for_model_where(model_id, |r| r.owner_id == owner_id)
    }

    /// The least loaded routable instance of a model among those `allowed` picks (e.g.
    /// the instances of the caller's teams).
    pub fn for_model_where(
        &self,
        model_id: &str,
        allowed: impl Fn(&InstanceRoute) -> bool,
    ) -> Option<Arc<InstanceRoute>> {
        self.read()
            .values()
            .filter(|r| r.model_id == model_id && !r.replicas.is_empty() && allowed(r))
            .min_by_key(|r| r.in_flight())
            .cloned()
    }

    /// Replaces an instance's ready replicas, keeping the in-flight counters and the
    /// activity time of replicas that stay (so a refresh never loses accounting).
    pub fn set(
        &self,
        instance_id: Uuid,
        owner_id: Uuid,
        team_id: Option<Uuid>,
        model_id: &str,
        ready: &[(Uuid, String)],
    ) {
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
        let route = InstanceRoute::new(
            instance_id,
            owner_id,
            team_id,
            model_id.to_string(),
            replicas,
        );
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

/// Routing policy: which of an instance's ready replicas (`loads`: id and requests in
/// flight, in any order) takes a request whose prompt starts with the prefix `prefix`
/// hashes to. Returns an index into `loads`; None when there is no replica.
///
/// * Cache affinity: replicas are ranked by rendezvous (highest-random-weight) hashing
///   of (prefix, replica id), so every turn of a conversation prefers the same replica,
///   whose runner then reuses the conversation's KV cache and prefills only the new
///   turn. When a replica comes or goes, only the prefixes it ranks first move.
/// * Load bound: a replica is taken only if, with this request, it holds at most
///   `cap` requests, `cap = max(⌈mean⌉, ⌊1.25 × mean⌋)` where `mean` is the in-flight
///   mean including this request. So no replica exceeds 1.25 × the mean whenever that
///   is achievable at all (⌈mean⌉ is the least any placement can reach), and a popular
///   prefix spills to its next-ranked replica rather than queueing (consistent hashing
///   with bounded loads, Mirrokni et al. 2018).
/// * Fallback: without a prefix, with one replica, or if no replica is under the cap,
///   the replica with the fewest requests in flight (first listed on a tie).
pub fn pick(prefix: Option<u64>, loads: &[(Uuid, u32)]) -> Option<usize> {
    let least = loads
        .iter()
        .enumerate()
        .min_by_key(|(_, (_, load))| *load)?
        .0;
    let Some(prefix) = prefix else {
        return Some(least);
    };
    if loads.len() == 1 {
        return Some(0);
    }
    let n = loads.len() as u64;
    let total = loads.iter().map(|(_, l)| u64::from(*l)).sum::<u64>() + 1;
    let cap = total.div_ceil(n).max(total * 5 / (4 * n));
    let mut ranked: Vec<usize> = (0..loads.len()).collect();
    ranked.sort_by_key(|&i| std::cmp::Reverse(rendezvous(prefix, loads[i].0)));
    Some(
        ranked
            .into_iter()
            .find(|&i| u64::from(loads[i].1) < cap)
            .unwrap_or(least),
    )
}

/// The weight of `replica` for `prefix`: a fixed mix (splitmix64's finaliser) so that
/// every gateway process, of any build, ranks replicas alike.
fn rendezvous(prefix: u64, replica: Uuid) -> u64 {
    let (hi, lo) = replica.as_u64_pair();
    mix(prefix ^ mix(hi ^ mix(lo)))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
            None,
            "m",
            &[(a, "http://a".into()), (b, "http://b".into())],
        );
        let route = table.get(inst).unwrap();
        let first = route.acquire(None).unwrap();
        let second = route.acquire(None).unwrap();
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
        table.set(inst, owner, None, "m", &[(a, "http://a".into())]);
        let held = table.get(inst).unwrap().acquire(None).unwrap();
        table.set(
            inst,
            owner,
            None,
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

    fn replicas(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    fn loads(ids: &[Uuid], counts: &[u32]) -> Vec<(Uuid, u32)> {
        ids.iter().copied().zip(counts.iter().copied()).collect()
    }

    #[test]
    fn no_prefix_is_least_outstanding() {
        let ids = replicas(3);
        assert_eq!(pick(None, &loads(&ids, &[2, 0, 1])), Some(1));
        assert_eq!(
            pick(None, &loads(&ids, &[1, 1, 1])),
            Some(0),
            "first on a tie"
        );
        assert_eq!(pick(Some(7), &[]), None);
        assert_eq!(pick(None, &[]), None);
    }

    #[test]
    fn a_prefix_sticks_to_one_replica_and_prefixes_spread() {
        let ids = replicas(4);
        let idle = loads(&ids, &[0, 0, 0, 0]);
        let mut per_replica = [0u32; 4];
        for prefix in 0..4000u64 {
            let key = mix(prefix);
            let first = pick(Some(key), &idle).unwrap();
            // Same answer whatever order the table lists the replicas in.
            let mut reversed = idle.clone();
            reversed.reverse();
            assert_eq!(reversed[pick(Some(key), &reversed).unwrap()].0, ids[first]);
            per_replica[first] += 1;
        }
        for count in per_replica {
            assert!((800..1200).contains(&count), "{per_replica:?}");
        }
    }

    #[test]
    fn removing_a_replica_moves_only_its_prefixes() {
        let ids = replicas(3);
        let before = loads(&ids, &[0, 0, 0]);
        let after = loads(&ids[..2], &[0, 0]);
        for prefix in 0..1000u64 {
            let key = mix(prefix);
            let was = before[pick(Some(key), &before).unwrap()].0;
            let now = after[pick(Some(key), &after).unwrap()].0;
            if was != ids[2] {
                assert_eq!(was, now, "prefix {prefix} moved needlessly");
            }
        }
    }

    #[test]
    fn load_bound_spills_to_the_next_ranked_replica() {
        let ids = replicas(2);
        let key = 42;
        let home = pick(Some(key), &loads(&ids, &[0, 0])).unwrap();
        let other = 1 - home;
        let mut counts = [0u32; 2];
        // One on home, none elsewhere: mean with this request 1, cap 1: spill.
        counts[home] = 1;
        assert_eq!(pick(Some(key), &loads(&ids, &counts)), Some(other));
        // One on each: mean 1.5, cap max(2, 1) = 2: home takes it.
        counts[other] = 1;
        assert_eq!(pick(Some(key), &loads(&ids, &counts)), Some(home));
        // 5 on home, 3 on the other: mean with this one 4.5, cap 5: over, spill.
        counts = [0, 0];
        counts[home] = 5;
        counts[other] = 3;
        assert_eq!(pick(Some(key), &loads(&ids, &counts)), Some(other));
        // 4 and 4: mean 4.5, cap 5: home may take its fifth.
        counts[home] = 4;
        counts[other] = 4;
        assert_eq!(pick(Some(key), &loads(&ids, &counts)), Some(home));
    }

    #[test]
    fn the_bound_holds_for_any_sequence_of_arrivals() {
        // Every request of one hot prefix: the max stays within the cap at each step.
        for n in 2..6usize {
            let ids = replicas(n);
            let mut counts = vec![0u32; n];
            for step in 1..=200u64 {
                let i = pick(Some(9), &loads(&ids, &counts)).unwrap();
                counts[i] += 1;
                let cap = step.div_ceil(n as u64).max(step * 5 / (4 * n as u64));
                assert!(
                    counts.iter().all(|&c| u64::from(c) <= cap),
                    "{n}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn acquire_follows_the_prefix() {
        let table = RoutingTable::default();
        let (inst, owner) = (Uuid::now_v7(), Uuid::now_v7());
        table.set(
            inst,
            owner,
            None,
            "m",
            &[
                (Uuid::now_v7(), "http://a".into()),
                (Uuid::now_v7(), "http://b".into()),
            ],
        );
        let route = table.get(inst).unwrap();
        let first = route.acquire(Some(5)).unwrap().replica.replica_id;
        // Sequential turns of one conversation (each ends before the next) stay put.
        for _ in 0..5 {
            assert_eq!(route.acquire(Some(5)).unwrap().replica.replica_id, first);
        }
    }
}
