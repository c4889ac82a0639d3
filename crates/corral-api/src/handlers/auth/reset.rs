//! Password reset by e-mailed token. Requesting one always answers 202; confirming sets
//! the new password, proves the address (it is marked verified), signs out every session
//! and lifts a lockout.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use corral_core::{TokenPurpose, secret};
use corral_store::UserPatch;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{
    Accepted, Done, EmailRequest, check_new_password, invalid_token, limit_account, valid_email,
};
use crate::audit::Audit;
use crate::auth::oidc;
use crate::error::ApiResult;
use crate::extract::Json;
use crate::mail::MailJob;
use crate::state::AppState;

/// Mails a password-reset link (valid 1 hour) if the address has an account.
///
/// Always 202 for a valid address, in the same time, so the answer does not tell which
/// are registered: the mail leaves from a background queue.
#[utoipa::path(post, path = "/api/auth/reset-password", tag = "auth",
    request_body = EmailRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 400, description = "`invalid_email`"),
        (status = 429, description = "`rate_limited`, with Retry-After"),
    ))]
pub async fn reset_request(
    State(state): State<AppState>,
    audit: Audit,
    Json(body): Json<EmailRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    audit.action("auth.reset_request");
    if let Some(cognito) = &state.cognito {
        let (status, accepted) =
            super::cognito::reset_request(&state, cognito, &audit, &body.email).await?;
        return Ok((status, Json(accepted)));
    }
    let email = valid_email(&body.email)?;
    audit.claimed_email(&email);
    limit_account(&state, &email)?;
    // The same work for every address (a lookup for the audit row, one queued job),
    // and no mail sent here: the answer takes as long with an account as without.
    match state.store.user_by_email(&email).await? {
        Some(user) => {
            audit.actor(&user);
            if oidc::is_external(&user) {
                // Provider accounts reset their password at the provider; the worker
                // drops the job, and the answer is the same.
                audit.detail("external_account");
            }
        }
        None => audit.detail("unknown_email"),
    }
    crate::mail::enqueue(&state, &MailJob::ResetPassword { to: email }).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "reset_sent",
            message: "check your mailbox: if an account uses this address, a password-reset \
                      link is on its way",
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
pub struct ResetConfirmRequest {
    /// The `token` parameter of the e-mailed link; in auth mode `cognito`, the code of the
    /// reset mail (also accepted as `code`).
    #[serde(alias = "code")]
    token: String,
    /// Auth mode `cognito` only, and required there: the address the code was sent to.
    email: Option<String>,
    /// The new password; same policy as at sign-up.
    password: String,
    #[serde(rename = "confirmPassword")]
    confirm_password: String,
    /// Also delete every API key of the account (default true): whoever took over the
    /// account may have made one. False keeps them.
    #[serde(default = "yes")]
    revoke_api_keys: bool,
}

fn yes() -> bool {
    true
}

/// Sets a new password with the token of the reset mail (single use).
///
/// Also marks the address verified, signs out every session (their access tokens stop
/// working at once), deletes the account's API keys unless `revoke_api_keys` is false,
/// and lifts a lockout.
#[utoipa::path(post, path = "/api/auth/reset-password/confirm", tag = "auth",
    request_body = ResetConfirmRequest,
    responses(
        (status = 200, body = Done, description = "`{\"status\": \"password_reset\"}`"),
        (status = 400, description = "`weak_password` (details.failed_rules), `password_mismatch` or `invalid_token`; `invalid_email` (auth mode cognito, no address)"),
    ))]
pub async fn reset_confirm(
    State(state): State<AppState>,
    audit: Audit,
    Json(body): Json<ResetConfirmRequest>,
) -> ApiResult<Json<Done>> {
    audit.action("auth.reset_confirm");
    if let Some(cognito) = &state.cognito {
        let done = super::cognito::reset_confirm(
            &state,
            cognito,
            &audit,
            body.email.as_deref(),
            &body.token,
            &body.password,
            &body.confirm_password,
        )
        .await?;
        return Ok(Json(done));
    }
    // Checked and hashed before the token is spent, so a refused password or a failure
    // while hashing leaves the link usable.
    check_new_password(&body.password, &body.confirm_password)?;
    let hash = state.passwords.hash(body.password).await?;
    let now = Utc::now();
    let user_id = state
        .store
        .consume_action_token(&secret::hash(&body.token), TokenPurpose::ResetPassword, now)
        .await?
        .ok_or_else(invalid_token)?;
    let patch = UserPatch {
        password_hash: Some(hash),
        email_verified: Some(true),
        ..UserPatch::default()
    };
    let user = state
        .store
        .update_user(user_id, &patch, now)
        .await?
        .ok_or_else(invalid_token)?;
    audit.actor(&user);
    let keys = super::revoke_credentials(&state, user.id, body.revoke_api_keys, now).await?;
    audit.detail(&format!("revoked_api_keys={keys}"));
    state.store.clear_login_failures(&user.email).await?;
    Ok(Json(Done {
        status: "password_reset",
    }))
}
