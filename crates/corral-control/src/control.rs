//! `Control`: the handle the server, the API and the gateway share. It owns the
//! supervisor loop (one task per instance that has work to do), the routing table, and
//! the in-memory views (observed states, resources, counters) the API reads.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use corral_core::{
    Admission, CatalogModel, ComputeOffer, Desired, Instance, Quota, State, Subject, quota_subject,
};
use corral_drivers::{ComputeDriver, ResourceUsage};
use corral_store::DesiredChange;
use corral_store::Store;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::health::HealthChecker;
use crate::leader::Leadership;
use crate::reconcile::InstanceTask;
use crate::resolver::WeightsResolver;
use crate::routing::{InstanceRoute, RoutingTable};
use crate::settings::ControlSettings;
use crate::stats::{ControlStats, Counters};
use crate::{adopt, follow, sweep, wake};

/// The reconciler and everything the API and gateway ask of it. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) inner: Arc<Inner>,
}

/// What the reconciler last saw of an instance, for `wake` and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub state: State,
    pub desired: Desired,
    pub reason: Option<String>,
    /// The `changes` generation it was published at: `wake` only trusts what was
    /// observed after it asked.
    pub seq: u64,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub drivers: Vec<Arc<dyn ComputeDriver>>,
    pub weights: Arc<dyn WeightsResolver>,
    pub settings: ControlSettings,
    pub routing: RoutingTable,
    pub health: HealthChecker,
    /// Bumped by `nudge`: every instance task reconciles at once.
    pub nudges: watch::Sender<u64>,
    /// Wakes the supervisor to start tasks for new or woken instances. `Notify` keeps a
    /// permit while the supervisor is busy, so a nudge is never lost.
    pub supervisor: Notify,
    /// Bumped whenever a route or an observed state changes; `wake` waits on it instead
    /// of polling the store.
    pub changes: watch::Sender<u64>,
    observed: Mutex<HashMap<Uuid, Snapshot>>,
    resources: Mutex<HashMap<Uuid, Vec<(Uuid, ResourceUsage)>>>,
    pub counters: Mutex<Counters>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent between statements, so a panic in
    // another holder does not make it unusable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    pub async fn effective_quota(&self, subject: &Subject) -> corral_store::Result<Quota> {
        let own = self.store.quota(subject).await?.unwrap_or_default();
        Ok(own.or(&self.settings.quota_defaults))
    }

    pub async fn admission(&self, inst: &Instance) -> corral_store::Result<Admission> {
        let quota = self.effective_quota(&quota_subject(inst)).await?;
        Ok(Admission {
            quota: quota.limits(),
            host: self
                .settings
                .host
                .as_ref()
                .map(|h| (h.name.clone(), h.limits())),
        })
    }

    pub fn driver(&self, name: &str) -> Option<Arc<dyn ComputeDriver>> {
        self.drivers.iter().find(|d| d.name() == name).cloned()
    }

    /// Records what an instance task saw; wakes `wake` callers when it changed.
    pub fn publish(&self, inst: &Instance) {
        let mut observed = lock(&self.observed);
        let same = observed.get(&inst.id).is_some_and(|s| {
            s.state == inst.state && s.desired == inst.desired && s.reason == inst.state_reason
        });
        if same {
            return;
        }
        let mut seq = 0;
        self.changes.send_modify(|g| {
            *g += 1;
            seq = *g;
        });
        observed.insert(
            inst.id,
            Snapshot {
                state: inst.state,
                desired: inst.desired,
                reason: inst.state_reason.clone(),
                seq,
            },
        );
    }

    /// A route appeared, changed or went away.
    pub fn route_changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    pub fn snapshot(&self, id: Uuid) -> Option<Snapshot> {
        lock(&self.observed).get(&id).cloned()
    }

    pub fn set_resources(&self, id: Uuid, samples: Vec<(Uuid, ResourceUsage)>) {
        let mut resources = lock(&self.resources);
        if samples.is_empty() {
            resources.remove(&id);
        } else {
            resources.insert(id, samples);
        }
    }

    /// An instance is gone from the store: drop everything kept about it.
    pub fn forget(&self, id: Uuid) {
        if self.routing.get(id).is_some() {
            self.routing.remove(id);
            self.route_changed();
        }
        lock(&self.observed).remove(&id);
        lock(&self.resources).remove(&id);
    }

    /// Keeps the at-rest instances' states (which have no task to publish them) for the
    /// metrics, and drops instances that no longer exist.
    fn note_listed(&self, list: &[Instance], tasks: &HashMap<Uuid, JoinHandle<()>>) {
        let listed: std::collections::HashSet<Uuid> = list.iter().map(|i| i.id).collect();
        let gone: Vec<Uuid> = lock(&self.observed)
            .keys()
            .filter(|id| !listed.contains(id) && !tasks.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.forget(id);
        }
        for inst in list.iter().filter(|i| !tasks.contains_key(&i.id)) {
            self.publish(inst);
        }
    }
}

