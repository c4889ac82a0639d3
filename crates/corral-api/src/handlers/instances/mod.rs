//! Instances (a deployed model): `POST /api/models/start` deploys,
//! `DELETE /api/models/{id}/stop` stops (the id is the instance's, not the model's), and
//! `/api/instances/...` lists, shows, starts again, tunes, deletes and tails them.
//!
//! Who sees what is decided by `crate::access::instance_access` alone: a user sees and
//! changes their own instances; a team's instances are seen and used by every member
//! and managed (stopped, started, changed, deleted) by the team's owners. An instance
//! the caller has no access to answers 404 on every route, exactly like an unknown one
//! (no IDOR); one they see but may not change answers 403 (a team member stopping a
//! team instance). Admins see and change every instance. Viewers are read-only: they
//! see every instance and its logs, and every change answers 403.
//!
//! The API changes only `desired` (through `Control`); the reconciler moves `state`
//! and records each transition in the instance's timeline.

mod logs;
mod metrics;
mod plan;
mod timeline;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use corral_core::catalog::normalize_model_id;
use corral_core::{
    CatalogModel, ComputeSpec, ComputeType, Desired, Instance, InstanceEvent, InstanceSettings,
    Membership, ReplicaState, State as Observed,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::usage::{Cost, UsageTotals};
use crate::access::{Access, instance_access, needs_memberships};
use crate::audit::Audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};
use crate::state::AppState;
use plan::{Refusal, SizeRequest};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_model))
        .routes(routes!(stop_model))
        .routes(routes!(list_instances))
        .routes(routes!(get_instance, delete_instance))
        .routes(routes!(start_instance))
        .routes(routes!(update_settings))
        .routes(routes!(logs::instance_logs))
        .routes(routes!(metrics::instance_metrics))
}

/// Timeline events shown with an instance: enough for days of lifecycle changes.
const TIMELINE_EVENTS: u32 = 200;

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::bad_request(r.code, r.message)
    }
}

/// What `Control` refuses, as the API answers it.
fn control_error(e: corral_control::Error) -> ApiError {
    match e {
        corral_control::Error::NotFound => ApiError::NotFound("instance"),
        corral_control::Error::Store(e) => e.into(),
        other => ApiError::Conflict(other.to_string()),
    }
}

/// The caller's team memberships, read only for callers whose access depends on them.
pub(crate) async fn memberships(
    state: &AppState,
    principal: &Principal,
) -> ApiResult<Vec<Membership>> {
    if needs_memberships(principal.user.role) {
        Ok(state.store.user_teams(principal.user.id).await?)
    } else {
        Ok(Vec::new())
    }
}

/// Instance `id` if the caller has at least `need` access to it (see `crate::access`):
/// 404 when they have none, whether it exists or not; 403 when they see it but may not
/// do this. Viewers get their 403 for any change before anything is looked up.
pub(super) async fn instance_with(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    need: Access,
) -> ApiResult<Instance> {
    if need > Access::Read {
        principal.require_mutate()?;
    }
    let inst = state
        .store
        .instance(id)
        .await?
        .ok_or(ApiError::NotFound("instance"))?;
    // Only a team's instance needs the memberships to decide.
    let teams = if inst.team_id.is_some() {
        memberships(state, principal).await?
    } else {
        Vec::new()
    };
    let access = instance_access(principal.user.role, principal.user.id, &teams, &inst);
    if access == Access::None {
        return Err(ApiError::NotFound("instance"));
    }
    if access < need {
        return Err(ApiError::Forbidden(
            "this is a team instance: its members use it, only the team's owners (and \
             admins) stop, start, change or delete it"
                .into(),
        ));
    }
    Ok(inst)
}

fn refuse_deleted(inst: &Instance) -> ApiResult<()> {
    if inst.desired == Desired::Deleted {
        return Err(ApiError::Conflict(
            "the instance is being deleted; deploy the model again instead".into(),
        ));
    }
    Ok(())
}

