//! `GET /api/compute`: what the configured compute drivers offer, so clients can show
//! only valid choices; `POST /api/models/start` validates against the same offers. The
//! local driver's offer also says how much of the host is committed and free.

use axum::extract::State;
use corral_core::{ComputeOffer, ComputeType, Subject};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::extract::Json;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_compute))
}

/// One driver's offer, and for the local driver the host's capacity.
#[derive(Debug, Serialize, ToSchema)]
pub struct OfferView {
    #[serde(flatten)]
    offer: ComputeOffer,
    /// Local compute only: the host's memory and vCPUs that replicas may commit, what
    /// the replicas of running instances have committed, and what is free. A deploy,
    /// start or scale-up that does not fit is refused with 409 `insufficient_capacity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<HostCapacityView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HostCapacityView {
    /// The name the host's counters are kept under (shared by servers on one host).
    host: String,
    total: Resources,
    committed: Resources,
    free: Resources,
    /// Local replicas asked to run.
    replicas: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Resources {
    vcpu: f64,
    memory_mib: i64,
}

/// Compute kinds, valid vCPU/memory pairs and GPU instance types, per driver. Local
/// vCPUs set the model server's threads; memory sizes go up to what the host has, and
/// the local offer carries the host's committed and free capacity.
#[utoipa::path(get, path = "/api/compute", tag = "instances",
    security(("bearer" = [])),
    responses(
        (status = 200, body = [OfferView]),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn list_compute(
    State(state): State<AppState>,
    _principal: Principal,
) -> ApiResult<Json<Vec<OfferView>>> {
    let mut views = Vec::new();
    for offer in state.control.offers() {
        let capacity = match &state.control.settings().host {
            Some(host) if offer.compute_type == ComputeType::Local => {
                let used = state
                    .store
                    .allocation(&Subject::Host(host.name.clone()))
                    .await?;
                Some(HostCapacityView {
                    host: host.name.clone(),
                    total: Resources {
                        vcpu: host.milli_vcpu as f64 / 1000.0,
                        memory_mib: host.memory_mib,
                    },
                    committed: Resources {
                        vcpu: used.milli_vcpu as f64 / 1000.0,
                        memory_mib: used.memory_mib,
                    },
                    free: Resources {
                        vcpu: (host.milli_vcpu - used.milli_vcpu).max(0) as f64 / 1000.0,
                        memory_mib: (host.memory_mib - used.memory_mib).max(0),
                    },
                    replicas: used.replicas,
                })
            }
            _ => None,
        };
        views.push(OfferView { offer, capacity });
    }
    Ok(Json(views))
}
