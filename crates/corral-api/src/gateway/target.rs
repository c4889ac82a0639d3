//! Which instance serves a request: by instance id (`/i/{id}/...`) or by the body's
//! `model` (the caller's instance of it). The fast path is one read of the in-memory
//! routing table; the store is asked only when the instance has no ready replica, to
//! wake it (sleeping), wait for it (starting) or say why it cannot answer (stopped,
//! failed).
//!
//! Who may call what is `crate::access`'s decision: an instance the caller may not use
//! answers 404, the same as one that does not exist. Routing by model picks the
//! caller's own instances first, then their teams' (`access::model_route`); admins
//! route by model like users and reach other people's instances by id.

use axum::http::StatusCode;
use corral_control::{Error as ControlError, InstanceRoute};
use corral_core::{Desired, Instance, Membership, State};
use std::sync::Arc;
use uuid::Uuid;

use super::error::GatewayError;
use crate::access::{self, Access, ModelRoute, model_route};
use crate::auth::Principal;
use crate::state::AppState;

/// The caller's team memberships (a store read: they decide at once when changed).
async fn teams(state: &AppState, caller: &Principal) -> Result<Vec<Membership>, GatewayError> {
    state
        .store
        .user_teams(caller.user.id)
        .await
        .map_err(GatewayError::internal)
}

/// Whether the caller may use an instance of this deployer and team; the memberships
/// are read only for a team's instance.
async fn may_use(
    state: &AppState,
    caller: &Principal,
    owner_id: Uuid,
    team_id: Option<Uuid>,
) -> Result<bool, GatewayError> {
    let user = &caller.user;
    let memberships = if team_id.is_some() && access::needs_memberships(user.role) {
        teams(state, caller).await?
    } else {
        Vec::new()
    };
    Ok(access::access(user.role, user.id, &memberships, owner_id, team_id) >= Access::Use)
}

/// The route of instance `id`, if the caller may use it, once it has a ready replica.
pub async fn by_id(
    state: &AppState,
    caller: &Principal,
    id: Uuid,
) -> Result<Arc<InstanceRoute>, GatewayError> {
    if let Some(route) = state.routing.get(id) {
        if !may_use(state, caller, route.owner_id, route.team_id).await? {
            return Err(GatewayError::instance_not_found());
        }
        if !route.replicas.is_empty() {
            return Ok(route);
        }
    }
    let inst = state
        .store
        .instance(id)
        .await
        .map_err(GatewayError::internal)?
        .ok_or_else(GatewayError::instance_not_found)?;
    if !may_use(state, caller, inst.owner_id, inst.team_id).await? {
        return Err(GatewayError::instance_not_found());
    }
    wake(state, &inst).await
}

/// The instance of `model` with a ready replica that the caller may use, preferring
/// their own to their teams' (see `access::model_route`), waking or waiting for one
/// that is on its way. `model` may omit the `:latest` tag, as with Ollama.
pub async fn by_model(
    state: &AppState,
    caller: &Principal,
    model: &str,
) -> Result<Arc<InstanceRoute>, GatewayError> {
    let me = caller.user.id;
    // The common case, without a store read: one of the caller's own instances is up.
    if let Some(route) = ready(state, model, |r| {
        model_route(me, &[], r.owner_id, r.team_id) == Some(ModelRoute::Own)
    }) {
        return Ok(route);
    }
    let memberships = teams(state, caller).await?;
    let mut candidates = routable(state, caller, &memberships).await?;
    candidates.retain(|(_, i)| same_model(&i.model_id, model));
    // Instances that can answer (coming up or waking) before those that cannot (whose
    // error says what to do); among them, own before team, then coming up before waking.
    candidates.sort_by_key(|(route, i)| (readiness(i) == 2, *route, readiness(i)));
    let Some((first, _)) = candidates.first() else {
        return Err(GatewayError::model_not_found(model));
    };
    if *first == ModelRoute::Team
        && let Some(route) = ready(state, model, |r| {
            model_route(me, &memberships, r.owner_id, r.team_id) == Some(ModelRoute::Team)
        })
    {
        return Ok(route);
    }
    wake(state, &candidates[0].1).await
}

/// How soon an instance may answer: 0 coming up, 1 waking on request, 2 neither.
fn readiness(i: &Instance) -> u8 {
    match (i.desired, i.state) {
        (Desired::Running, s) if s != State::Failed => 0,
        (Desired::Sleeping, _) if i.settings.wake_on_request => 1,
        _ => 2,
    }
}

/// The least loaded ready instance of `model` (or its other spelling) that `pick` allows.
fn ready(
    state: &AppState,
    model: &str,
    pick: impl Fn(&InstanceRoute) -> bool,
) -> Option<Arc<InstanceRoute>> {
    state
        .routing
        .for_model_where(model, &pick)
        .or_else(|| alias(model).and_then(|other| state.routing.for_model_where(&other, &pick)))
}

/// Every instance routing by model may pick for the caller (not being deleted), with
/// whether it is their own or a team's.
pub async fn routable(
    state: &AppState,
    caller: &Principal,
    memberships: &[Membership],
) -> Result<Vec<(ModelRoute, Instance)>, GatewayError> {
    let me = caller.user.id;
    let mut list = state
        .store
        .list_instances(Some(me))
        .await
        .map_err(GatewayError::internal)?;
    for m in memberships {
        list.extend(
            state
                .store
                .list_team_instances(m.team.id)
                .await
                .map_err(GatewayError::internal)?,
        );
    }
    list.sort_by_key(|i| i.id);
    list.dedup_by_key(|i| i.id);
    Ok(list
        .into_iter()
        .filter(|i| i.desired != Desired::Deleted)
        .filter_map(|i| model_route(me, memberships, i.owner_id, i.team_id).map(|r| (r, i)))
        .collect())
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
