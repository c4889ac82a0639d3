//! Leader election for several `corral serve` processes on one store: the process that
//! holds the store's `"leader"` lease runs the reconciler (launches, stops, adoption,
//! autoscaling, idle checks); the others serve the API, the UI and the gateway only.
//!
//! The lease is taken and renewed with one conditional write (`Store::acquire_lease`)
//! every `renew_every`, for `ttl`. A leader that has not renewed within `ttl` of its
//! last successful renewal (a pause, a partition, a slow store) steps down on its own
//! before the store would let anyone else take over, and a graceful stop releases the
//! lease so another process takes over at once. On SQLite the server is the only
//! process (`corral serve` holds a lock on the file), so it leads without a lease.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use corral_core::{NewAuditEntry, Outcome};
use corral_store::Store;
use tokio::sync::watch;
use tokio::time::Instant;

/// The lease the control-plane leader holds.
pub const LEADER_LEASE: &str = "leader";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a taken or renewed lease lasts.
    pub ttl: Duration,
    /// How often the leader renews it and the others try to take it.
    pub renew_every: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(3),
        }
    }
}

/// Whether a leader whose last successful renewal was sent at `renewed_at` may still
/// act at `now`: the store counts the lease from the time it wrote it, which is after
/// the renewal was sent, so measuring from the send errs on the safe side.
pub fn still_leads(renewed_at: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(renewed_at) < ttl
}

/// This process's view of the election. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    /// None on SQLite: the only process always leads.
    store: Option<Arc<dyn Store>>,
    holder: String,
    settings: LeaseSettings,
    /// The fencing token while this process leads.
    leading: watch::Sender<Option<i64>>,
    /// Who held the lease when last looked at (this process or another).
    leader: std::sync::Mutex<Option<String>>,
    renewals: AtomicU64,
    failures: AtomicU64,
}

impl Leadership {
    /// A contender for the store's leader lease (PostgreSQL, DynamoDB).
    pub fn elected(store: Arc<dyn Store>, settings: LeaseSettings) -> Leadership {
        Leadership::build(Some(store), settings, None)
    }

    /// The only process on its store (SQLite): leads from the start, with no lease.
    pub fn sole() -> Leadership {
        Leadership::build(None, LeaseSettings::default(), Some(0))
    }

    fn build(
        store: Option<Arc<dyn Store>>,
        settings: LeaseSettings,
        token: Option<i64>,
    ) -> Leadership {
        let holder = uuid::Uuid::now_v7().to_string();
        Leadership {
            inner: Arc::new(Inner {
                leader: std::sync::Mutex::new(token.map(|_| holder.clone())),
                store,
                holder,
                settings,
                leading: watch::channel(token).0,
                renewals: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// This process's id in the lease.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    pub fn is_leader(&self) -> bool {
        self.inner.leading.borrow().is_some()
    }

    /// The id of the process that leads, as last seen.
    pub fn leader(&self) -> Option<String> {
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows the fencing token: `Some` while this process leads.
    pub fn subscribe(&self) -> watch::Receiver<Option<i64>> {
        self.inner.leading.subscribe()
    }

    /// Successful renewals (or takeovers) and failed attempts, for `/metrics`.
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// Takes, renews and watches the lease until `stop` resolves, then releases it if
    /// held. Stop it only after the reconciler has stopped, so the next leader never
    /// overlaps with a step this one is finishing.
    pub async fn run(self, stop: impl Future<Output = ()> + Send) {
        let Some(store) = self.inner.store.clone() else {
            return stop.await;
        };
        tokio::pin!(stop);
        let settings = self.inner.settings;
        let mut renewed_at: Option<Instant> = None;
        loop {
            let sent = Instant::now();
            let now = Utc::now();
            let expires = now + chrono::Duration::from_std(settings.ttl).unwrap_or_default();
            match store
                .acquire_lease(LEADER_LEASE, &self.inner.holder, now, expires)
                .await
            {
                Ok(Some(lease)) => {
                    self.inner.renewals.fetch_add(1, Ordering::Relaxed);
                    renewed_at = Some(sent);
                    self.set(Some(lease.token), Some(lease.holder), &*store)
                        .await;
                }
                Ok(None) => {
                    renewed_at = None;
                    let current = store.lease(LEADER_LEASE).await.ok().flatten();
                    self.set(None, current.map(|l| l.holder), &*store).await;
                }
                Err(e) => {
                    self.inner.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "renewing the leader lease failed");
                }
            }
            // Wake up in time to step down if renewals keep failing.
            let mut wait = settings.renew_every;
            if let Some(at) = renewed_at {
                if !still_leads(at, Instant::now(), settings.ttl) {
                    renewed_at = None;
                    let leader = self.leader();
                    self.set(None, leader, &*store).await;
                } else {
                    wait = wait.min(settings.ttl.saturating_sub(at.elapsed()));
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let token = *self.inner.leading.borrow();
        if let Some(token) = token {
            self.inner.leading.send_replace(None);
            match store
                .release_lease(LEADER_LEASE, &self.inner.holder, token, Utc::now())
                .await
            {
                Ok(_) => tracing::info!("released the leader lease"),
                Err(e) => tracing::warn!(error = %e, "releasing the leader lease failed"),
            }
        }
    }

    /// Publishes a new state; a change of who leads (here) is logged and audited.
    async fn set(&self, token: Option<i64>, leader: Option<String>, store: &dyn Store) {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
        let was = self.inner.leading.send_replace(token);
        let action = match (was.is_some(), token.is_some()) {
            (false, true) => "control.leader.acquired",
            (true, false) => "control.leader.lost",
            _ => return,
        };
        tracing::info!(holder = %self.inner.holder, token = ?token.or(was), "{action}");
        let entry = NewAuditEntry {
            actor_id: None,
            actor_email: None,
            action: action.to_string(),
            target: Some(self.inner.holder.clone()),
            ip: None,
            outcome: Outcome::Success,
            detail: token.or(was).map(|t| format!("fencing token {t}")),
            at: Utc::now(),
        };
        if let Err(e) = store.append_audit(&entry).await {
            tracing::warn!(error = %e, "auditing a leader change failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_steps_down_once_a_ttl_passed_since_its_last_renewal() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert!(still_leads(t0, t0, ttl));
        assert!(still_leads(t0, t0 + Duration::from_millis(9_999), ttl));
        assert!(!still_leads(t0, t0 + ttl, ttl));
        assert!(
            !still_leads(t0, t0 + Duration::from_secs(60), ttl),
            "paused"
        );
    }
}
