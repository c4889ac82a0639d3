//! One task per instance that has work to do: each step reads the instance and its
//! replicas from the store, compares them with what the driver observes, and moves
//! one or more steps toward `desired`. Only this code moves `state`, always through
//! the store's compare-and-set `transition`, so a second loop or server cannot
//! clobber a transition: the loser stops its step and reads again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use corral_core::{CatalogModel, Desired, Instance, Replica, ReplicaState, State};
use corral_drivers::{ComputeDriver, LaunchSpec, Observed, ReplicaRef, ResourceUsage};
use corral_store::{DesiredChange, ReplicaRun};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::autoscale::{self, Load, ScaleWindow};
use crate::backoff::restart_delay;
use crate::control::Inner;
use crate::idle;
use crate::routing::{InstanceRoute, ReplicaRoute};

type Driver = Arc<dyn ComputeDriver>;

/// Why a step ended early.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// Another writer moved the state first; read again and carry on from there.
    #[error("lost a transition race")]
    Raced,
    /// A bug: the code asked for an edge the lifecycle does not have.
    #[error("transition {0} → {1} is not allowed by the lifecycle")]
    Disallowed(&'static str, &'static str),
    #[error(transparent)]
    Store(#[from] corral_store::Error),
}

type Step<T> = Result<T, StepError>;

/// When to run the next step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    After(Duration),
    /// Nothing left to do: the task ends (the supervisor starts a new one when needed).
    Done,
}

/// How a replica failed, which decides what is left to do with it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    /// The process or task ended by itself.
    Exited,
    /// The driver cannot find it any more.
    Lost,
    /// It is still there but useless (hung, too slow to start): stop it first.
    Stuck,
}

/// In-memory bookkeeping of one replica (lost on restart, which only resets timers).
#[derive(Debug, Clone)]
struct ReplicaMem {
    /// When it was launched or adopted: the start timeout counts from here.
    since: Instant,
    healthy: bool,
    /// Failed health checks in a row since it was last healthy.
    health_failures: u32,
    next_health: Instant,
    next_resources: Instant,
    /// Failed starts or crashes in a row since it was last healthy (drives back-off).
    failures: u32,
    last_failure: Option<String>,
    /// Set while it waits out its back-off before the next launch.
    retry_at: Option<Instant>,
    resources: Option<ResourceUsage>,
}

impl ReplicaMem {
    fn new(now: Instant) -> Self {
        ReplicaMem {
            since: now,
            healthy: false,
            health_failures: 0,
            next_health: now,
            next_resources: now,
            failures: 0,
            last_failure: None,
            retry_at: None,
            resources: None,
        }
    }
}

#[derive(Debug, Default)]
struct Mem {
    weights: Option<PathBuf>,
    model: Option<CatalogModel>,
    /// When the current deploy or wake began (entering `pending`), for the histogram.
    deploy_started: Option<DateTime<Utc>>,
    replicas: HashMap<Uuid, ReplicaMem>,
    scale: ScaleWindow,
    flushed_activity_ms: u64,
    last_flush: Option<Instant>,
    /// The last refusal of the autoscaler recorded on the timeline.
    scale_refused: Option<String>,
}

pub(crate) struct InstanceTask {
    ctl: Arc<Inner>,
    id: Uuid,
    mem: Mem,
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

fn replica_ref(r: &Replica) -> ReplicaRef {
    ReplicaRef {
        instance_id: r.instance_id,
        replica_id: r.id,
        driver_ref: r.driver_ref.clone(),
    }
}

impl InstanceTask {
    pub fn new(ctl: Arc<Inner>, id: Uuid) -> Self {
        InstanceTask {
            ctl,
            id,
            mem: Mem::default(),
        }
    }

    pub async fn run(
        mut self,
        mut nudges: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let next = match self.step().await {
                Ok(next) => next,
                Err(StepError::Raced) => Next::After(self.ctl.settings.fast_tick),
                Err(e) => {
                    tracing::warn!(instance = %self.id, error = %e, "reconcile step failed");
                    Next::After(self.ctl.settings.tick)
                }
            };
            let Next::After(delay) = next else { break };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = nudges.changed() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        // The supervisor may have skipped this instance while the task was ending.
        self.ctl.supervisor.notify_one();
    }