/// The dash spelling `llama2-7b` is the catalog's `llama2:7b`: an id that is not in
/// the catalog as written is tried with its first `-` as the tag separator.
async fn find_model(state: &AppState, raw: &str) -> ApiResult<CatalogModel> {
    let id = normalize_model_id(raw).map_err(|m| ApiError::bad_request("invalid_model_id", m))?;
    if let Some(model) = state.store.model(&id).await? {
        return Ok(model);
    }
    if !id.contains(':')
        && let Some(model) = state.store.model(&id.replacen('-', ":", 1)).await?
    {
        return Ok(model);
    }
    Err(ApiError::bad_request(
        "unknown_model",
        format!("{id:?} is not in the catalog; GET /api/models lists the models you can deploy"),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartModel {
    /// Catalog id, e.g. `smollm2:135m`; the dash spelling `llama2-7b` works too.
    model_id: String,
    /// `local`, `fargate` or `gpu`. Default: local where offered. An `instance_type` or
    /// `gpu_count` alone means gpu.
    compute_type: Option<ComputeType>,
    /// vCPUs. Default: the smallest size that fits the model (see `GET /api/compute`).
    cpu: Option<f64>,
    /// Memory in MiB; at least the model's `memory_required`.
    memory: Option<u32>,
    /// GPUs (gpu compute); default 1.
    gpu_count: Option<u32>,
    /// EC2 instance type (gpu compute), e.g. `g5.xlarge`; default: the cheapest that fits.
    instance_type: Option<String>,
    /// Spot capacity where offered; default false.
    spot: Option<bool>,
    /// Sleep or stop after this many seconds without a request; 0 never. Default 1800.
    idle_timeout_seconds: Option<u32>,
    /// Default 1.
    min_replicas: Option<u32>,
    /// Default: `min_replicas`; at most 8.
    max_replicas: Option<u32>,
    /// When idle, sleep and start again on the next request (default) instead of stopping.
    wake_on_request: Option<bool>,
    /// Deploy for this team (`GET /api/teams` lists the caller's): every member may use
    /// the instance, the team's owners manage it. Any team member may deploy for it.
    team_id: Option<Uuid>,
}

/// An instance as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceView {
    id: Uuid,
    model_id: String,
    /// The user who deployed it.
    owner_id: Uuid,
    /// The team it belongs to, if it was deployed for one.
    team_id: Option<Uuid>,
    /// The owner's e-mail; shown to admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_email: Option<String>,
    /// What the reconciler observed: pending, provisioning, starting, ready, scaling,
    /// stopping, stopped, sleeping or failed.
    status: Observed,
    /// Why it failed, or other context for the status.
    status_reason: Option<String>,
    /// What was asked for: running, sleeping, stopped or deleted.
    desired: Desired,
    /// This instance's endpoint on the gateway (Ollama API below it, OpenAI API under
    /// `/v1`), e.g. `https://corral.example.com/i/{id}`. Needs an API key or token.
    endpoint: String,
    /// The compute driver that runs it (`local`, `ecs`).
    driver: String,
    compute: ComputeSpec,
    settings: InstanceSettings,
    /// Replicas the autoscaler wants now, between min and max.
    target_replicas: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The last request through the gateway (idle shutdown counts from it).
    last_activity_at: DateTime<Utc>,
    /// Seconds since it last became ready; 0 while not serving.
    uptime_seconds: i64,
}

impl InstanceView {
    pub(super) fn new(state: &AppState, inst: &Instance, owner_email: Option<String>) -> Self {
        let now = Utc::now();
        InstanceView {
            id: inst.id,
            model_id: inst.model_id.clone(),
            owner_id: inst.owner_id,
            team_id: inst.team_id,
            owner_email,
            status: inst.state,
            status_reason: inst.state_reason.clone(),
            desired: inst.desired,
            endpoint: format!(
                "{}/i/{}",
                state.settings.public_url.trim_end_matches('/'),
                inst.id
            ),
            driver: inst.driver.clone(),
            compute: inst.compute.clone(),
            settings: inst.settings.clone(),
            target_replicas: inst.target_replicas,
            created_at: inst.created_at,
            updated_at: inst.updated_at,
            last_activity_at: inst.last_activity_at,
            uptime_seconds: inst
                .running_since
                .map_or(0, |since| (now - since).num_seconds().max(0)),
        }
    }
}

/// The view for `principal`: admins also get the owner's e-mail.
async fn view(state: &AppState, principal: &Principal, inst: &Instance) -> ApiResult<InstanceView> {
    let email = if principal.user.role.is_admin() {
        owner_email(state, principal, inst.owner_id).await?
    } else {
        None
    };
    Ok(InstanceView::new(state, inst, email))
}

async fn owner_email(
    state: &AppState,
    principal: &Principal,
    owner: Uuid,
) -> ApiResult<Option<String>> {
    if owner == principal.user.id {
        return Ok(Some(principal.user.email.clone()));
    }
    Ok(state.store.user_by_id(owner).await?.map(|u| u.email))
}

/// Deploys a model: validates the model, the size against what the drivers offer and
/// the settings, then creates the instance (desired running, status pending) for the
/// reconciler to launch. Nothing is created when any check fails.
#[utoipa::path(post, path = "/api/models/start", tag = "instances",
    security(("bearer" = [])),
    request_body = StartModel,
    responses(
        (status = 201, body = InstanceView, description = "created; poll `GET /api/instances/{id}` until status is ready"),
        (status = 400, description = "invalid_model_id, unknown_model, unsupported_compute, compute_unavailable, invalid_size, insufficient_memory, invalid_replicas or invalid_idle_timeout"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "viewers are read-only"),
        (status = 409, description = "quota_exceeded or insufficient_capacity, with details {limit, allowed, in_use, requested[, free]}; nothing is created"),
        (status = 404, description = "team_id names no team the caller is a member of"),
        (status = 429, description = "too many deploys by this user; see Retry-After"),
    ))]
