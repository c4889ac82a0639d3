//! The orphan sweep: compute that a driver runs for Corral but no replica row owns (see
//! `corral_drivers::is_owned`) is stopped. Such compute runs and bills while nothing
//! routes to it or meters it: a crash between launch and bookkeeping, a lost replica
//! relaunched, a launch retried by someone else. It runs after adoption and then every
//! `sweep_interval`, not only at start-up, because the cloud side can leak while the
//! server runs.

use chrono::Utc;
use corral_drivers::{ReplicaRef, is_owned};
use uuid::Uuid;

use crate::control::Inner;

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

/// Every replica the store knows, as the refs drivers compare what they run with.
async fn known(ctl: &Inner) -> corral_store::Result<Vec<ReplicaRef>> {
    Ok(ctl
        .store
        .all_replicas()
        .await?
        .into_iter()
        .map(|r| ReplicaRef {
            instance_id: r.instance_id,
            replica_id: r.id,
            driver_ref: r.driver_ref,
        })
        .collect())
}

/// What a driver listed as orphans and the store, read again after the listing, still
/// does not own: a launch that completed between the first read and the listing is
/// owned in the second (its row is written before and after its launch), so it is
/// never taken for an orphan.
pub(crate) fn confirmed(
    candidates: Vec<ReplicaRef>,
    known_after: &[ReplicaRef],
) -> Vec<ReplicaRef> {
    candidates
        .into_iter()
        .filter(|c| !is_owned(known_after, c))
        .collect()
}

/// One sweep over every driver; returns how many orphans were stopped. Failures are
/// logged and the next sweep tries again.
pub(crate) async fn sweep(ctl: &Inner) -> usize {
    let before = match known(ctl).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "orphan sweep: listing replicas failed");
            return 0;
        }
    };
    let mut stopped = 0;
    for driver in &ctl.drivers {
        let candidates = match driver.orphans(&before).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(driver = driver.name(), error = %e, "listing orphaned replicas failed");
                continue;
            }
        };
        if candidates.is_empty() {
            continue;
        }
        let after = match known(ctl).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "orphan sweep: listing replicas failed");
                return stopped;
            }
        };
        for orphan in confirmed(candidates, &after) {
            tracing::warn!(driver = driver.name(), replica = %orphan.replica_id, driver_ref = %orphan.driver_ref, "stopping an orphaned replica");
            if let Err(e) = driver.stop(&orphan, ctl.settings.stop_grace).await {
                tracing::warn!(replica = %orphan.replica_id, error = %e, "stopping an orphaned replica failed");
                continue;
            }
            stopped += 1;
            let message = format!(
                "stopped replica {} ({}): it was running without a record in the store",
                short(orphan.replica_id),
                orphan.driver_ref
            );
            // The instance may be gone; the note is only for its timeline.
            let _ = ctl
                .store
                .append_event(orphan.instance_id, &message, Utc::now())
                .await;
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(replica_id: Uuid, driver_ref: &str) -> ReplicaRef {
        ReplicaRef {
            instance_id: Uuid::nil(),
            replica_id,
            driver_ref: driver_ref.into(),
        }
    }

    #[test]
    fn a_launch_recorded_after_the_listing_is_not_an_orphan() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // Listed before a's row named its task, and a twin of b.
        let candidates = vec![r(a, "task/a"), r(b, "task/b-twin")];
        let after = [r(a, "task/a"), r(b, "task/b")];
        assert_eq!(confirmed(candidates, &after), [r(b, "task/b-twin")]);
    }
}