    async fn step(&mut self) -> Step<Next> {
        let ctl = self.ctl.clone();
        let Some(mut inst) = ctl.store.instance(self.id).await? else {
            ctl.forget(self.id);
            return Ok(Next::Done);
        };
        let replicas = ctl.store.list_replicas(self.id).await?;
        self.mem
            .replicas
            .retain(|id, _| replicas.iter().any(|r| r.id == *id));
        let Some(driver) = ctl.driver(&inst.driver) else {
            if inst.desired == Desired::Deleted && replicas.is_empty() {
                ctl.store
                    .delete_instance(self.id, &ctl.admission(&inst).await?)
                    .await?;
                ctl.forget(self.id);
                return Ok(Next::Done);
            }
            if !inst.state.is_at_rest() {
                let reason = format!(
                    "no compute driver {:?} is configured on this server",
                    inst.driver
                );
                self.move_to(
                    &mut inst,
                    State::Failed,
                    Some(&reason),
                    &format!("failed: {reason}"),
                )
                .await?;
            }
            ctl.publish(&inst);
            return Ok(Next::Done);
        };
        let next = match inst.desired {
            Desired::Running => self.drive_running(&mut inst, &driver, replicas).await?,
            Desired::Stopped | Desired::Sleeping => {
                let at_rest = self.wind_down(&mut inst, &driver, &replicas).await?;
                self.rest_when(at_rest)
            }
            Desired::Deleted => {
                if self.wind_down(&mut inst, &driver, &replicas).await? {
                    // What the driver kept (log files) goes with the instance; its runs
                    // stay in the store for cost. A failure only leaves files behind.
                    if let Err(e) = driver.forget_instance(self.id).await {
                        tracing::warn!(instance = %self.id, error = %e, "deleting what the driver kept of the instance failed");
                    }
                    ctl.store
                        .delete_instance(self.id, &ctl.admission(&inst).await?)
                        .await?;
                    tracing::info!(instance = %self.id, "instance deleted");
                    ctl.forget(self.id);
                    return Ok(Next::Done);
                }
                Next::After(self.ctl.settings.tick)
            }
        };
        ctl.publish(&inst);
        Ok(next)
    }

    /// The store's compare-and-set; `Raced` ends the step when another writer won.
    async fn move_to(
        &mut self,
        inst: &mut Instance,
        to: State,
        reason: Option<&str>,
        message: &str,
    ) -> Step<()> {
        if !inst.state.can_move_to(to) {
            return Err(StepError::Disallowed(inst.state.as_str(), to.as_str()));
        }
        let now = Utc::now();
        if !self
            .ctl
            .store
            .transition(inst.id, inst.state, to, reason, message, now)
            .await?
        {
            return Err(StepError::Raced);
        }
        tracing::info!(instance = %inst.id, from = inst.state.as_str(), to = to.as_str(), "{message}");
        inst.state = to;
        inst.state_reason = reason.map(str::to_string);
        inst.updated_at = now;
        self.ctl.publish(inst);
        Ok(())
    }

    async fn event(&self, message: &str) -> Step<()> {
        tracing::info!(instance = %self.id, "{message}");
        self.ctl
            .store
            .append_event(self.id, message, Utc::now())
            .await?;
        Ok(())
    }

    async fn drive_running(
        &mut self,
        inst: &mut Instance,
        driver: &Driver,
        replicas: Vec<Replica>,
    ) -> Step<Next> {
        // A few transitions per step, so a deploy goes pending → starting at once.
        for _ in 0..4 {
            match inst.state {
                State::Stopped | State::Sleeping => {
                    let message = if inst.state == State::Sleeping {
                        "waking up"
                    } else {
                        "starting"
                    };
                    self.move_to(inst, State::Pending, None, message).await?;
                }
                State::Pending => {
                    self.mem.deploy_started = Some(inst.updated_at);
                    self.mem.model = None;
                    self.mem.weights = None;
                    let model = match self.model(inst).await? {
                        Ok(m) => m,
                        Err(reason) => return self.fail(inst, driver, &replicas, &reason).await,
                    };
                    let message = if driver.reads_model_path() {
                        format!("provisioning: getting the weights of {}", model.id)
                    } else {
                        format!(
                            "provisioning: {} fetches {} itself",
                            driver.name(),
                            model.id
                        )
                    };
                    self.move_to(inst, State::Provisioning, None, &message)
                        .await?;
                }
                State::Provisioning => {
                    if driver.reads_model_path()
                        && let Err(reason) = self.weights(inst).await?
                    {
                        return self.fail(inst, driver, &replicas, &reason).await;
                    }
                    let message = format!(
                        "starting {} replica(s) on {}",
                        inst.target_replicas.max(1),
                        driver.name()
                    );
                    self.move_to(inst, State::Starting, None, &message).await?;
                }
                State::Starting | State::Ready | State::Scaling => {
                    return self.converge(inst, driver, replicas).await;
                }
                State::Stopping => {
                    // Asked to run again while stopping: finish stopping, then start over.
                    if !self.wind_down(inst, driver, &replicas).await? {
                        return Ok(Next::After(self.ctl.settings.tick));
                    }
                    return Ok(Next::After(Duration::ZERO));
                }
                State::Failed => {
                    // Failing stops every replica; this only retries one that would not stop.
                    let stopped = self.stop_replicas(driver, &replicas, None).await;
                    return Ok(self.rest_when(stopped));
                }
            }
        }
        Ok(Next::After(Duration::ZERO))
    }