async fn start_model(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Json(body): Json<StartModel>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    audit.action("instances.start");
    principal.require_mutate()?;
    state
        .deploy_limiter
        .check(&principal.user.id.to_string())
        .map_err(|retry_after| ApiError::TooManyRequests {
            message: format!(
                "too many deploys ({} per minute); retry later",
                state.settings.deploy_rate_per_user
            ),
            retry_after,
        })?;
    if let Some(team_id) = body.team_id {
        deploys_for(&state, &principal, team_id).await?;
    }
    let model = find_model(&state, &body.model_id).await?;
    let size = SizeRequest {
        compute_type: body.compute_type,
        cpu: body.cpu,
        memory: body.memory,
        gpu_count: body.gpu_count,
        instance_type: body.instance_type,
        spot: body.spot.unwrap_or(false),
    };
    let planned = plan::plan(&model, &size, &state.control.offers())?;
    // A model the chosen driver's replicas cannot get would only fail after every
    // launch attempt; refuse it now, before anything is created.
    if let Some(why) = state.control.cannot_run(&planned.driver, &model) {
        return Err(ApiError::bad_request("unsupported_model_source", why));
    }
    let defaults = InstanceSettings::default();
    let min_replicas = body.min_replicas.unwrap_or(defaults.min_replicas);
    let settings = InstanceSettings {
        idle_timeout_seconds: body
            .idle_timeout_seconds
            .unwrap_or(defaults.idle_timeout_seconds),
        min_replicas,
        max_replicas: body.max_replicas.unwrap_or(min_replicas.max(1)),
        wake_on_request: body.wake_on_request.unwrap_or(defaults.wake_on_request),
    };
    plan::check_settings(&settings)?;

    let now = Utc::now();
    let inst = Instance {
        id: Uuid::now_v7(),
        owner_id: principal.user.id,
        model_id: model.id.clone(),
        driver: planned.driver,
        compute: planned.spec,
        target_replicas: settings.min_replicas,
        settings,
        desired: Desired::Running,
        state: Observed::Pending,
        state_reason: None,
        created_at: now,
        updated_at: now,
        last_activity_at: now,
        running_since: None,
        running_seconds: 0,
        team_id: body.team_id,
    };
    // Admission is part of the insert: the quota's and the host's counters change in
    // the same transaction, so concurrent deploys cannot pass the limits together.
    let admission = state
        .control
        .admission(&inst)
        .await
        .map_err(control_error)?;
    state.store.create_instance(&inst, &admission).await?;
    audit.target(inst.id);
    audit.detail(&format!("model={}", inst.model_id));
    let c = &inst.compute;
    state
        .store
        .append_event(
            inst.id,
            &format!(
                "deployed by {}: {} on {} ({} vCPU, {} MiB{}), {}..{} replicas",
                principal.user.email,
                inst.model_id,
                c.compute_type.as_str(),
                c.cpu,
                c.memory,
                c.instance_type
                    .as_deref()
                    .map(|t| format!(", {t}"))
                    .unwrap_or_default(),
                inst.settings.min_replicas,
                inst.settings.max_replicas
            ),
            now,
        )
        .await?;
    state.control.nudge();
    Ok((
        StatusCode::CREATED,
        Json(view(&state, &principal, &inst).await?),
    ))
}

/// Whether the caller may deploy for `team_id`: any member (owner or member) of it,
/// or an admin for any team; 404 otherwise, as for a team that does not exist.
async fn deploys_for(state: &AppState, principal: &Principal, team_id: Uuid) -> ApiResult<()> {
    let allowed = if principal.user.role.is_admin() {
        state.store.team(team_id).await?.is_some()
    } else {
        memberships(state, principal)
            .await?
            .iter()
            .any(|m| m.team.id == team_id)
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::NotFound("team"))
    }
}

