//! Quotas: `GET /api/user/quota` (the caller's limits with what they use now),
//! `GET`/`PUT /api/admin/users/{id}/quota` (an admin reads or sets a user's).
//!
//! A quota document has one field per limit; `null` (or left out) means the
//! configured default (`[quota]` in corral.toml), `0` means none allowed. The compute
//! limits are enforced by the store in the same transaction as each instance change
//! (409 `quota_exceeded`); the budget fields are stored and shown here.

use axum::extract::State;
use chrono::Utc;
use corral_core::{Allocation, Quota, Resource, Subject};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::audit::Audit;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(my_quota))
        .routes(routes!(get_user_quota, set_user_quota))
}

/// One limit with its current use.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitUse {
    /// `max_instances`, `max_replicas`, `max_vcpu`, `max_memory_mib`, `max_gpus` or
    /// `max_concurrent_requests`.
    name: &'static str,
    /// The effective limit (0: none allowed); vCPUs may be fractional.
    #[schema(value_type = f64)]
    limit: Value,
    /// What is held now: instances not deleted; replicas, vCPUs, MiB and GPUs of the
    /// instances asked to run (target replicas × size). Null where the store does not
    /// count it (gateway requests in flight are counted per server).
    #[schema(value_type = Option<f64>)]
    in_use: Value,
    /// True when the limit is the configured default (the quota document leaves it
    /// null).
    default: bool,
}

/// A subject's quota: every limit with its use, the budget settings, and the
/// document as stored (its nulls are the defaults).
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaView {
    /// `user` (or `team`).
    subject: &'static str,
    id: Uuid,
    limits: Vec<LimitUse>,
    /// Monthly spend limit in USD; null: none.
    monthly_budget_usd: Option<f64>,
    /// Percent of the budget at which an alert is sent.
    budget_alert_percent: Option<u32>,
    /// What an admin set; null fields take the configured defaults.
    overrides: Quota,
}

/// Builds the view of a subject's quota from its document, the defaults and its
/// counters.
async fn quota_view(state: &AppState, subject: &Subject) -> ApiResult<QuotaView> {
    let (kind, id) = match subject {
        Subject::User(id) => ("user", *id),
        Subject::Team(id) => ("team", *id),
        Subject::Host(_) => return Err(ApiError::internal("a host has no quota document")),
    };
    let overrides = state.store.quota(subject).await?.unwrap_or_default();
    let quota = overrides.or(&state.control.settings().quota_defaults);
    let used = state.store.allocation(subject).await?;
    Ok(QuotaView {
        subject: kind,
        id,
        limits: limit_uses(&quota, &overrides, used),
        monthly_budget_usd: quota.monthly_budget_usd,
        budget_alert_percent: quota.budget_alert_percent,
        overrides,
    })
}

/// Each limit of `quota` with its use (pure, for the view).
fn limit_uses(quota: &Quota, overrides: &Quota, used: Allocation) -> Vec<LimitUse> {
    let limits = quota.limits();
    let own = overrides.limits();
    let mut out: Vec<LimitUse> = Resource::ALL
        .into_iter()
        .map(|r| {
            let show = |v: i64| match r {
                Resource::MaxVcpu => json!(v as f64 / 1000.0),
                _ => json!(v),
            };
            LimitUse {
                name: r.as_str(),
                limit: limits.get(r).map_or(Value::Null, show),
                in_use: show(used.get(r)),
                default: own.get(r).is_none(),
            }
        })
        .collect();
    out.push(LimitUse {
        name: "max_concurrent_requests",
        limit: quota
            .max_concurrent_requests
            .map_or(Value::Null, |v| json!(v)),
        in_use: Value::Null,
        default: overrides.max_concurrent_requests.is_none(),
    });
    out
}

/// The caller's quota: each limit with what they use now.
#[utoipa::path(get, path = "/api/user/quota", tag = "quota",
    security(("bearer" = [])),
    responses(
        (status = 200, body = QuotaView),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn my_quota(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<QuotaView>> {
    Ok(Json(
        quota_view(&state, &Subject::User(principal.user.id)).await?,
    ))
}

/// A user's quota with their use (admins).
#[utoipa::path(get, path = "/api/admin/users/{id}/quota", tag = "quota",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "user id")),
    responses(
        (status = 200, body = QuotaView),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such user"),
    ))]
async fn get_user_quota(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<QuotaView>> {
    principal.require_admin().inspect_err(|_| {
        audit.action("admin.users.quota.read");
    })?;
    existing_user(&state, id).await?;
    Ok(Json(quota_view(&state, &Subject::User(id)).await?))
}

/// Sets a user's quota document (admins). Every field is replaced: `null` or left out
/// is the configured default, `0` allows none. Lowering a limit below what is in use
/// stops nothing; it refuses growth until use is below it again.
#[utoipa::path(put, path = "/api/admin/users/{id}/quota", tag = "quota",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "user id")),
    request_body = Quota,
    responses(
        (status = 200, body = QuotaView),
        (status = 400, description = "invalid_quota: a value out of range (the message names the field)"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "not an admin"),
        (status = 404, description = "no such user"),
    ))]
async fn set_user_quota(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
    Json(body): Json<Quota>,
) -> ApiResult<Json<QuotaView>> {
    audit.action("admin.users.quota");
    audit.target(id);
    principal.require_admin()?;
    body.validate()
        .map_err(|m| ApiError::bad_request("invalid_quota", m))?;
    existing_user(&state, id).await?;
    let subject = Subject::User(id);
    state.store.set_quota(&subject, &body, Utc::now()).await?;
    audit.detail(&serde_json::to_string(&body).unwrap_or_default());
    Ok(Json(quota_view(&state, &subject).await?))
}

async fn existing_user(state: &AppState, id: Uuid) -> ApiResult<()> {
    state
        .store
        .user_by_id(id)
        .await?
        .map(|_| ())
        .ok_or(ApiError::NotFound("user"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_show_use_and_where_they_come_from() {
        let defaults = Quota {
            max_instances: Some(3),
            max_vcpu: Some(4.0),
            max_concurrent_requests: Some(16),
            ..Quota::default()
        };
        let own = Quota {
            max_instances: Some(5),
            ..Quota::default()
        };
        let used = Allocation {
            instances: 2,
            milli_vcpu: 2500,
            ..Allocation::default()
        };
        let uses = limit_uses(&own.or(&defaults), &own, used);
        let find = |n: &str| uses.iter().find(|u| u.name == n).unwrap();
        assert_eq!(find("max_instances").limit, json!(5));
        assert!(!find("max_instances").default);
        assert_eq!(find("max_instances").in_use, json!(2));
        assert_eq!(find("max_vcpu").limit, json!(4.0));
        assert_eq!(find("max_vcpu").in_use, json!(2.5));
        assert!(find("max_vcpu").default);
        assert_eq!(find("max_gpus").limit, Value::Null, "unset everywhere");
        assert_eq!(find("max_concurrent_requests").in_use, Value::Null);
    }
}