    /// The catalog entry, cached for the deploy; `Err` is a failure reason.
    async fn model(&mut self, inst: &Instance) -> Step<Result<CatalogModel, String>> {
        if let Some(m) = &self.mem.model {
            return Ok(Ok(m.clone()));
        }
        match self.ctl.store.model(&inst.model_id).await? {
            Some(m) => {
                self.mem.model = Some(m.clone());
                Ok(Ok(m))
            }
            None => Ok(Err(format!(
                "model {} is no longer in the catalog",
                inst.model_id
            ))),
        }
    }

    /// The local GGUF, resolved once per deploy; `Err` is a failure reason.
    async fn weights(&mut self, inst: &Instance) -> Step<Result<PathBuf, String>> {
        if let Some(p) = &self.mem.weights {
            return Ok(Ok(p.clone()));
        }
        let model = match self.model(inst).await? {
            Ok(m) => m,
            Err(reason) => return Ok(Err(reason)),
        };
        Ok(match self.ctl.weights.resolve(&model).await {
            Ok(path) => {
                self.mem.weights = Some(path.clone());
                Ok(path)
            }
            Err(e) => Err(e.to_string()),
        })
    }

    /// Stops everything and marks the instance failed with `reason`.
    async fn fail(
        &mut self,
        inst: &mut Instance,
        driver: &Driver,
        replicas: &[Replica],
        reason: &str,
    ) -> Step<Next> {
        self.unroute();
        let stopped = self.stop_replicas(driver, replicas, None).await;
        self.move_to(
            inst,
            State::Failed,
            Some(reason),
            &format!("failed: {reason}"),
        )
        .await?;
        Ok(self.rest_when(stopped))
    }

    /// At rest: the task ends once no replica is left to stop, else it retries.
    fn rest_when(&self, all_stopped: bool) -> Next {
        if all_stopped {
            Next::Done
        } else {
            Next::After(self.ctl.settings.tick)
        }
    }

    fn unroute(&self) -> Option<Arc<InstanceRoute>> {
        let route = self.ctl.routing.get(self.id)?;
        self.ctl.routing.remove(self.id);
        self.ctl.route_changed();
        Some(route)
    }

    /// Toward `stopped`/`sleeping` (or gone, for `deleted`): route removed first so the
    /// gateway stops sending, then every replica stopped. True once at rest with no
    /// replica left.
    async fn wind_down(
        &mut self,
        inst: &mut Instance,
        driver: &Driver,
        replicas: &[Replica],
    ) -> Step<bool> {
        let route = self.unroute();
        if inst.state == State::Sleeping && inst.desired == Desired::Stopped {
            // Nothing runs while asleep: stopping is only a change of state.
            self.move_to(inst, State::Stopped, None, "stopped while sleeping")
                .await?;
        }
        if !inst.state.is_at_rest() && inst.state != State::Stopping {
            let message = match inst.desired {
                Desired::Sleeping => "going to sleep",
                Desired::Deleted => "stopping to delete",
                _ => "stopping",
            };
            self.move_to(inst, State::Stopping, None, message).await?;
        }
        if !self.stop_replicas(driver, replicas, route.as_deref()).await {
            return Ok(false);
        }
        self.ctl.set_resources(self.id, Vec::new());
        if inst.state == State::Stopping {
            let (to, message) = match inst.desired {
                Desired::Sleeping if inst.settings.wake_on_request => (
                    State::Sleeping,
                    "sleeping: no replica running; the next request wakes it",
                ),
                Desired::Sleeping => (State::Sleeping, "sleeping: no replica running"),
                _ => (State::Stopped, "stopped: no replica running"),
            };
            self.move_to(inst, to, None, message).await?;
        }
        Ok(true)
    }

