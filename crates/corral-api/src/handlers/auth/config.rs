//! `GET /api/auth/config`: what a sign-in screen needs to know before anyone signs in —
//! which auth mode the server runs and which self-service flows it offers. Public, and
//! nothing in it is secret (no pool id, client id or setup token).

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::extract::Json;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Accounts live in Corral's store; e-mailed links verify and reset.
    Builtin,
    /// Accounts live in an Amazon Cognito user pool; Cognito mails codes instead of links,
    /// and passwords, MFA enrolment and roles (groups) are managed in the pool.
    Cognito,
}

#[derive(Serialize, ToSchema)]
pub struct AuthConfig {
    pub mode: Mode,
    /// `POST /api/auth/signup` is open.
    pub signup_enabled: bool,
    /// `POST /api/auth/setup` can create the first administrator: built-in mode with a
    /// setup token configured (it still refuses once an account exists).
    pub setup_available: bool,
}

/// The server's auth mode and the flows it offers; public, for the sign-in screens.
#[utoipa::path(get, path = "/api/auth/config", tag = "auth",
    responses((status = 200, body = AuthConfig)))]
pub async fn config(State(state): State<AppState>) -> Json<AuthConfig> {
    let cognito = state.cognito.is_some();
    Json(AuthConfig {
        mode: if cognito {
            Mode::Cognito
        } else {
            Mode::Builtin
        },
        signup_enabled: state.settings.signup_enabled,
        setup_available: !cognito && state.settings.setup_token.is_some(),
    })
}
