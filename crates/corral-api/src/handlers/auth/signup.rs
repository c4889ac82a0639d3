//! Sign-up and e-mail verification. A new account is an unverified `user`; the link in
//! the verification mail proves the address. Signing up with an address that already has
//! an account answers exactly the same and mails the owner instead.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use corral_core::{TokenPurpose, User, secret};
use corral_store::UserPatch;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{
    Accepted, Done, EmailRequest, check_new_password, invalid_token, limit_account, valid_email,
};
use crate::audit::Audit;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::mail::MailJob;
use crate::state::AppState;

const VERIFICATION_SENT: Accepted = Accepted {
    status: "verification_sent",
    message: "check your mailbox: a verification link is on its way if the address can \
              receive mail; open it, then log in",
};

#[derive(Deserialize, ToSchema)]
pub struct SignupRequest {
    email: String,
    /// At least 8 characters with an upper-case letter, a lower-case letter, a digit and
    /// a symbol.
    password: String,
    #[serde(rename = "confirmPassword")]
    confirm_password: String,
}

/// Creates an account (role `user`, or `viewer` where `signup_default_role` says so;
/// unverified) and mails a verification link.
///
/// Always 202 for a valid request, also when the address already has an account (its
/// owner is mailed instead), so the answer does not tell which addresses are registered.
#[utoipa::path(post, path = "/api/auth/signup", tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 400, description = "`invalid_email`, `weak_password` (details.failed_rules) or `password_mismatch`"),
        (status = 403, description = "`signup_disabled`"),
        (status = 429, description = "`rate_limited`, with Retry-After"),
    ))]
pub async fn signup(
    State(state): State<AppState>,
    audit: Audit,
    Json(body): Json<SignupRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    audit.action("auth.signup");
    if !state.settings.signup_enabled {
        return Err(ApiError::denied(
            StatusCode::FORBIDDEN,
            "signup_disabled",
            "sign-up is disabled on this server; ask an administrator for an account",
        ));
    }
    if let Some(cognito) = &state.cognito {
        let (status, accepted) = super::cognito::signup(
            &state,
            cognito,
            &audit,
            &body.email,
            &body.password,
            &body.confirm_password,
        )
        .await?;
        return Ok((status, Json(accepted)));
    }
    let email = valid_email(&body.email)?;
    audit.claimed_email(&email);
    // Each call mails the address (a link, or a notice when it is taken): limited per
    // address so nobody can flood a mailbox.
    limit_account(&state, &email)?;
    check_new_password(&body.password, &body.confirm_password)?;
    // Hashed before finding out whether the address is taken, so both answers take as long.
    let hash = state.passwords.hash(body.password).await?;
    let user = User::new(&email, hash, state.settings.signup_default_role, Utc::now());
    let mail = match state.store.create_user(&user).await {
        Ok(()) => {
            audit.actor(&user);
            MailJob::VerifyEmail { to: email }
        }
        Err(corral_store::Error::Conflict(_)) => {
            audit.detail("existing_account");
            MailJob::SignupExisting { to: email }
        }
        Err(e) => return Err(e.into()),
    };
    crate::mail::enqueue(&state, &mail).await?;
    Ok((StatusCode::ACCEPTED, Json(VERIFICATION_SENT)))
}

#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// The `token` parameter of the e-mailed link; in auth mode `cognito`, the code of the
    /// confirmation mail (also accepted as `code`).
    #[serde(alias = "code")]
    token: String,
    /// Auth mode `cognito` only, and required there: the address the code was sent to.
    email: Option<String>,
}

/// Marks the e-mail address verified with the token of the verification mail (single use).
///
/// In auth mode `cognito`: confirms the sign-up with the mailed code and the address.
#[utoipa::path(post, path = "/api/auth/verify", tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, body = Done, description = "`{\"status\": \"verified\"}`"),
        (status = 400, description = "`invalid_token`: unknown, used or expired; `invalid_email` (auth mode cognito, no address)"),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    audit: Audit,
    Json(body): Json<TokenRequest>,
) -> ApiResult<Json<Done>> {
    audit.action("auth.verify");
    if let Some(cognito) = &state.cognito {
        let done =
            super::cognito::verify(&state, cognito, &audit, body.email.as_deref(), &body.token)
                .await?;
        return Ok(Json(done));
    }
    let now = Utc::now();
    let user_id = state
        .store
        .consume_action_token(&secret::hash(&body.token), TokenPurpose::VerifyEmail, now)
        .await?
        .ok_or_else(invalid_token)?;
    let patch = UserPatch {
        email_verified: Some(true),
        ..UserPatch::default()
    };
    let user = state
        .store
        .update_user(user_id, &patch, now)
        .await?
        .ok_or_else(invalid_token)?;
    audit.actor(&user);
    Ok(Json(Done { status: "verified" }))
}

/// Mails a new verification link if the address has an account still waiting for one.
///
/// Always 202 for a valid address, so the answer does not tell which are registered.
#[utoipa::path(post, path = "/api/auth/resend-verification", tag = "auth",
    request_body = EmailRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 400, description = "`invalid_email`"),
        (status = 429, description = "`rate_limited`, with Retry-After"),
    ))]
pub async fn resend_verification(
    State(state): State<AppState>,
    audit: Audit,
    Json(body): Json<EmailRequest>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    audit.action("auth.resend_verification");
    if let Some(cognito) = &state.cognito {
        let (status, accepted) =
            super::cognito::resend_verification(&state, cognito, &audit, &body.email).await?;
        return Ok((status, Json(accepted)));
    }
    let email = valid_email(&body.email)?;
    audit.claimed_email(&email);
    // Each call sends a mail: limited per address, as at sign-up.
    limit_account(&state, &email)?;
    // The same work for every address; the worker sends only to a pending account.
    match state.store.user_by_email(&email).await? {
        Some(user) if !user.email_verified && !user.disabled => audit.actor(&user),
        _ => audit.detail("no_pending_account"),
    }
    crate::mail::enqueue(&state, &MailJob::VerifyEmail { to: email }).await?;
    Ok((StatusCode::ACCEPTED, Json(VERIFICATION_SENT)))
}