    /// Stops replicas concurrently and deletes their rows; waits (up to the grace) for
    /// requests the gateway still has on them. False if one could not be stopped (its
    /// row stays, so the next step retries).
    async fn stop_replicas(
        &mut self,
        driver: &Driver,
        replicas: &[Replica],
        route: Option<&InstanceRoute>,
    ) -> bool {
        let grace = self.ctl.settings.stop_grace;
        let mut set = tokio::task::JoinSet::new();
        for r in replicas {
            let (driver, store, r) = (driver.clone(), self.ctl.store.clone(), r.clone());
            let draining =
                route.and_then(|rt| rt.replicas.iter().find(|x| x.replica_id == r.id).cloned());
            set.spawn(async move {
                let drained = drain(draining.as_deref(), grace).await;
                if !r.driver_ref.is_empty() {
                    let grace = grace.saturating_sub(drained).max(Duration::from_secs(1));
                    if let Err(e) = driver.stop(&replica_ref(&r), grace).await {
                        tracing::warn!(replica = %r.id, error = %e, "stopping a replica failed");
                        return (r.id, false);
                    }
                }
                // The run ends once the compute is gone (billing stops there), and
                // before the row goes, so a failure here leaves the row to retry with.
                if let Err(e) = store.end_run(r.instance_id, r.id, Utc::now()).await {
                    tracing::warn!(replica = %r.id, error = %e, "closing a stopped replica's run failed");
                    return (r.id, false);
                }
                match store.delete_replica(r.id).await {
                    Ok(_) => (r.id, true),
                    Err(e) => {
                        tracing::warn!(replica = %r.id, error = %e, "deleting a stopped replica's row failed");
                        (r.id, false)
                    }
                }
            });
        }
        let mut all = true;
        while let Some(done) = set.join_next().await {
            match done {
                Ok((id, true)) => {
                    self.mem.replicas.remove(&id);
                }
                Ok((_, false)) => all = false,
                Err(e) => {
                    tracing::warn!(error = %e, "a replica stop task failed");
                    all = false;
                }
            }
        }
        all
    }