/// Whether an instance has anything for the reconciler to do. At-rest instances that
/// are where they were asked to be get no task (and cost no store queries per tick).
pub(crate) fn needs_task(inst: &Instance) -> bool {
    match inst.desired {
        Desired::Deleted => true,
        // A failed instance stays failed until `Control::start`.
        Desired::Running => inst.state != State::Failed,
        Desired::Stopped => !matches!(inst.state, State::Stopped | State::Failed),
        Desired::Sleeping => !inst.state.is_at_rest(),
    }
}

/// The orphan sweep every `sweep_interval` until shutdown.
async fn sweep_every(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.settings.sweep_interval) => {}
            _ = shutdown.changed() => return,
        }
        let stopped = sweep::sweep(&inner).await;
        if stopped > 0 {
            tracing::warn!(stopped, "orphan sweep stopped compute no replica owned");
        }
    }
}

impl Control {
    /// `drivers` are the compute drivers this server offers (looked up by
    /// `Instance::driver`); `weights` turns a catalog entry into a local GGUF.
    pub fn new(
        store: Arc<dyn Store>,
        drivers: Vec<Arc<dyn ComputeDriver>>,
        weights: Arc<dyn WeightsResolver>,
        settings: ControlSettings,
    ) -> Control {
        Control {
            inner: Arc::new(Inner {
                store,
                drivers,
                weights,
                health: HealthChecker::new(settings.health_timeout),
                settings,
                routing: RoutingTable::default(),
                nudges: watch::channel(0).0,
                supervisor: Notify::new(),
                changes: watch::channel(0).0,
                observed: Mutex::default(),
                resources: Mutex::default(),
                counters: Mutex::default(),
            }),
        }
    }

