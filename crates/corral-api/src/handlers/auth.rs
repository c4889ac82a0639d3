use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;

use crate::audit::ClientIp;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}

/// Every auth route is limited per client IP (burst, then a steady rate per minute).
pub async fn rate_limit_by_ip(
    State(state): State<AppState>,
    ip: ClientIp,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state
        .ip_limiter
        .check(&ip.key())
        .map_err(|retry_after| ApiError::TooManyRequests {
            message: "too many authentication requests from this address; retry later".into(),
            retry_after,
        })?;
    Ok(next.run(request).await)
}
