//! One module per resource; each returns its routes with their OpenAPI metadata.

mod admin;
mod auth;
mod compute;
mod health;
mod instances;
mod keys;
mod models;
mod profile;
mod usage;

use axum::middleware;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub fn routes(state: AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::routes())
        .merge(auth::public_routes())
        .merge(auth::routes().layer(middleware::from_fn_with_state(
            state,
            auth::rate_limit_by_ip,
        )))
        .merge(profile::routes())
        .merge(keys::routes())
        .merge(admin::routes())
        .merge(models::routes())
        .merge(instances::routes())
        .merge(compute::routes())
        .merge(usage::routes())
}
