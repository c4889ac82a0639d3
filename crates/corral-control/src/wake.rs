//! Wake on request: the gateway's call for an instance that has no ready replica.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use corral_core::{Desired, State};
use corral_store::DesiredChange;
use tokio::time::Instant;
use uuid::Uuid;

use crate::control::Control;
use crate::error::{Error, Result};
use crate::routing::InstanceRoute;

fn routable(control: &Control, id: Uuid) -> Option<Arc<InstanceRoute>> {
    control
        .inner
        .routing
        .get(id)
        .filter(|r| !r.replicas.is_empty())
}

pub(crate) async fn wake(
    control: &Control,
    id: Uuid,
    timeout: Duration,
) -> Result<Arc<InstanceRoute>> {
    let inner = &control.inner;
    // Subscribe before looking, so a route published in between is not missed.
    let mut changes = inner.changes.subscribe();
    if let Some(route) = routable(control, id) {
        return Ok(route);
    }
    let since = *changes.borrow_and_update();
    let mut inst = inner.store.instance(id).await?.ok_or(Error::NotFound)?;
    // Waking is a compare-and-set from `sleeping`: a delete or stop that lands first
    // wins, and is read again here instead of being overwritten.
    loop {
        match inst.desired {
            Desired::Deleted => return Err(Error::Deleted),
            Desired::Stopped => return Err(Error::Stopped),
            Desired::Sleeping if !inst.settings.wake_on_request => {
                return Err(Error::WakeDisabled);
            }
            _ => {}
        }
        if inst.state == State::Failed {
            return Err(failed(inst.state_reason));
        }
        if inst.desired != Desired::Sleeping {
            break;
        }
        let admission = inner.admission(&inst).await?;
        match inner
            .store
            .set_desired(
                id,
                Desired::Sleeping,
                Desired::Running,
                &admission,
                Utc::now(),
            )
            .await?
            .ok_or(Error::NotFound)?
        {
            DesiredChange::Stale(now) => {
                inst = now;
                continue;
            }
            DesiredChange::Set(_) => {}
        }
        // The timeline should say why a sleeping instance started; a failure to write
        // the note must not fail the request.
        if let Err(e) = inner
            .store
            .append_event(id, "woken by a request", Utc::now())
            .await
        {
            tracing::warn!(instance = %id, error = %e, "recording the wake event failed");
        }
        inner
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wakes += 1;
        tracing::info!(instance = %id, "waking a sleeping instance for a request");
        break;
    }
    control.nudge();
    let deadline = Instant::now() + timeout;
    let mut confirmed_seq = since;
    loop {
        if let Some(route) = routable(control, id) {
            return Ok(route);
        }
        if let Some(seen) = inner.snapshot(id).filter(|s| s.seq > since) {
            if seen.state == State::Failed {
                return Err(failed(seen.reason));
            }
            if matches!(seen.desired, Desired::Stopped | Desired::Deleted)
                && seen.seq > confirmed_seq
            {
                // The task may have read `desired` before we set it; the store decides
                // (once per observation, not on every change of other instances).
                confirmed_seq = seen.seq;
                let now = inner.store.instance(id).await?.ok_or(Error::NotFound)?;
                match now.desired {
                    Desired::Stopped => return Err(Error::Stopped),
                    Desired::Deleted => return Err(Error::Deleted),
                    _ => {}
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The controller is gone (server shutting down): nothing will wake it.
                    return Err(Error::Timeout(timeout));
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Err(Error::Timeout(timeout)),
        }
    }
}

fn failed(reason: Option<String>) -> Error {
    Error::Failed(reason.unwrap_or_else(|| "no reason recorded".into()))
}