    /// Adopts what survived a restart of the server, then reconciles until `shutdown`
    /// resolves. Replicas keep running after it returns, so the next start adopts them.
    /// For the only process on its store; see `run_elected` for several.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        self.run_elected(Leadership::sole(), shutdown).await
    }

    /// Reconciles while `leadership` says this process leads, until `shutdown`: each
    /// time it becomes leader it adopts the running replicas first (the previous
    /// leader's included), and when it loses the lease it stops its instance tasks
    /// (never the replicas) and waits to lead again.
    pub async fn run_elected(
        self,
        leadership: Leadership,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let mut leading = leadership.subscribe();
        loop {
            // Not leading: route by what the store says until this process leads.
            if leading.borrow().is_none() {
                let became_leader = follow::follow(&self.inner, async {
                    tokio::select! {
                        _ = &mut shutdown => false,
                        led = leading.wait_for(|t| t.is_some()) => led.is_ok(),
                    }
                });
                if !became_leader.await {
                    return;
                }
            }
            let mut lost = leadership.subscribe();
            let mut stopping = false;
            self.reconcile(async {
                tokio::select! {
                    _ = &mut shutdown => stopping = true,
                    _ = lost.wait_for(|t| t.is_none()) => {}
                }
            })
            .await;
            if stopping {
                return;
            }
            tracing::info!("not the leader any more: reconciler paused");
        }
    }

    /// Adopts, then reconciles until `shutdown` resolves.
    async fn reconcile(&self, shutdown: impl Future<Output = ()>) {
        let inner = &self.inner;
        tokio::pin!(shutdown);
        // Instance tasks must not run before adoption has swept orphans: it decides
        // which processes are ours from the replica rows as they are now.
        loop {
            match adopt::adopt(inner).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "adopting replicas failed; retrying"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(inner.settings.tick) => {}
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        // Adoption swept once; later leaks (a task the cloud kept after it was lost, a
        // retried launch's twin) are found by sweeping again on a timer.
        let sweeper = tokio::spawn(sweep_every(inner.clone(), stop_rx.clone()));
        let mut tasks: HashMap<Uuid, JoinHandle<()>> = HashMap::new();
        loop {
            tasks.retain(|_, h| !h.is_finished());
            match inner.store.list_instances(None).await {
                Ok(list) => {
                    for inst in list.iter().filter(|i| needs_task(i)) {
                        tasks.entry(inst.id).or_insert_with(|| {
                            let task = InstanceTask::new(inner.clone(), inst.id);
                            tokio::spawn(task.run(inner.nudges.subscribe(), stop_rx.clone()))
                        });
                    }
                    inner.note_listed(&list, &tasks);
                }
                Err(e) => tracing::warn!(error = %e, "listing instances failed"),
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = inner.supervisor.notified() => {}
                _ = tokio::time::sleep(inner.settings.tick) => {}
            }
        }
        // Let each task finish the step it is in (a launch cut in half is recoverable
        // by adoption, but a finished one is tidier), then abandon the rest.
        let _ = stop_tx.send(true);
        sweeper.abort();
        let wait = inner.settings.stop_grace + Duration::from_secs(5);
        let handles: Vec<JoinHandle<()>> = tasks.into_values().collect();
        let aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::warn!("instance tasks still busy at shutdown; abandoning them");
            aborts.iter().for_each(|a| a.abort());
        }
    }

    /// Reconcile now (the API calls this after it changed `desired`).
    pub fn nudge(&self) {
        self.inner.nudges.send_modify(|g| *g += 1);
        self.inner.supervisor.notify_one();
    }

    /// The table the gateway routes by.
    pub fn routing(&self) -> RoutingTable {
        self.inner.routing.clone()
    }

    /// What every configured driver offers (`GET /api/compute`; validate `start` with it).
    pub fn offers(&self) -> Vec<ComputeOffer> {
        self.inner.drivers.iter().flat_map(|d| d.offers()).collect()
    }

    /// Why `driver`'s replicas could not get `model`'s weights with that driver's
    /// runtime (a file on the Corral host for an ECS task, say); None when they can.
    /// The API refuses such a deploy before it creates anything.
    pub fn cannot_run(&self, driver: &str, model: &CatalogModel) -> Option<String> {
        let driver = self.inner.driver(driver)?;
        driver
            .check_model(&model.id, &model.source, driver.runtime())
            .err()
            .map(|e| match e {
                corral_drivers::Error::Invalid(why) => why,
                other => other.to_string(),
            })
    }

    /// The driver an instance names (for logs).
    pub fn driver(&self, name: &str) -> Option<Arc<dyn ComputeDriver>> {
        self.inner.driver(name)
    }

    pub fn settings(&self) -> &ControlSettings {
        &self.inner.settings
    }

    /// Asks for an instance to run, and nudges the reconciler. A failed instance goes
    /// back to `pending` (its failure reason cleared): this is how a user retries it.
    /// Starting is admitted against the quota and the host (`Error::Store(Refused)`).
    /// Returns the instance as stored afterwards.
    pub async fn start(&self, id: Uuid) -> Result<Instance> {
        let store = &self.inner.store;
        let now = Utc::now();
        let mut inst = self.change_desired(id, Desired::Running).await?;
        if inst.state == State::Failed
            && store
                .transition(
                    id,
                    State::Failed,
                    State::Pending,
                    None,
                    "started again by the user",
                    now,
                )
                .await?
        {
            inst = store.instance(id).await?.ok_or(Error::NotFound)?;
        }
        self.nudge();
        Ok(inst)
    }

    /// Sets what the user asked for (stop, sleep, delete, run) and nudges the
    /// reconciler. Prefer `start` for `Running`: it also retries a failed instance.
    pub async fn set_desired(&self, id: Uuid, desired: Desired) -> Result<Instance> {
        let inst = self.change_desired(id, desired).await?;
        self.nudge();
        Ok(inst)
    }

    /// A user's change of `desired`, as compare-and-sets on the value read: a change
    /// made meanwhile by another request, the wake path or the idle check is read
    /// again and decided on (never overwritten blindly), and nothing leaves `deleted`
    /// (`Error::Deleted`). Asking for the value it has changes nothing.
    async fn change_desired(&self, id: Uuid, to: Desired) -> Result<Instance> {
        let store = &self.inner.store;
        // Each lost race means another writer changed `desired`; they are few (a user,
        // the wake path, the idle check), so this ends after a handful of rounds.
        for _ in 0..16 {
            let inst = store.instance(id).await?.ok_or(Error::NotFound)?;
            if inst.desired == Desired::Deleted && to != Desired::Deleted {
                return Err(Error::Deleted);
            }
            if inst.desired == to {
                return Ok(inst);
            }
            let admission = self.admission(&inst).await?;
            match store
                .set_desired(id, inst.desired, to, &admission, Utc::now())
                .await?
            {
                Some(DesiredChange::Set(inst)) => return Ok(inst),
                Some(DesiredChange::Stale(_)) => continue,
                None => return Err(Error::NotFound),
            }
        }
        Err(Error::Contended)
    }

    /// The limits a change of `inst` is admitted against: the effective quota of its
    /// quota subject and, for the local driver, this host's capacity.
    pub async fn admission(&self, inst: &Instance) -> Result<Admission> {
        Ok(self.inner.admission(inst).await?)
    }

    /// A subject's quota: what an admin set, with the configured defaults for the rest.
    pub async fn effective_quota(&self, subject: &Subject) -> Result<Quota> {
        Ok(self.inner.effective_quota(subject).await?)
    }

    /// For the gateway: the instance's route once it has a ready replica. A sleeping
    /// instance that wakes on request is started first. Waits at most `timeout` (use
    /// `settings().wake_timeout`); fails at once for a stopped, deleted or failed one.
    pub async fn wake(&self, id: Uuid, timeout: Duration) -> Result<Arc<InstanceRoute>> {
        wake::wake(self, id, timeout).await
    }

    /// Last CPU/memory sample of each replica of an instance.
    pub fn replica_resources(&self, instance_id: Uuid) -> Vec<(Uuid, ResourceUsage)> {
        lock(&self.inner.resources)
            .get(&instance_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Counters and gauges for `/metrics`.
    pub fn stats(&self) -> ControlStats {
        let states: Vec<State> = lock(&self.inner.observed)
            .values()
            .map(|s| s.state)
            .collect();
        let ready_replicas = self
            .inner
            .routing
            .all()
            .iter()
            .map(|r| r.replicas.len() as u64)
            .sum();
        lock(&self.inner.counters).snapshot(states.into_iter(), ready_replicas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_only_for_instances_with_work() {
        let inst = |desired, state| {
            let now = Utc::now();
            Instance {
                id: Uuid::now_v7(),
                owner_id: Uuid::now_v7(),
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
                state,
                state_reason: None,
                target_replicas: 1,
                created_at: now,
                updated_at: now,
                last_activity_at: now,
                running_since: None,
                running_seconds: 0,
                team_id: None,
            }
        };
        use Desired as D;
        use State as S;
        assert!(needs_task(&inst(D::Running, S::Pending)));
        assert!(needs_task(&inst(D::Running, S::Ready)));
        assert!(needs_task(&inst(D::Running, S::Sleeping)), "to wake it");
        assert!(
            !needs_task(&inst(D::Running, S::Failed)),
            "failed until started again"
        );
        assert!(needs_task(&inst(D::Sleeping, S::Ready)));
        assert!(!needs_task(&inst(D::Sleeping, S::Sleeping)));
        assert!(!needs_task(&inst(D::Stopped, S::Stopped)));
        assert!(
            needs_task(&inst(D::Stopped, S::Sleeping)),
            "a sleeping one is stopped"
        );
        assert!(needs_task(&inst(D::Deleted, S::Stopped)));
    }
}
