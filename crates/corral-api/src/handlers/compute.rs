//! `GET /api/compute`: what the configured compute drivers offer, so clients can show
//! only valid choices; `POST /api/models/start` validates against the same offers.

use axum::extract::State;
use corral_core::ComputeOffer;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::Json;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_compute))
}

/// Compute kinds, valid vCPU/memory pairs and GPU instance types, per driver. Local
/// vCPUs set the model server's threads; memory sizes go up to what the host has.
#[utoipa::path(get, path = "/api/compute", tag = "instances",
    security(("bearer" = [])),
    responses(
        (status = 200, body = [ComputeOffer]),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn list_compute(
    State(state): State<AppState>,
    _principal: Principal,
) -> ApiResult<Json<Vec<ComputeOffer>>> {
    Ok(Json(state.control.offers()))
}
