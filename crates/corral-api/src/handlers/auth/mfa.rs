//! TOTP enrolment for the signed-in user: enroll with the password (new secret, not yet
//! required), confirm with a first code (from then on login asks for one), disable with
//! password and code. These need a login session: an API key must not be able to change
//! how its owner logs in; and the password, because a stolen access token alone must not
//! be enough to enrol the thief's authenticator and lock the owner out. (Confirming needs
//! no password again: it only accepts a code of the secret that enrolling showed.)

use axum::extract::State;
use axum::http::HeaderMap;
use chrono::Utc;
use corral_core::totp;
use corral_store::UserPatch;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::session::no_store;
use super::{Done, accept_code, invalid_code, limit_account, reauthenticate};
use crate::audit::Audit;
use crate::auth::{Credential, Principal, oidc};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;

/// Shown by authenticator apps above the code.
const ISSUER: &str = "Corral";

/// A login session of a built-in account: provider accounts set up MFA at the provider.
fn interactive(state: &AppState, principal: &Principal) -> ApiResult<()> {
    if state.cognito.is_some() || oidc::is_external(&principal.user) {
        return Err(oidc::managed_by_provider());
    }
    match principal.credential {
        Credential::Jwt { .. } => Ok(()),
        Credential::ApiKey { .. } => Err(ApiError::Forbidden(
            "MFA settings can only be changed with a login session, not with an API key".into(),
        )),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Enrollment {
    /// Base32 secret, for typing into an authenticator app by hand.
    secret: String,
    /// `otpauth://totp/...` URI, for a QR code.
    otpauth_uri: String,
}

#[derive(Deserialize, ToSchema)]
pub struct EnrollRequest {
    /// The account's current password.
    #[serde(default)]
    password: String,
}

/// Starts MFA enrolment: a new TOTP secret, not required at login until confirmed.
///
/// Needs the current password (counted towards the lockout like a login). Enrolling
/// again before confirming replaces the pending secret.
#[utoipa::path(post, path = "/api/auth/mfa/enroll", tag = "auth",
    security(("bearer" = [])),
    request_body = EnrollRequest,
    responses(
        (status = 200, body = Enrollment),
        (status = 400, description = "`wrong_password`"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "called with an API key, or `managed_by_provider` (auth mode cognito)"),
        (status = 409, description = "MFA is already enabled"),
        (status = 429, description = "`account_locked` or `rate_limited`, with Retry-After"),
    ))]
pub async fn enroll(
    State(state): State<AppState>,
    audit: Audit,
    principal: Principal,
    Json(body): Json<EnrollRequest>,
) -> ApiResult<(HeaderMap, Json<Enrollment>)> {
    audit.action("auth.mfa_enroll");
    interactive(&state, &principal)?;
    let user = &principal.user;
    limit_account(&state, &user.email)?;
    if user.totp_enabled {
        return Err(ApiError::Conflict(
            "MFA is already enabled; disable it before enrolling another authenticator".into(),
        ));
    }
    reauthenticate(&state, &audit, user, Some(&body.password), None, false).await?;
    let secret = totp::generate_secret();
    let patch = UserPatch {
        totp_secret: Some(Some(secret.clone())),
        totp_enabled: Some(false),
        ..UserPatch::default()
    };
    state
        .store
        .update_user(user.id, &patch, Utc::now())
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let otpauth_uri = totp::provisioning_uri(&secret, ISSUER, &user.email);
    Ok((
        no_store(),
        Json(Enrollment {
            secret,
            otpauth_uri,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct CodeRequest {
    /// The 6-digit code of the authenticator app.
    code: String,
}

/// Enables MFA with a first code from the enrolled authenticator.
#[utoipa::path(post, path = "/api/auth/mfa/confirm", tag = "auth",
    security(("bearer" = [])),
    request_body = CodeRequest,
    responses(
        (status = 200, body = Done, description = "`{\"status\": \"mfa_enabled\"}`"),
        (status = 400, description = "`mfa_not_enrolled`"),
        (status = 401, description = "`invalid_code`, or missing or invalid credentials"),
        (status = 403, description = "called with an API key, or `managed_by_provider` (auth mode cognito)"),
        (status = 409, description = "MFA is already enabled"),
        (status = 429, description = "`rate_limited`, with Retry-After"),
    ))]
pub async fn confirm(
    State(state): State<AppState>,
    audit: Audit,
    principal: Principal,
    Json(body): Json<CodeRequest>,
) -> ApiResult<Json<Done>> {
    audit.action("auth.mfa_confirm");
    interactive(&state, &principal)?;
    let user = &principal.user;
    limit_account(&state, &user.email)?;
    if user.totp_enabled {
        return Err(ApiError::Conflict("MFA is already enabled".into()));
    }
    if user.totp_secret.is_none() {
        return Err(ApiError::bad_request(
            "mfa_not_enrolled",
            "no authenticator is enrolled: call POST /api/auth/mfa/enroll first",
        ));
    }
    let now = Utc::now();
    if !accept_code(&state, &audit, user, &body.code, now).await? {
        return Err(invalid_code());
    }
    let patch = UserPatch {
        totp_enabled: Some(true),
        ..UserPatch::default()
    };
    state
        .store
        .update_user(user.id, &patch, now)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(Done {
        status: "mfa_enabled",
    }))
}

#[derive(Deserialize, ToSchema)]
pub struct DisableRequest {
    /// The account's current password.
    password: String,
    /// A current code of the authenticator app.
    code: String,
}

/// Disables MFA; needs the current password and a current code.
///
/// Wrong passwords and codes count towards the account lockout like failed logins.
#[utoipa::path(post, path = "/api/auth/mfa/disable", tag = "auth",
    security(("bearer" = [])),
    request_body = DisableRequest,
    responses(
        (status = 200, body = Done, description = "`{\"status\": \"mfa_disabled\"}`"),
        (status = 400, description = "`mfa_not_enabled`, `wrong_password` or `code_required`"),
        (status = 401, description = "`invalid_code`, or missing or invalid credentials"),
        (status = 403, description = "called with an API key, or `managed_by_provider` (auth mode cognito)"),
        (status = 429, description = "`account_locked` or `rate_limited`, with Retry-After"),
    ))]
pub async fn disable(
    State(state): State<AppState>,
    audit: Audit,
    principal: Principal,
    Json(body): Json<DisableRequest>,
) -> ApiResult<Json<Done>> {
    audit.action("auth.mfa_disable");
    interactive(&state, &principal)?;
    let user = &principal.user;
    limit_account(&state, &user.email)?;
    if !user.totp_enabled {
        return Err(ApiError::bad_request(
            "mfa_not_enabled",
            "MFA is not enabled on this account",
        ));
    }
    // A stolen access token must not be a way around the lockout to guess the password.
    reauthenticate(
        &state,
        &audit,
        user,
        Some(&body.password),
        Some(&body.code),
        true,
    )
    .await?;
    let now = Utc::now();
    let patch = UserPatch {
        totp_secret: Some(None),
        totp_enabled: Some(false),
        ..UserPatch::default()
    };
    state
        .store
        .update_user(user.id, &patch, now)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(Done {
        status: "mfa_disabled",
    }))
}
