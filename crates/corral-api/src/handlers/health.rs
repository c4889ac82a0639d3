use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::extract::Json;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok`, or `degraded` when the store does not answer.
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    store: StoreHealth,
}

#[derive(Serialize, ToSchema)]
struct StoreHealth {
    backend: &'static str,
    reachable: bool,
}

/// Liveness and store reachability; public, for load balancers and monitors.
#[utoipa::path(get, path = "/api/health", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (StatusCode, Json<Health>) {
    let reachable = match state.store.ping().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "health: store unreachable");
            false
        }
    };
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: if reachable { "ok" } else { "degraded" },
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: state.started.elapsed().as_secs(),
            store: StoreHealth {
                backend: state.store.backend(),
                reachable,
            },
        }),
    )
}
