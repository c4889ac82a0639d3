//! Corral's HTTP API: the management API under `/api`, its OpenAPI document, the
//! gateway to deployed models (`gateway`), Prometheus metrics and the UI. `router()`
//! builds it; `serve()` runs it.

pub mod access;
pub mod audit;
pub mod auth;
pub mod client_ip;
pub mod error;
pub mod extract;
pub mod gateway;
mod handlers;
pub mod mail;
pub mod metrics;
mod openapi;
pub mod outbound;
pub mod ratelimit;
pub mod settings;
pub mod state;
mod ui;
pub mod views;
pub mod webhook;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ApiResult};
pub use settings::Settings;
pub use state::AppState;

/// Largest request body accepted anywhere in the API (requests are small JSON documents).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The OpenAPI document `GET /api/openapi.json` serves, built without a server (for the
/// checked-in snapshot the UI's TypeScript types are generated from).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(handlers::document())
}

/// The whole application with its state applied.
pub fn router(state: AppState) -> Router {
    let (api, doc) = handlers::routes(state.clone()).split_for_parts();
    let doc = openapi::finish(doc);
    api.route(
        "/api/openapi.json",
        axum::routing::get(move || std::future::ready(axum::Json(doc.clone()))),
    )
    .fallback(ui::fallback)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(middleware::from_fn_with_state(
        state.clone(),
        audit::middleware,
    ))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        auth::cache::invalidate_on_change,
    ))
    .layer(DefaultBodyLimit::max(BODY_LIMIT))
    // The gateway is metered (usage, metrics) rather than audited, and reads its own,
    // larger bodies.
    .merge(gateway::routes())
    .route("/metrics", axum::routing::get(metrics::handler))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        metrics::track,
    ))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        client_ip::middleware,
    ))
    .layer(TraceLayer::new_for_http())
    .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    tracing::debug!(%uri, "no route");
    ApiError::NotFound("route")
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::bad_request(
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Serves until `shutdown` resolves, then drains in-flight requests and writes the usage
/// they left (see `gateway::Flusher`). The outbound worker (`outbound`) runs alongside.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Streams are many small writes: with Nagle's algorithm a token would wait for the
    // previous one's acknowledgement (up to 40 ms with delayed ACKs).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let flusher = gateway::Flusher::start(state.clone());
    let outbound = outbound::Worker::start(state.clone());
    let served = axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    flusher.stop().await;
    outbound.stop().await;
    served
}