/// Stops an instance (`id` is the instance's id, not the model's). Its replicas finish
/// their requests and stop; it stays listed as stopped and can be started again.
#[utoipa::path(delete, path = "/api/models/{id}/stop", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id")),
    responses(
        (status = 202, body = InstanceView, description = "stopping; status becomes stopped"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "viewers are read-only; team members use team instances, only team owners manage them"),
        (status = 404, description = "no such instance among those the caller sees"),
        (status = 409, description = "the instance is being deleted"),
    ))]
async fn stop_model(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    audit.action("instances.stop");
    audit.target(id);
    let inst = instance_with(&state, &principal, id, Access::Manage).await?;
    refuse_deleted(&inst)?;
    let inst = state
        .control
        .set_desired(id, Desired::Stopped)
        .await
        .map_err(control_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&state, &principal, &inst).await?),
    ))
}

/// Starts a stopped, sleeping or failed instance again (a failed one is retried from
/// the start). Starting one that runs changes nothing.
#[utoipa::path(post, path = "/api/instances/{id}/start", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id")),
    responses(
        (status = 202, body = InstanceView),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "viewers are read-only; team members use team instances, only team owners manage them"),
        (status = 404, description = "no such instance among those the caller sees"),
        (status = 409, description = "the instance is being deleted; quota_exceeded or insufficient_capacity (details as for deploy)"),
    ))]
async fn start_instance(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    audit.action("instances.resume");
    audit.target(id);
    let inst = instance_with(&state, &principal, id, Access::Manage).await?;
    refuse_deleted(&inst)?;
    let inst = state.control.start(id).await.map_err(control_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&state, &principal, &inst).await?),
    ))
}

/// Stops an instance and then removes it with its timeline; its usage stays in the
/// usage report. It is listed with desired `deleted` until its compute is gone.
#[utoipa::path(delete, path = "/api/instances/{id}", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id")),
    responses(
        (status = 202, body = InstanceView),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "viewers are read-only; team members use team instances, only team owners manage them"),
        (status = 404, description = "no such instance among those the caller sees"),
    ))]
async fn delete_instance(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    audit.action("instances.delete");
    audit.target(id);
    instance_with(&state, &principal, id, Access::Manage).await?;
    let inst = state
        .control
        .set_desired(id, Desired::Deleted)
        .await
        .map_err(control_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&state, &principal, &inst).await?),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// 0 never stops it; at most a week.
    idle_timeout_seconds: Option<u32>,
    min_replicas: Option<u32>,
    /// At most 8.
    max_replicas: Option<u32>,
    wake_on_request: Option<bool>,
}

/// Changes an instance's settings; fields left out keep their value. Takes effect at
/// the reconciler's next step (replicas are added or removed to fit the new bounds).
#[utoipa::path(put, path = "/api/instances/{id}/settings", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id")),
    request_body = UpdateSettings,
    responses(
        (status = 200, body = InstanceView),
        (status = 400, description = "invalid_replicas or invalid_idle_timeout"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "viewers are read-only; team members use team instances, only team owners manage them"),
        (status = 404, description = "no such instance among those the caller sees"),
        (status = 409, description = "the instance is being deleted; quota_exceeded or insufficient_capacity when the new minimum needs more replicas than allowed"),
    ))]
async fn update_settings(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateSettings>,
) -> ApiResult<Json<InstanceView>> {
    audit.action("instances.settings");
    audit.target(id);
    let inst = instance_with(&state, &principal, id, Access::Manage).await?;
    refuse_deleted(&inst)?;
    let old = &inst.settings;
    let new = InstanceSettings {
        idle_timeout_seconds: body
            .idle_timeout_seconds
            .unwrap_or(old.idle_timeout_seconds),
        min_replicas: body.min_replicas.unwrap_or(old.min_replicas),
        max_replicas: body.max_replicas.unwrap_or(old.max_replicas),
        wake_on_request: body.wake_on_request.unwrap_or(old.wake_on_request),
    };
    plan::check_settings(&new)?;
    let now = Utc::now();
    let inst = state
        .store
        .update_instance_settings(
            id,
            &new,
            &state
                .control
                .admission(&inst)
                .await
                .map_err(control_error)?,
            now,
        )
        .await?
        .ok_or(ApiError::NotFound("instance"))?;
    let change = format!(
        "idle_timeout_seconds={} replicas={}..{} wake_on_request={}",
        new.idle_timeout_seconds, new.min_replicas, new.max_replicas, new.wake_on_request
    );
    audit.detail(&change);
    state
        .store
        .append_event(
            id,
            &format!("settings changed by {}: {change}", principal.user.email),
            now,
        )
        .await?;
    state.control.nudge();
    Ok(Json(view(&state, &principal, &inst).await?))
}

