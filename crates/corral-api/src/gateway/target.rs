//! Which instance serves a request: by instance id (`/i/{id}/...`) or by the body's
//! `model` (the caller's instance of it). The fast path is one read of the in-memory
//! routing table; the store is asked only when the instance has no ready replica, to
//! wake it (sleeping), wait for it (starting) or say why it cannot answer (stopped,
//! failed).
//!
//! Ownership: anyone but an admin gets 404 for an instance they do not own, the same
//! answer as for one that does not exist. Routing by model only ever picks the caller's
//! own instances, admins included (they reach others' instances by id).

use axum::http::StatusCode;
use corral_control::{Error as ControlError, InstanceRoute};
use corral_core::{Desired, Instance, State};
use std::sync::Arc;
use uuid::Uuid;

use super::error::GatewayError;
use crate::auth::Principal;
use crate::state::AppState;

/// The route of instance `id`, if the caller may use it, once it has a ready replica.
pub async fn by_id(
    state: &AppState,
    caller: &Principal,
    id: Uuid,
) -> Result<Arc<InstanceRoute>, GatewayError> {
    let admin = caller.user.role.is_admin();
    if let Some(route) = state.routing.get(id) {
        if !admin && route.owner_id != caller.user.id {
            return Err(GatewayError::instance_not_found());
        }
        if !route.replicas.is_empty() {
            return Ok(route);
        }
    }
    let inst = if admin {
        state.store.instance(id).await
    } else {
        state.store.instance_for_owner(id, caller.user.id).await
    }
    .map_err(GatewayError::internal)?
    .ok_or_else(GatewayError::instance_not_found)?;
    wake(state, &inst).await
}

/// The caller's instance of `model` with a ready replica, waking or waiting for one that
/// is on its way. `model` may omit the `:latest` tag, as with Ollama.
pub async fn by_model(
    state: &AppState,
    caller: &Principal,
    model: &str,
) -> Result<Arc<InstanceRoute>, GatewayError> {
    let owner = caller.user.id;
    let ready = state
        .routing
        .for_owner_model(owner, model)
        .or_else(|| alias(model).and_then(|other| state.routing.for_owner_model(owner, &other)));
    if let Some(route) = ready {
        return Ok(route);
    }
    let mut candidates: Vec<Instance> = state
        .store
        .list_instances(Some(owner))
        .await
        .map_err(GatewayError::internal)?
        .into_iter()
        .filter(|i| same_model(&i.model_id, model) && i.desired != Desired::Deleted)
        .collect();
    // The one most likely to answer soon: coming up, then waking, then the rest (whose
    // error says what to do).
    candidates.sort_by_key(|i| match (i.desired, i.state) {
        (Desired::Running, s) if s != State::Failed => 0,
        (Desired::Sleeping, _) if i.settings.wake_on_request => 1,
        _ => 2,
    });
    let inst = candidates
        .first()
        .ok_or_else(|| GatewayError::model_not_found(model))?;
    wake(state, inst).await
}

/// Waits (bounded) for an instance that is starting, or wakes a sleeping one.
async fn wake(state: &AppState, inst: &Instance) -> Result<Arc<InstanceRoute>, GatewayError> {
    let timeout = state.control.settings().wake_timeout;
    state
        .control
        .wake(inst.id, timeout)
        .await
        .map_err(|e| wake_error(inst.id, e))
}

fn wake_error(id: Uuid, e: ControlError) -> GatewayError {
    let start_hint = format!("start it again (web UI, or POST /api/instances/{id}/start)");
    match e {
        ControlError::NotFound | ControlError::Deleted => GatewayError::instance_not_found(),
        ControlError::Stopped => GatewayError::unavailable(
            "instance_stopped",
            format!("instance {id} is stopped; {start_hint}"),
        ),
        ControlError::WakeDisabled => GatewayError::unavailable(
            "instance_sleeping",
            format!("instance {id} is sleeping and does not wake on request; {start_hint}"),
        ),
        ControlError::Failed(reason) => GatewayError::unavailable(
            "instance_failed",
            format!("instance {id} failed: {reason}; {start_hint}"),
        ),
        ControlError::Timeout(after) => GatewayError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "instance_not_ready",
            format!(
                "instance {id} did not become ready within {} s; it is still starting, \
                 retry shortly",
                after.as_secs()
            ),
        )
        .retry_after(std::time::Duration::from_secs(5)),
        ControlError::Store(corral_store::Error::Refused(refusal)) => match refusal.kind {
            // Waking would pass the owner's quota: a limit the caller can act on.
            corral_core::LimitKind::Quota => GatewayError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                format!("instance {id} cannot wake: {refusal}"),
            ),
            corral_core::LimitKind::Capacity => GatewayError::unavailable(
                "insufficient_capacity",
                format!("instance {id} cannot wake: {refusal}"),
            )
            .retry_after(std::time::Duration::from_secs(30)),
        },
        other => GatewayError::internal(other),
    }
}

/// `name` ⇄ `name:latest`, the other spelling of the same Ollama model name.
fn alias(model: &str) -> Option<String> {
    match model.strip_suffix(":latest") {
        Some(bare) => Some(bare.to_string()),
        None if !model.contains(':') => Some(format!("{model}:latest")),
        None => None,
    }
}

pub fn same_model(served: &str, requested: &str) -> bool {
    served == requested || alias(requested).is_some_and(|other| other == served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_tag_is_optional() {
        assert!(same_model("smollm2:135m", "smollm2:135m"));
        assert!(same_model("llama2:latest", "llama2"));
        assert!(same_model("llama2", "llama2:latest"));
        assert!(!same_model("smollm2:135m", "smollm2"));
        assert!(!same_model("llama2:7b", "llama2:13b"));
    }
}
