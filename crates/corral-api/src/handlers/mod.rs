//! One module per resource; each returns its routes with their OpenAPI metadata.

mod admin;
mod auth;
mod compute;
mod health;
mod instances;
mod keys;
mod models;
mod profile;
mod quota;
mod teams;
mod usage;

use axum::middleware;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub(crate) use auth::mails::render as render_mail;

pub fn routes(state: AppState) -> OpenApiRouter<AppState> {
    all(|routes| {
        routes.layer(middleware::from_fn_with_state(
            state,
            auth::rate_limit_by_ip,
        ))
    })
}

/// The routes' OpenAPI document without a server: layers do not change it, so the
/// auth routes go in without their rate limit (which needs the state).
pub fn document() -> OpenApi {
    all(|routes| routes).split_for_parts().1
}

/// Every resource's routes; `limit_auth` wraps the auth routes in their per-IP limit.
fn all(
    limit_auth: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::routes())
        .merge(auth::public_routes())
        .merge(limit_auth(auth::routes()))
        .merge(profile::routes())
        .merge(keys::routes())
        .merge(admin::routes())
        .merge(models::routes())
        .merge(instances::routes())
        .merge(compute::routes())
        .merge(usage::routes())
        .merge(quota::routes())
        .merge(teams::routes())
}
