//! The caller's own account: `GET/PUT /api/user/profile`. The routes carry no user id,
//! so a caller can only ever read or change their own row (no IDOR by construction).
//! Every role may edit its own profile, viewers included.

use axum::extract::State;
use chrono::Utc;
use corral_core::password;
use corral_store::UserPatch;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::audit::Audit;
use crate::auth::{Credential, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;
use crate::views::UserView;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_profile, update_profile))
}

/// Longest display name, in characters.
const DISPLAY_NAME_MAX: usize = 100;

/// Every field is optional; an empty object changes nothing and returns the profile.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    /// 1 to 100 characters after trimming, no control characters.
    display_name: Option<String>,
    /// Required (and checked) when `new_password` is given.
    current_password: Option<String>,
    /// Must meet the password policy; changing it signs out every refresh session.
    new_password: Option<String>,
    /// Must equal `new_password`.
    #[serde(rename = "confirmPassword", alias = "confirm_password")]
    confirm_password: Option<String>,
}

/// The signed-in user's profile.
#[utoipa::path(get, path = "/api/user/profile", tag = "profile",
    security(("bearer" = [])),
    responses(
        (status = 200, body = UserView),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn get_profile(principal: Principal) -> Json<UserView> {
    Json(UserView::from(&principal.user))
}

/// Changes the display name and/or the password of the signed-in user.
///
/// A password change needs the current password and an interactive login (not an API
/// key); wrong current passwords count towards the account lockout like failed logins.
#[utoipa::path(put, path = "/api/user/profile", tag = "profile",
    security(("bearer" = [])),
    request_body = UpdateProfile,
    responses(
        (status = 200, body = UserView),
        (status = 400, description = "invalid_display_name, weak_password (details.failed_rules), password_mismatch or wrong_password"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 403, description = "password change attempted with an API key, or `managed_by_provider`: the account signs in through Cognito"),
        (status = 429, description = "`account_locked`: too many wrong current passwords (or failed logins), with Retry-After"),
    ))]
async fn update_profile(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Json(body): Json<UpdateProfile>,
) -> ApiResult<Json<UserView>> {
    let user = &principal.user;
    audit.action("profile.update");
    audit.target(user.id);
    let mut patch = UserPatch {
        display_name: body
            .display_name
            .as_deref()
            .map(validate_display_name)
            .transpose()?,
        ..UserPatch::default()
    };
    if let Some(new_password) = body.new_password {
        // A separate action name so password changes are easy to find in the log.
        audit.action("profile.password");
        // Provider accounts have no password here (and a stored marker that is no hash).
        if state.cognito.is_some() || crate::auth::oidc::is_external(user) {
            return Err(crate::auth::oidc::managed_by_provider());
        }
        if let Credential::ApiKey { .. } = principal.credential {
            return Err(ApiError::Forbidden(
                "API keys cannot change the password; log in interactively".into(),
            ));
        }
        check_new_password(&new_password)?;
        if body.confirm_password.as_deref() != Some(new_password.as_str()) {
            audit.detail("password_mismatch");
            return Err(ApiError::bad_request(
                "password_mismatch",
                "new_password and confirmPassword do not match",
            ));
        }
        super::auth::reauthenticate(
            &state,
            &audit,
            user,
            body.current_password.as_deref(),
            None,
            false,
        )
        .await?;
        patch.password_hash = Some(state.passwords.hash(new_password).await?);
    }

    let now = Utc::now();
    let updated = state
        .store
        .update_user(user.id, &patch, now)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    if patch.password_hash.is_some() {
        // Whoever holds an old refresh token, access token or API key (a stolen one, or
        // another device) must log in again with the new password; this session too.
        let keys = super::auth::revoke_credentials(&state, user.id, true, now).await?;
        audit.detail(&format!("revoked_api_keys={keys}"));
    }
    Ok(Json(UserView::from(&updated)))
}

/// Trims and checks a display name; returns the value to store.
pub(super) fn validate_display_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let len = name.chars().count();
    if len == 0 || len > DISPLAY_NAME_MAX {
        return Err(ApiError::bad_request(
            "invalid_display_name",
            format!("display_name must be 1 to {DISPLAY_NAME_MAX} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_display_name",
            "display_name must not contain control characters",
        ));
    }
    Ok(name.to_string())
}

/// Applies the password policy, naming every failed rule so the UI can show them.
pub(super) fn check_new_password(candidate: &str) -> ApiResult<()> {
    let failed = password::check(candidate);
    if failed.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest {
        code: "weak_password",
        message: password::explain(&failed),
        details: Some(json!({ "failed_rules": failed })),
    })
}
