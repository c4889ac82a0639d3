//! First-run setup: while no account exists, the one-time token that `corral serve`
//! prints lets the first administrator sign up (verified) and logs them in.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use corral_core::{Role, User, secret};
use serde::Deserialize;
use tokio::sync::Mutex;
use utoipa::ToSchema;

use super::session::{Client, TokenPair, sign_in};
use super::{check_new_password, valid_email};
use crate::audit::Audit;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;

/// Serialises setups so two concurrent requests cannot both see an empty store and both
/// create an administrator.
static SETUP: Mutex<()> = Mutex::const_new(());

#[derive(Deserialize, ToSchema)]
pub struct SetupRequest {
    /// Printed by `corral serve` when no account exists.
    setup_token: String,
    email: String,
    password: String,
    #[serde(rename = "confirmPassword")]
    confirm_password: String,
}

/// Creates the first administrator (e-mail verified) and logs them in.
///
/// Only while no account exists and with the setup token printed by `corral serve`.
#[utoipa::path(post, path = "/api/auth/setup", tag = "auth",
    request_body = SetupRequest,
    responses(
        (status = 201, body = TokenPair,
            headers(("Set-Cookie" = String, description = "the `corral_refresh` cookie"))),
        (status = 400, description = "`invalid_email`, `weak_password` (details.failed_rules) or `password_mismatch`"),
        (status = 401, description = "`invalid_setup_token`"),
        (status = 403, description = "`setup_closed`: an account exists, no setup token is configured, or auth mode cognito"),
    ))]
pub async fn setup(
    State(state): State<AppState>,
    audit: Audit,
    client: Client,
    Json(body): Json<SetupRequest>,
) -> ApiResult<(StatusCode, HeaderMap, Json<TokenPair>)> {
    audit.action("auth.setup");
    let closed = || {
        ApiError::denied(
            StatusCode::FORBIDDEN,
            "setup_closed",
            "setup is closed: an account already exists or no setup token is configured; \
             log in, or create users with `corral admin create-user`",
        )
    };
    if state.cognito.is_some() {
        return Err(ApiError::denied(
            StatusCode::FORBIDDEN,
            "setup_closed",
            "accounts live in Amazon Cognito (auth mode `cognito`): sign up, then have the \
             account added to the pool's admin group",
        ));
    }
    let expected = state.settings.setup_token.as_deref().ok_or_else(closed)?;
    let _only_one = SETUP.lock().await;
    if state.store.count_users().await? > 0 {
        return Err(closed());
    }
    if !secret::equal(&body.setup_token, expected) {
        audit.detail("bad_setup_token");
        return Err(ApiError::denied(
            StatusCode::UNAUTHORIZED,
            "invalid_setup_token",
            "wrong setup token: use the one `corral serve` printed at start-up",
        ));
    }
    let email = valid_email(&body.email)?;
    audit.claimed_email(&email);
    check_new_password(&body.password, &body.confirm_password)?;
    let hash = state.passwords.hash(body.password).await?;
    let mut user = User::new(&email, hash, Role::Admin, Utc::now());
    user.email_verified = true;
    state.store.create_user(&user).await?;
    audit.actor(&user);
    let (headers, pair) = sign_in(&state, user, &client).await?;
    Ok((StatusCode::CREATED, headers, Json(pair)))
}
