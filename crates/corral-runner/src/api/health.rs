//! Health (for the control plane to poll) and Prometheus metrics.

use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::SharedState;

/// 200 with `"status": "ok"` while the inference thread runs; 503 with `"error"` if it
/// has stopped, so the control plane can restart the runner.
pub async fn health(State(state): State<SharedState>) -> impl IntoResponse {
    let m = &state.metrics;
    let alive = m.engine_alive.load(Relaxed);
    let busy = m.slots_busy.load(Relaxed);
    let body = json!({
        "status": if alive { "ok" } else { "error" },
        "model": state.model.name,
        "slots": { "total": m.slots_total, "busy": busy, "idle": m.slots_total.saturating_sub(busy) },
        "queue_depth": m.queue_depth.load(Relaxed),
    });
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

pub async fn metrics(State(state): State<SharedState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