    /// Starting, ready, scaling: observe and health-check every replica, restart the
    /// crashed ones, match the replica count to the target, route the healthy ones.
    async fn converge(
        &mut self,
        inst: &mut Instance,
        driver: &Driver,
        replicas: Vec<Replica>,
    ) -> Step<Next> {
        let ctl = self.ctl.clone();
        let s = &ctl.settings;
        let mut live = Vec::with_capacity(replicas.len());
        for r in replicas {
            let r = self.check_replica(inst, driver, r).await?;
            live.push(r);
        }
        let now = Instant::now();
        let healthy = |mem: &Mem, live: &[Replica]| -> Vec<(Uuid, String)> {
            live.iter()
                .filter(|r| mem.replicas.get(&r.id).is_some_and(|m| m.healthy))
                .filter_map(|r| Some((r.id, r.endpoint.clone()?)))
                .collect()
        };
        let mut ready = healthy(&self.mem, &live);

        // Give up on an instance that cannot get a single replica to serve.
        if ready.is_empty() {
            let worst = live
                .iter()
                .filter_map(|r| self.mem.replicas.get(&r.id))
                .max_by_key(|m| m.failures);
            if let Some(m) = worst.filter(|m| m.failures >= s.max_start_attempts) {
                let reason = format!(
                    "a replica failed {} times in a row: {}",
                    m.failures,
                    m.last_failure.as_deref().unwrap_or("no reason recorded")
                );
                return self.fail(inst, driver, &live, &reason).await;
            }
        }

        // Autoscaling decides in `ready` only; in other states this only clamps the
        // target into the (possibly just changed) bounds.
        let route = self.ctl.routing.get(self.id);
        let load = Load {
            in_flight: route.as_ref().map_or(0, |r| r.in_flight()),
            ready: if inst.state == State::Ready {
                ready.len() as u32
            } else {
                0
            },
            target: inst.target_replicas,
            min: inst.settings.min_replicas,
            max: inst.settings.max_replicas,
        };
        if let Some(d) = autoscale::decide(&s.autoscale, &mut self.mem.scale, now.into_std(), load)
        {
            let admission = self.ctl.admission(inst).await?;
            match self
                .ctl
                .store
                .set_target_replicas(self.id, d.target, &admission, Utc::now())
                .await
            {
                Ok(_) => {
                    inst.target_replicas = d.target;
                    self.mem.scale_refused = None;
                    self.event(&d.reason).await?;
                }
                // At the quota or the host's capacity the autoscaler stops where it is,
                // and says why on the timeline once (not on every tick it tries again).
                Err(corral_store::Error::Refused(refusal)) => {
                    let why = format!(
                        "autoscaling stopped at {} replica(s): {refusal}",
                        inst.target_replicas
                    );
                    if self.mem.scale_refused.as_ref() != Some(&why) {
                        self.event(&why).await?;
                        self.mem.scale_refused = Some(why);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let target = inst.target_replicas as usize;

        // Nothing serving any more (crashes, or replicas lost while the server was down):
        // back to starting, so the gateway waits instead of being told it is ready.
        if ready.is_empty() && matches!(inst.state, State::Ready | State::Scaling) {
            if inst.state == State::Scaling {
                // There is no scaling → starting edge; ready → starting says what happened.
                self.move_to(inst, State::Ready, None, "scaling interrupted")
                    .await?;
            }
            self.move_to(
                inst,
                State::Starting,
                None,
                "no replica serving; restarting",
            )
            .await?;
        }
        if live.len() != target && inst.state == State::Ready {
            let message = format!("scaling from {} to {target} replica(s)", live.len());
            self.move_to(inst, State::Scaling, None, &message).await?;
        }
        while live.len() < target {
            let r = self.launch_new(inst, driver).await?;
            live.push(r);
        }
        if live.len() > target {
            // Remove the least useful first: not serving, then the newest.
            let mut order: Vec<usize> = (0..live.len()).collect();
            order.sort_by_key(|&i| {
                let healthy = self
                    .mem
                    .replicas
                    .get(&live[i].id)
                    .is_some_and(|m| m.healthy);
                (healthy, std::cmp::Reverse(live[i].started_at))
            });
            let extra: Vec<Replica> = order[..live.len() - target]
                .iter()
                .map(|&i| live[i].clone())
                .collect();
            live.retain(|r| !extra.iter().any(|x| x.id == r.id));
            ready.retain(|(id, _)| !extra.iter().any(|x| x.id == *id));
            let old_route = self.route(inst, &ready);
            self.stop_replicas(driver, &extra, old_route.as_deref())
                .await;
        }
        self.route(inst, &ready);

        match inst.state {
            State::Starting if !ready.is_empty() => {
                let took = self.mem.deploy_started.take().map(|t| {
                    let secs = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
                    self.ctl
                        .counters
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .deployed(secs);
                    format!(" (deployed in {secs:.1} s)")
                });
                let message = format!(
                    "ready: {} of {target} replica(s) serving{}",
                    ready.len(),
                    took.unwrap_or_default()
                );
                // Becoming ready is activity: the idle timeout counts from when the
                // instance can first serve, not from its creation or wake-up. Else a
                // deploy slower than the timeout is put to sleep the moment it is ready,
                // stopping the replica under the request that is about to use it.
                if let Some(route) = self.ctl.routing.get(self.id) {
                    route.touch();
                }
                self.move_to(inst, State::Ready, None, &message).await?;
            }
            State::Scaling if live.len() == target => {
                // Settled once every replica either serves or has failed at least once
                // (a crashing newcomer is a restart problem, not scaling).
                let settled = live.iter().all(|r| {
                    self.mem
                        .replicas
                        .get(&r.id)
                        .is_some_and(|m| m.healthy || m.failures > 0)
                });
                if settled {
                    let message = format!("scaled to {target} replica(s), {} serving", ready.len());
                    self.move_to(inst, State::Ready, None, &message).await?;
                }
            }
            _ => {}
        }

        self.publish_resources(&live);
        if inst.state == State::Ready
            && let Some(route) = self.ctl.routing.get(self.id)
            && self.idle_check(inst, &route).await?
        {
            return Ok(Next::After(Duration::ZERO));
        }

        // Poll fast while something is on its way up; otherwise the tick, or the end of
        // the nearest back-off if that comes first.
        let settling = inst.state != State::Ready
            || live.iter().any(|r| {
                self.mem
                    .replicas
                    .get(&r.id)
                    .is_some_and(|m| !m.healthy && m.retry_at.is_none())
            });
        let mut delay = if settling { s.fast_tick } else { s.tick };
        let now = Instant::now();
        for m in self.mem.replicas.values() {
            if let Some(at) = m.retry_at {
                delay = delay.min(at.saturating_duration_since(now));
            }
        }
        Ok(Next::After(delay))
    }

    /// Observes one replica and acts on what it sees: health check, crash handling,
    /// relaunch after back-off. Returns the row as it is now.
    async fn check_replica(
        &mut self,
        inst: &Instance,
        driver: &Driver,
        mut r: Replica,
    ) -> Step<Replica> {
        let ctl = self.ctl.clone();
        let s = &ctl.settings;
        let now = Instant::now();
        let m = self
            .mem
            .replicas
            .entry(r.id)
            .or_insert_with(|| ReplicaMem::new(now));
        if let Some(at) = m.retry_at {
            if now >= at {
                self.relaunch(inst, driver, &mut r).await?;
            }
            return Ok(r);
        }
        if r.driver_ref.is_empty() {
            // Its launch never completed (the driver refused it); try again after back-off.
            self.replica_failed(driver, &mut r, "was never launched".into(), Failure::Exited)
                .await?;
            return Ok(r);
        }
        let observed = match driver.observe(&replica_ref(&r)).await {
            Ok(o) => o,
            Err(e) => {
                // A driver hiccup (API throttling, /proc race) is not a crash; look again.
                tracing::warn!(replica = %r.id, error = %e, "observing a replica failed");
                return Ok(r);
            }
        };
        let before = r.clone();
        match observed {
            Observed::Starting => {
                if now.duration_since(m.since) > s.start_timeout {
                    let why = format!("did not start within {} s", s.start_timeout.as_secs());
                    self.replica_failed(driver, &mut r, why, Failure::Stuck)
                        .await?;
                }
            }
            Observed::Running { endpoint } => {
                if r.endpoint.as_deref() != Some(endpoint.as_str()) {
                    r.endpoint = Some(endpoint.clone());
                }
                if now >= m.next_health {
                    let result = self.ctl.health.check(&endpoint).await;
                    self.health_result(driver, &mut r, result).await?;
                }
                self.sample_resources(driver, &r).await;
            }
            Observed::Exited { reason } => {
                self.replica_failed(driver, &mut r, format!("exited: {reason}"), Failure::Exited)
                    .await?;
            }
            Observed::Lost => {
                let why = "was lost: the driver cannot find it".to_string();
                self.replica_failed(driver, &mut r, why, Failure::Lost)
                    .await?;
            }
        }
        if r != before {
            r.updated_at = Utc::now();
            self.ctl.store.update_replica(&r).await?;
        }
        Ok(r)
    }

    async fn health_result(
        &mut self,
        driver: &Driver,
        r: &mut Replica,
        result: Result<(), String>,
    ) -> Step<()> {
        let ctl = self.ctl.clone();
        let s = &ctl.settings;
        let now = Instant::now();
        let m = self
            .mem
            .replicas
            .get_mut(&r.id)
            .expect("entry made by check_replica");
        match result {
            Ok(()) => {
                let recovered = !m.healthy && (m.failures > 0 || m.health_failures > 0);
                m.healthy = true;
                m.failures = 0;
                m.health_failures = 0;
                m.last_failure = None;
                m.next_health = now + s.health_interval;
                r.state = ReplicaState::Ready;
                if recovered {
                    self.event(&format!("replica {} is serving again", short(r.id)))
                        .await?;
                }
            }
            // Once healthy, a run of failed checks means it hangs: replace it.
            Err(why) if m.healthy || m.health_failures > 0 => {
                m.healthy = false;
                m.health_failures += 1;
                m.next_health = now + s.fast_tick.max(Duration::from_millis(500));
                r.state = ReplicaState::Unhealthy;
                if m.health_failures >= s.unhealthy_after {
                    let why = format!(
                        "failed {} health checks in a row ({why})",
                        m.health_failures
                    );
                    self.replica_failed(driver, r, why, Failure::Stuck).await?;
                }
            }
            // Never healthy yet: still loading the model, unless it takes too long.
            Err(why) => {
                m.next_health = now;
                if now.duration_since(m.since) > s.start_timeout {
                    let why = format!(
                        "did not answer within {} s ({why})",
                        s.start_timeout.as_secs()
                    );
                    self.replica_failed(driver, r, why, Failure::Stuck).await?;
                }
            }
        }
        Ok(())
    }

    /// Records a crash or failed start and schedules the relaunch after back-off.
    async fn replica_failed(
        &mut self,
        driver: &Driver,
        r: &mut Replica,
        why: String,
        how: Failure,
    ) -> Step<()> {
        let ctl = self.ctl.clone();
        let s = &ctl.settings;
        // A lost replica may still run (and bill) where the driver cannot see it: an ECS
        // task DescribeTasks stopped listing. Stop it now rather than after the back-off;
        // `relaunch` stops it again (stops are idempotent) before it is forgotten.
        if matches!(how, Failure::Stuck | Failure::Lost)
            && !r.driver_ref.is_empty()
            && let Err(e) = driver.stop(&replica_ref(r), s.stop_grace).await
        {
            tracing::warn!(replica = %r.id, error = %e, "stopping a failed replica failed");
        }
        // The process or task is done with (exited, lost, or stopped just above): its
        // run ends now. A relaunch after back-off starts a new run.
        self.ctl
            .store
            .end_run(r.instance_id, r.id, Utc::now())
            .await?;
        let m = self
            .mem
            .replicas
            .get_mut(&r.id)
            .expect("entry made by check_replica");
        m.healthy = false;
        m.health_failures = 0;
        m.failures += 1;
        m.resources = None;
        let delay = restart_delay(m.failures, s.backoff_base, s.backoff_max);
        m.retry_at = Some(Instant::now() + delay);
        m.last_failure = Some(why.clone());
        let failures = m.failures;
        r.state = if how == Failure::Lost {
            ReplicaState::Lost
        } else {
            ReplicaState::Exited
        };
        self.event(&format!(
            "replica {} {why}; restarting in {} s (failure {failures} in a row)",
            short(r.id),
            delay.as_secs_f64()
        ))
        .await
    }

    /// A new replica: the row first, so a crash between launch and bookkeeping leaves a
    /// row that adoption sees (and the orphan sweep stops the process it cannot name).
    async fn launch_new(&mut self, inst: &Instance, driver: &Driver) -> Step<Replica> {
        let now = Utc::now();
        let mut r = Replica {
            id: Uuid::now_v7(),
            instance_id: inst.id,
            driver_ref: String::new(),
            endpoint: None,
            state: ReplicaState::Starting,
            restarts: 0,
            started_at: now,
            updated_at: now,
        };
        self.ctl.store.create_replica(&r).await?;
        self.mem
            .replicas
            .insert(r.id, ReplicaMem::new(Instant::now()));
        self.launch(inst, driver, &mut r).await?;
        Ok(r)
    }

    async fn relaunch(&mut self, inst: &Instance, driver: &Driver, r: &mut Replica) -> Step<()> {
        // Its old task or process is forgotten below: make sure it is gone first, or it
        // would run on unbilled beside its replacement. Until the stop succeeds the
        // relaunch waits another back-off.
        if !r.driver_ref.is_empty()
            && let Err(e) = driver
                .stop(&replica_ref(r), self.ctl.settings.stop_grace)
                .await
        {
            tracing::warn!(replica = %r.id, error = %e, "stopping a failed replica before its relaunch failed");
            let s = &self.ctl.settings;
            let m = self
                .mem
                .replicas
                .get_mut(&r.id)
                .expect("entry made by check_replica");
            m.retry_at =
                Some(Instant::now() + restart_delay(m.failures, s.backoff_base, s.backoff_max));
            return Ok(());
        }
        let now = Utc::now();
        r.restarts += 1;
        r.driver_ref.clear();
        r.endpoint = None;
        r.state = ReplicaState::Starting;
        r.started_at = now;
        r.updated_at = now;
        // Cleared in the store before the launch, for the same reason as `launch_new`.
        self.ctl.store.update_replica(r).await?;
        let m = self
            .mem
            .replicas
            .get_mut(&r.id)
            .expect("entry made by check_replica");
        let failures = m.failures;
        let last_failure = m.last_failure.take();
        *m = ReplicaMem::new(Instant::now());
        m.failures = failures;
        m.last_failure = last_failure;
        self.ctl
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restarts += 1;
        self.launch(inst, driver, r).await
    }

    async fn launch(&mut self, inst: &Instance, driver: &Driver, r: &mut Replica) -> Step<()> {
        let spec = match self.launch_spec(inst, driver, r).await? {
            Ok(spec) => spec,
            Err(why) => return self.replica_failed(driver, r, why, Failure::Exited).await,
        };
        match driver.launch(&spec).await {
            Ok(launched) => {
                // The run first: compute that is not billed or whose logs cannot be
                // found again is, like untracked compute, worse than a failed launch.
                let run = ReplicaRun {
                    id: Uuid::now_v7(),
                    replica_id: r.id,
                    instance_id: inst.id,
                    owner_id: inst.owner_id,
                    model_id: inst.model_id.clone(),
                    driver: driver.name().to_string(),
                    driver_ref: launched.driver_ref.clone(),
                    compute: inst.compute.clone(),
                    started_at: r.started_at,
                    ended_at: None,
                };
                if let Err(e) = self.ctl.store.start_run(&run).await {
                    let _ = driver.stop(&launched, self.ctl.settings.stop_grace).await;
                    return Err(e.into());
                }
                r.driver_ref = launched.driver_ref.clone();
                r.updated_at = Utc::now();
                if let Err(e) = self.ctl.store.update_replica(r).await {
                    // Untracked compute is worse than a failed launch.
                    let _ = driver.stop(&launched, self.ctl.settings.stop_grace).await;
                    let _ = self.ctl.store.end_run(inst.id, r.id, Utc::now()).await;
                    return Err(e.into());
                }
                tracing::info!(instance = %inst.id, replica = %r.id, driver_ref = %r.driver_ref, "replica launched");
                Ok(())
            }
            Err(e) => {
                let why = format!("could not be launched: {e}");
                self.replica_failed(driver, r, why, Failure::Exited).await
            }
        }
    }

    async fn launch_spec(
        &mut self,
        inst: &Instance,
        driver: &Driver,
        r: &Replica,
    ) -> Step<Result<LaunchSpec, String>> {
        let model = match self.model(inst).await? {
            Ok(m) => m,
            Err(reason) => return Ok(Err(reason)),
        };
        let path = if driver.reads_model_path() {
            match self.weights(inst).await? {
                Ok(p) => Some(p),
                Err(reason) => return Ok(Err(reason)),
            }
        } else {
            None
        };
        let s = &self.ctl.settings;
        Ok(Ok(LaunchSpec {
            instance_id: inst.id,
            replica_id: r.id,
            launch: r.restarts,
            model_id: model.id,
            source: model.source,
            model_path: path,
            compute: inst.compute.clone(),
            runtime: driver.runtime(),
            parallel: s.parallel,
            context: s.context,
        }))
    }

    /// Points the gateway at exactly `ready`; returns the previous route (for draining).
    fn route(&self, inst: &Instance, ready: &[(Uuid, String)]) -> Option<Arc<InstanceRoute>> {
        let current = self.ctl.routing.get(self.id);
        if self.ctl.routing.routes_to(self.id, ready) {
            return current;
        }
        if ready.is_empty() {
            self.ctl.routing.remove(self.id);
        } else {
            self.ctl
                .routing
                .set(self.id, inst.owner_id, inst.team_id, &inst.model_id, ready);
        }
        self.ctl.route_changed();
        current
    }

    async fn sample_resources(&mut self, driver: &Driver, r: &Replica) {
        let interval = self.ctl.settings.resource_interval;
        let Some(m) = self.mem.replicas.get_mut(&r.id) else {
            return;
        };
        if Instant::now() < m.next_resources {
            return;
        }
        m.next_resources = Instant::now() + interval;
        match driver.resources(&replica_ref(r)).await {
            Ok(sample) => m.resources = sample,
            Err(e) => tracing::debug!(replica = %r.id, error = %e, "sampling resources failed"),
        }
    }

    fn publish_resources(&self, live: &[Replica]) {
        let samples = live
            .iter()
            .filter_map(|r| Some((r.id, self.mem.replicas.get(&r.id)?.resources?)))
            .collect();
        self.ctl.set_resources(self.id, samples);
    }

    /// Writes the gateway's activity time to the store (at most every
    /// `activity_flush`), then stops or sleeps the instance if it has been idle too
    /// long. True when it asked for that.
    async fn idle_check(&mut self, inst: &mut Instance, route: &InstanceRoute) -> Step<bool> {
        // In-flight first: the gateway stamps a request's end before it stops counting,
        // so when none is in flight here, `seen_ms` read after has every finished one.
        let in_flight = route.in_flight();
        let seen_ms = route.last_activity_ms();
        let flush_due = self
            .mem
            .last_flush
            .is_none_or(|t| t.elapsed() >= self.ctl.settings.activity_flush);
        if seen_ms > self.mem.flushed_activity_ms
            && flush_due
            && let Some(at) = i64::try_from(seen_ms)
                .ok()
                .and_then(DateTime::from_timestamp_millis)
        {
            self.ctl.store.touch_activity(self.id, at).await?;
            self.mem.flushed_activity_ms = seen_ms;
            self.mem.last_flush = Some(Instant::now());
        }
        let last = idle::last_activity(inst.last_activity_at, seen_ms);
        let now = Utc::now();
        let Some(desired) = idle::idle_action(&inst.settings, last, in_flight, now) else {
            return Ok(false);
        };
        // A compare-and-set from `running`: a delete, stop or wake that landed since
        // this step read the instance wins, and the idle check gives way.
        let admission = self.ctl.admission(inst).await?;
        let updated = match self
            .ctl
            .store
            .set_desired(self.id, Desired::Running, desired, &admission, now)
            .await?
        {
            Some(DesiredChange::Set(updated)) => updated,
            Some(DesiredChange::Stale(current)) => {
                inst.desired = current.desired;
                return Ok(false);
            }
            None => return Ok(false),
        };
        let idle_secs = (now - last).num_seconds();
        let message = match desired {
            Desired::Sleeping => {
                format!("idle for {idle_secs} s: going to sleep until the next request")
            }
            _ => format!("idle for {idle_secs} s: stopping"),
        };
        self.event(&message).await?;
        self.ctl
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .idle_shutdowns += 1;
        inst.desired = updated.desired;
        Ok(true)
    }
}

/// Waits until the gateway has no request on a replica being removed, at most `grace`;
/// returns how long it waited.
async fn drain(replica: Option<&ReplicaRoute>, grace: Duration) -> Duration {
    let start = Instant::now();
    let Some(replica) = replica else {
        return Duration::ZERO;
    };
    while replica.in_flight() > 0 && start.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}
