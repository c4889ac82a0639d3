//! Login: e-mail and password, then (when MFA is on) a TOTP code. Failures count towards
//! the address's lockout whether or not it has an account, and a password is checked
//! with Argon2 either way, so neither the answer nor its timing tells who has one.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use corral_core::password::MAX_LEN;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

use super::session::{Client, TokenPair, no_store, sign_in};
use super::{
    accept_code, account_disabled, count_attempt, invalid_code, invalid_credentials, limit_account,
    valid_email,
};
use crate::audit::Audit;
use crate::auth::jwt::TokenType;
use crate::auth::oidc;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::state::AppState;

/// How long the password step stays good for the TOTP step.
const MFA_TTL: Duration = Duration::from_secs(5 * 60);

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    email: String,
    password: String,
}

/// The password was right and the account has MFA: send a code to `/api/auth/mfa/verify`.
#[derive(Serialize, ToSchema)]
pub struct MfaChallenge {
    /// Always true.
    pub(super) mfa_required: bool,
    /// Proves the password step; only accepted by `POST /api/auth/mfa/verify`.
    pub(super) mfa_token: String,
    /// Always `Bearer`.
    pub(super) token_type: &'static str,
    /// Seconds until `mfa_token` expires.
    pub(super) expires_in: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    Tokens(TokenPair),
    MfaRequired(MfaChallenge),
}

/// Logs in with e-mail and password.
///
/// Answers the token pair (and sets the `corral_refresh` cookie), or, when the account has
/// MFA enabled, `{mfa_required: true, mfa_token, ...}` for the second step.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse, description = "a token pair, or an MFA challenge",
            headers(("Set-Cookie" = String, description = "`corral_refresh`, with a token pair"))),
        (status = 400, description = "`invalid_email`"),
        (status = 401, description = "`invalid_credentials`"),
        (status = 403, description = "`email_not_verified`, `account_disabled`, `password_reset_required` or `no_role` (auth mode cognito)"),
        (status = 429, description = "`account_locked` or `rate_limited`, with Retry-After"),
    ))]
pub async fn login(
    State(state): State<AppState>,
    audit: Audit,
    client: Client,
    Json(body): Json<LoginRequest>,
) -> ApiResult<(HeaderMap, Json<LoginResponse>)> {
    audit.action("auth.login");
    if let Some(cognito) = &state.cognito {
        let (headers, answer) =
            super::cognito::login(&state, cognito, &audit, &body.email, &body.password).await?;
        return Ok((headers, Json(answer)));
    }
    let email = valid_email(&body.email)?;
    audit.claimed_email(&email);
    limit_account(&state, &email)?;
    let now = Utc::now();
    let attempt = count_attempt(&state, &audit, &email, now).await?;

    // Accounts of the identity provider have no password here: they fail like unknown ones.
    let user = state
        .store
        .user_by_email(&email)
        .await?
        .filter(|u| !oidc::is_external(u));
    // Over-long passwords are refused before Argon2, whose cost grows with the input.
    let verified = if body.password.chars().count() > MAX_LEN {
        false
    } else if let Some(user) = &user {
        state
            .passwords
            .verify(body.password, user.password_hash.clone())
            .await?
    } else {
        state.passwords.verify_dummy(body.password).await?;
        false
    };
    let user = match user {
        Some(user) if verified => user,
        other => {
            audit.detail(if other.is_some() {
                "bad_password"
            } else {
                "unknown_email"
            });
            return Err(attempt.failed(invalid_credentials()));
        }
    };

    // Only someone who knows the password learns that the account is disabled or unverified.
    audit.actor(&user);
    if user.disabled {
        audit.detail("disabled");
        return Err(account_disabled());
    }
    if state.settings.require_verified_email && !user.email_verified {
        audit.detail("unverified");
        return Err(ApiError::denied(
            StatusCode::FORBIDDEN,
            "email_not_verified",
            "verify your e-mail address first: open the link in the verification mail, \
             or ask for a new one at POST /api/auth/resend-verification",
        ));
    }
    if user.totp_enabled {
        // The attempt count is not cleared yet: TOTP guesses must keep counting towards it.
        audit.detail("mfa_required");
        let mfa_token = state
            .keys
            .issue(user.id, user.role, TokenType::Mfa, MFA_TTL, None)?;
        return Ok((
            no_store(),
            Json(LoginResponse::MfaRequired(MfaChallenge {
                mfa_required: true,
                mfa_token,
                token_type: "Bearer",
                expires_in: MFA_TTL.as_secs(),
            })),
        ));
    }
    let (headers, pair) = sign_in(&state, user, &client).await?;
    Ok((headers, Json(LoginResponse::Tokens(pair))))
}

#[derive(Deserialize, ToSchema)]
pub struct MfaVerifyRequest {
    /// From the login answer.
    mfa_token: String,
    /// The 6-digit code of the authenticator app.
    code: String,
}

/// The second login step: the authenticator code for an MFA challenge.
///
/// Wrong codes count towards the lockout like wrong passwords; a code is accepted once.
#[utoipa::path(post, path = "/api/auth/mfa/verify", tag = "auth",
    request_body = MfaVerifyRequest,
    responses(
        (status = 200, body = TokenPair,
            headers(("Set-Cookie" = String, description = "the `corral_refresh` cookie"))),
        (status = 401, description = "`invalid_mfa_token` or `invalid_code`"),
        (status = 403, description = "`account_disabled`"),
        (status = 429, description = "`account_locked` or `rate_limited`, with Retry-After"),
    ))]
pub async fn mfa_verify(
    State(state): State<AppState>,
    audit: Audit,
    client: Client,
    Json(body): Json<MfaVerifyRequest>,
) -> ApiResult<(HeaderMap, Json<TokenPair>)> {
    audit.action("auth.mfa_verify");
    if let Some(cognito) = &state.cognito {
        let (headers, pair) =
            super::cognito::mfa_verify(&state, cognito, &audit, &body.mfa_token, &body.code)
                .await?;
        return Ok((headers, Json(pair)));
    }
    let invalid_challenge = || {
        ApiError::denied(
            StatusCode::UNAUTHORIZED,
            "invalid_mfa_token",
            "the MFA challenge is invalid or expired; log in again",
        )
    };
    let claims = state
        .keys
        .verify(&body.mfa_token, TokenType::Mfa)
        .map_err(|_| invalid_challenge())?;
    let user = state
        .store
        .user_by_id(claims.sub)
        .await?
        .filter(|u| u.totp_enabled)
        .ok_or_else(invalid_challenge)?;
    audit.actor(&user);
    limit_account(&state, &user.email)?;
    let now = Utc::now();
    let attempt = count_attempt(&state, &audit, &user.email, now).await?;
    if user.disabled {
        audit.detail("disabled");
        return Err(account_disabled());
    }
    if !accept_code(&state, &audit, &user, &body.code, now).await? {
        return Err(attempt.failed(invalid_code()));
    }
    let (headers, pair) = sign_in(&state, user, &client).await?;
    Ok((headers, Json(pair)))
}
