//! Adoption after a restart of `corral serve`: replicas that are still running are kept
//! (the instance tasks health-check and route them, no relaunch); lost ones are
//! stopped (a lost one may run where the driver cannot see it), recorded and dropped;
//! processes the store does not know are stopped by the orphan sweep.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use corral_core::Instance;
use corral_drivers::{Observed, ReplicaRef};
use uuid::Uuid;

use crate::control::Inner;
use crate::sweep;

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

/// Runs once before any instance task. Fails only when the store cannot list the
/// replicas (the caller retries); every other problem is logged and adoption goes on.
pub(crate) async fn adopt(ctl: &Inner) -> corral_store::Result<()> {
    let rows = ctl.store.all_replicas().await?;
    let mut instances: HashMap<Uuid, Option<Instance>> = HashMap::new();
    let (mut adopted, mut lost) = (0usize, 0usize);
    let with_rows: HashSet<Uuid> = rows.iter().map(|r| r.id).collect();
    close_runs_without_rows(ctl, &with_rows).await?;
    for row in rows {
        let inst = match instances.get(&row.instance_id) {
            Some(i) => i.clone(),
            None => {
                let i = ctl.store.instance(row.instance_id).await?;
                instances.insert(row.instance_id, i.clone());
                i
            }
        };
        let Some(inst) = inst else { continue };
        let Some(driver) = ctl.driver(&inst.driver) else {
            tracing::warn!(instance = %inst.id, driver = %inst.driver, "replica of a driver this server does not have; leaving it alone");
            continue;
        };
        let event = |message: String| {
            let store = ctl.store.clone();
            async move {
                tracing::info!(instance = %row.instance_id, "{message}");
                if let Err(e) = store
                    .append_event(row.instance_id, &message, Utc::now())
                    .await
                {
                    tracing::warn!(instance = %row.instance_id, error = %e, "recording an adoption event failed");
                }
            }
        };
        if row.driver_ref.is_empty() {
            // The server stopped between creating the row and recording the launch: a
            // process, if it started, is unknown here and the orphan sweep stops it.
            ctl.store
                .end_run(row.instance_id, row.id, Utc::now())
                .await?;
            ctl.store.delete_replica(row.id).await?;
            event(format!(
                "replica {} was being launched when the server stopped; it will be replaced",
                short(row.id)
            ))
            .await;
            continue;
        }
        let rref = ReplicaRef {
            instance_id: row.instance_id,
            replica_id: row.id,
            driver_ref: row.driver_ref.clone(),
        };
        let why = match driver.observe(&rref).await {
            Ok(Observed::Running { endpoint }) => {
                adopted += 1;
                event(format!(
                    "adopted replica {} still running at {endpoint}",
                    short(row.id)
                ))
                .await;
                continue;
            }
            Ok(Observed::Starting) => {
                adopted += 1;
                event(format!(
                    "adopted replica {} (still starting)",
                    short(row.id)
                ))
                .await;
                continue;
            }
            Ok(Observed::Exited { reason }) => reason,
            Ok(Observed::Lost) => "not found".into(),
            Err(e) => {
                // Not seen is not gone: the instance task observes it again and decides.
                tracing::warn!(replica = %row.id, error = %e, "observing a replica to adopt failed; keeping it");
                continue;
            }
        };
        // Forgetting a replica that may still run would leave it billing: stop it first
        // (stops are idempotent). If that fails the row stays, and the instance task
        // retries the stop before it relaunches.
        if let Err(e) = driver.stop(&rref, ctl.settings.stop_grace).await {
            tracing::warn!(replica = %row.id, error = %e, "stopping a lost replica failed; keeping it");
            continue;
        }
        // Dropping the row makes the instance task launch a replacement if the instance
        // should run, or simply finish stopping it.
        // When it ended while the server was down is unknown: its run is closed now,
        // which bills the downtime (an overestimate, never a lost charge).
        ctl.store
            .end_run(row.instance_id, row.id, Utc::now())
            .await?;
        ctl.store.delete_replica(row.id).await?;
        lost += 1;
        event(format!(
            "replica {} lost while the server was down ({why})",
            short(row.id)
        ))
        .await;
    }
    let orphans = sweep::sweep(ctl).await;
    tracing::info!(adopted, lost, orphans, "adoption done");
    Ok(())
}

/// Closes open runs whose replica has no row any more. The reconciler closes a run
/// before it deletes the row, so only a store written by something else (an older
/// version, a manual fix) can hold such a run; but an open run is billed forever, so
/// adoption makes sure none is left.
async fn close_runs_without_rows(
    ctl: &Inner,
    with_rows: &HashSet<Uuid>,
) -> corral_store::Result<()> {
    let now = Utc::now();
    // Open runs overlap every window after their start, so this lists all of them
    // (and runs that ended in the future, which the filter drops).
    for run in ctl.store.runs_overlapping(None, Some(now), None).await? {
        if run.ended_at.is_none() && !with_rows.contains(&run.replica_id) {
            tracing::warn!(instance = %run.instance_id, replica = %run.replica_id, "closing the run of a replica that has no row");
            ctl.store
                .end_run(run.instance_id, run.replica_id, now)
                .await?;
        }
    }
    Ok(())
}
