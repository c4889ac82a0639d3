//! `GET /api/instances/{id}/metrics`: the instance's gateway requests of the last hour,
//! minute by minute, for the instance page's latency and request charts. The gateway
//! keeps them in memory (`metrics::instance`), so they start empty when the server
//! starts; the hourly usage (`/api/usage`) is the durable record.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::instance_with;
use crate::access::Access;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::{Json, Path};
use crate::metrics::instance::MinuteStats;
use crate::state::AppState;

/// One minute of an instance's gateway requests (generations and embeddings).
/// Percentiles are within about 15 % of the exact value; null when the minute had no
/// such request.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteView {
    /// Start of the minute.
    start: DateTime<Utc>,
    requests: u64,
    /// Answered with a server error, not answered, or broken off by the replica.
    errors: u64,
    /// From receipt by the gateway to the end of the answer.
    latency_p50_ms: Option<f64>,
    latency_p95_ms: Option<f64>,
    /// Streamed answers: from receipt to the first chunk.
    first_token_p50_ms: Option<f64>,
    first_token_p95_ms: Option<f64>,
    /// Generated (completion) tokens.
    tokens_out: u64,
}

impl From<MinuteStats> for MinuteView {
    fn from(m: MinuteStats) -> Self {
        MinuteView {
            start: m.start,
            requests: m.requests,
            errors: m.errors,
            latency_p50_ms: m.latency_p50_ms,
            latency_p95_ms: m.latency_p95_ms,
            first_token_p50_ms: m.first_token_p50_ms,
            first_token_p95_ms: m.first_token_p95_ms,
            tokens_out: m.tokens_out,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceMetrics {
    instance_id: Uuid,
    /// The last 60 minutes, oldest first, the current (partial) minute last; every
    /// minute is there, with zeros when it had no request.
    minutes: Vec<MinuteView>,
}

/// The instance's requests, errors, latency and time to first token (p50/p95) and
/// generated tokens per minute over the last hour, as seen by the gateway since this
/// server started.
#[utoipa::path(get, path = "/api/instances/{id}/metrics", tag = "instances",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "instance id")),
    responses(
        (status = 200, body = InstanceMetrics),
        (status = 401, description = "missing or invalid credentials"),
        (status = 404, description = "no such instance among the caller's"),
    ))]
pub(super) async fn instance_metrics(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<InstanceMetrics>> {
    let inst = instance_with(&state, &principal, id, Access::Read).await?;
    let minutes = state
        .metrics
        .instances
        .last_hour(inst.id)
        .into_iter()
        .map(MinuteView::from)
        .collect();
    Ok(Json(InstanceMetrics {
        instance_id: inst.id,
        minutes,
    }))
}