/// The caller's instances and their teams' ones (with `team_id`), newest first; admins
/// and viewers see everyone's (admins with the owner's e-mail).
#[utoipa::path(get, path = "/api/instances", tag = "instances",
    security(("bearer" = [])),
    responses(
        (status = 200, body = [InstanceView]),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn list_instances(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<InstanceView>>> {
    let list = visible_instances(&state, &principal).await?;
    let mut emails = std::collections::HashMap::new();
    let mut views = Vec::with_capacity(list.len());
    for inst in &list {
        let email = if principal.user.role.is_admin() {
            match emails.get(&inst.owner_id) {
                Some(email) => Option::clone(email),
                None => {
                    let email = owner_email(&state, &principal, inst.owner_id).await?;
                    emails.insert(inst.owner_id, email.clone());
                    email
                }
            }
        } else {
            None
        };
        views.push(InstanceView::new(&state, inst, email));
    }
    Ok(Json(views))
}

/// Every instance the caller may see (see `crate::access`), newest first: for a user,
/// the ones they deployed and their teams' ones.
pub(crate) async fn visible_instances(
    state: &AppState,
    principal: &Principal,
) -> ApiResult<Vec<Instance>> {
    if !needs_memberships(principal.user.role) {
        return Ok(state.store.list_instances(None).await?);
    }
    let teams = memberships(state, principal).await?;
    let mut list = state.store.list_instances(Some(principal.user.id)).await?;
    for m in &teams {
        list.extend(state.store.list_team_instances(m.team.id).await?);
    }
    // One the caller deployed for a team is in both lists; one deployed for a team
    // they have left is in neither's sight.
    list.sort_by_key(|i| std::cmp::Reverse((i.created_at, i.id)));
    list.dedup_by_key(|i| i.id);
    list.retain(|i| {
        instance_access(principal.user.role, principal.user.id, &teams, i) > Access::None
    });
    Ok(list)
}

/// One replica: a running copy of the model server.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplicaView {
    id: Uuid,
    state: ReplicaState,
    /// Times it was started again after exiting or failing its health check.
    restarts: u32,
    started_at: DateTime<Utc>,
    /// Percent of one core, over the last sample interval.
    cpu_percent: Option<f64>,
    /// Resident memory.
    memory_bytes: Option<u64>,
    /// The replica's own address behind the gateway; admins only, since calling it
    /// directly skips authentication, rate limits and metering.
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
}

/// An instance with its replicas, timeline, usage and cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceDetail {
    #[serde(flatten)]
    instance: InstanceView,
    replicas: Vec<ReplicaView>,
    /// Lifecycle transitions and notable events, oldest first (the latest 200).
    timeline: Vec<InstanceEvent>,
    /// Requests and tokens through the gateway, all time.
    usage: UsageTotals,
    /// What it has cost so far: its replicas' runs (from launch) × the price table.
    cost: Cost,
}

/// An instance's status, endpoint, size, settings, replicas (with CPU and memory),
/// timeline, usage and cost.
#[utoipa::path(get, path = "/api/instances/{id}", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id")),
    responses(
        (status = 200, body = InstanceDetail),
        (status = 401, description = "missing or invalid credentials"),
        (status = 404, description = "no such instance among those the caller sees"),
    ))]
async fn get_instance(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<InstanceDetail>> {
    let inst = instance_with(&state, &principal, id, Access::Read).await?;
    let resources = state.control.replica_resources(id);
    let admin = principal.user.role.is_admin();
    let replicas = state
        .store
        .list_replicas(id)
        .await?
        .into_iter()
        .map(|r| {
            let usage = resources
                .iter()
                .find(|(rid, _)| *rid == r.id)
                .map(|(_, u)| u);
            ReplicaView {
                id: r.id,
                state: r.state,
                restarts: r.restarts,
                started_at: r.started_at,
                cpu_percent: usage.map(|u| u.cpu_percent),
                memory_bytes: usage.map(|u| u.memory_bytes),
                endpoint: r.endpoint.filter(|_| admin),
            }
        })
        .collect();
    let usage = state
        .store
        .usage(Some(inst.owner_id), None, None)
        .await?
        .iter()
        .filter(|row| row.instance_id == id)
        .fold(UsageTotals::default(), |t, row| t.add(row));
    Ok(Json(InstanceDetail {
        timeline: timeline::for_viewer(
            state.store.list_events(id, TIMELINE_EVENTS).await?,
            &principal.user,
        ),
        cost: Cost::of(
            &state.settings.prices,
            &inst.compute,
            &state.store.runs_for_instance(id).await?,
            Utc::now(),
        ),
        usage,
        replicas,
        instance: view(&state, &principal, &inst).await?,
    }))
}
