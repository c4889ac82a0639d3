//! The authentication flows under `/api/auth`: sign-up and e-mail verification, login
//! with an optional TOTP step, refresh-token rotation, logout, password reset, the
//! first-admin setup, and TOTP enrolment.
//!
//! No answer reveals whether an address has an account: sign-up, resend and reset always
//! say "sent", and a failed or locked login reads the same for known and unknown
//! addresses (same code, same message, an Argon2 verification either way).

mod cognito;
mod config;
mod login;
pub(crate) mod mails;
mod mfa;
mod reset;
mod session;
mod setup;
mod signup;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use corral_core::user::{is_valid_email, normalize_email};
use corral_core::{User, password as policy, totp};
use corral_store::LoginAttempt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::audit::{Audit, ClientIp};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup::signup))
        .routes(routes!(signup::verify))
        .routes(routes!(signup::resend_verification))
        .routes(routes!(login::login))
        .routes(routes!(login::mfa_verify))
        .routes(routes!(session::refresh))
        .routes(routes!(session::logout))
        .routes(routes!(reset::reset_request))
        .routes(routes!(reset::reset_confirm))
        .routes(routes!(setup::setup))
        .routes(routes!(mfa::enroll))
        .routes(routes!(mfa::confirm))
        .routes(routes!(mfa::disable))
}

/// Routes every screen reads before signing in; outside the auth rate limit, so loading
/// pages does not use up the sign-in attempts of an address.
pub fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(config::config))
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

/// `{"status": "..."}`: the answer of a step that has nothing else to return.
#[derive(Serialize, ToSchema)]
pub struct Done {
    /// What happened, e.g. `verified`, `password_reset`, `mfa_enabled`.
    status: &'static str,
}

/// 202 answer of the requests that may send mail. It is the same whether or not the
/// address has an account, so it cannot be used to find out which addresses do.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// `verification_sent` or `reset_sent`.
    status: &'static str,
    message: &'static str,
}

#[derive(Deserialize, ToSchema)]
pub struct EmailRequest {
    email: String,
}

/// Per-account limit on the routes that guess at one account (login, MFA, reset), on top
/// of the per-IP one: spreading guesses over many addresses does not help an attacker
/// against one account.
pub(crate) fn limit_account(state: &AppState, email: &str) -> ApiResult<()> {
    state
        .account_limiter
        .check(email)
        .map_err(|retry_after| ApiError::TooManyRequests {
            message: "too many attempts for this account; retry later".into(),
            retry_after,
        })
}

/// A trimmed, lower-cased address, or 400 `invalid_email`.
fn valid_email(raw: &str) -> ApiResult<String> {
    if !is_valid_email(raw) {
        return Err(ApiError::bad_request(
            "invalid_email",
            "enter a valid e-mail address, e.g. user@example.com",
        ));
    }
    Ok(normalize_email(raw))
}

/// Corral's password policy (400 `weak_password` naming each failed rule), then the
/// confirmation (400 `password_mismatch`).
fn check_new_password(password: &str, confirm: &str) -> ApiResult<()> {
    let failed = policy::check(password);
    if !failed.is_empty() {
        return Err(ApiError::BadRequest {
            code: "weak_password",
            message: policy::explain(&failed),
            details: Some(json!({ "failed_rules": failed })),
        });
    }
    if password != confirm {
        return Err(ApiError::bad_request(
            "password_mismatch",
            "password and confirmPassword do not match",
        ));
    }
    Ok(())
}

fn invalid_credentials() -> ApiError {
    ApiError::denied(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong e-mail address or password",
    )
}

fn invalid_code() -> ApiError {
    ApiError::denied(
        StatusCode::UNAUTHORIZED,
        "invalid_code",
        "wrong or already used authenticator code; wait for the next one",
    )
}

fn account_disabled() -> ApiError {
    ApiError::denied(
        StatusCode::FORBIDDEN,
        "account_disabled",
        "this account has been disabled by an administrator",
    )
}

/// One message for every locked address, whether or not it has an account.
pub(crate) fn account_locked(remaining: chrono::Duration) -> ApiError {
    ApiError::Denied {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "account_locked",
        message: "too many failed attempts: this account is locked for a while; \
                  try again later or reset the password"
            .into(),
        retry_after: Some(remaining.to_std().unwrap_or_default()),
    }
}

/// An attempt at an account's secret (password, TOTP code), counted before the secret
/// is checked (see `Store::count_login_attempt`): concurrent guesses cannot all pass
/// the lock check before any of them counts.
pub(crate) struct Attempt {
    /// Set when this attempt was the last one before the lock.
    locks_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl Attempt {
    /// The answer to a failed attempt: `refusal`, or `account_locked` when this attempt
    /// used up the last guess.
    pub(crate) fn failed(&self, refusal: ApiError) -> ApiError {
        match self.locks_until {
            Some(until) => account_locked(until - self.now),
            None => refusal,
        }
    }
}

/// Counts an attempt at `email`'s secret before it is checked; 429 `account_locked`
/// (nothing counted) while the address is locked out. A successful attempt is undone
/// with `clear_login_failures` (`sign_in` does it, `reauthenticate` too).
pub(crate) async fn count_attempt(
    state: &AppState,
    audit: &Audit,
    email: &str,
    now: DateTime<Utc>,
) -> ApiResult<Attempt> {
    let settings = &state.settings;
    let lock_for = chrono::Duration::from_std(settings.lockout_duration)
        .map_err(|e| ApiError::internal(format!("lockout duration: {e}")))?;
    match state
        .store
        .count_login_attempt(email, settings.lockout_threshold, lock_for, now)
        .await?
    {
        LoginAttempt::Allowed { locked_until } => Ok(Attempt {
            locks_until: locked_until,
            now,
        }),
        LoginAttempt::Locked { until } => {
            audit.detail("locked");
            Err(account_locked(until - now))
        }
    }
}

/// Proves that the caller is the account's owner, not only the holder of an access
/// token (which may be stolen): the current password and, with `mfa`, a current
/// authenticator code. Needed before anything that would let a token thief stay in
/// (an API key, a new password, MFA changes). Counted like a login, so it is no way
/// around the lockout; a success clears the address's failures like a login does.
pub(crate) async fn reauthenticate(
    state: &AppState,
    audit: &Audit,
    user: &User,
    password: Option<&str>,
    code: Option<&str>,
    mfa: bool,
) -> ApiResult<()> {
    let now = Utc::now();
    let attempt = count_attempt(state, audit, &user.email, now).await?;
    let proof = match &state.cognito {
        Some(cognito) => {
            cognito::reauthenticate(cognito, audit, &user.email, password, code).await?
        }
        None => local_proof(state, audit, user, password, code, mfa, now).await?,
    };
    proof.map_err(|refusal| attempt.failed(refusal))?;
    state.store.clear_login_failures(&user.email).await?;
    Ok(())
}

/// The checks of `reauthenticate` against Corral's own password hash and TOTP secret.
/// Ok(Err(refusal)) when a factor is wrong or missing.
async fn local_proof(
    state: &AppState,
    audit: &Audit,
    user: &User,
    password: Option<&str>,
    code: Option<&str>,
    mfa: bool,
    now: DateTime<Utc>,
) -> ApiResult<Result<(), ApiError>> {
    // Argon2's cost grows with the input; anything over the policy's maximum cannot be
    // the password, so it is refused without hashing.
    let password = password.filter(|p| !p.is_empty() && p.chars().count() <= policy::MAX_LEN);
    let right = match password {
        Some(password) => {
            state
                .passwords
                .verify(password.to_string(), user.password_hash.clone())
                .await?
        }
        None => false,
    };
    if !right {
        audit.detail("wrong_password");
        return Ok(Err(wrong_password()));
    }
    if mfa {
        let Some(code) = code.filter(|c| !c.trim().is_empty()) else {
            audit.detail("code_required");
            return Ok(Err(code_required()));
        };
        if !accept_code(state, audit, user, code, now).await? {
            return Ok(Err(invalid_code()));
        }
    }
    Ok(Ok(()))
}

fn code_required() -> ApiError {
    ApiError::bad_request(
        "code_required",
        "this account has MFA: send a current code of the authenticator app as `code`",
    )
}

/// Ends every login of the user (refresh sessions, and with them the access tokens
/// issued to them) and, with `api_keys`, deletes their API keys: what a password
/// change, a reset and "log out everywhere" do, so that a stolen credential does not
/// outlive them. Returns how many keys were deleted.
pub(crate) async fn revoke_credentials(
    state: &AppState,
    user_id: Uuid,
    api_keys: bool,
    now: DateTime<Utc>,
) -> ApiResult<u64> {
    state.store.revoke_user_sessions(user_id, now).await?;
    if !api_keys {
        return Ok(0);
    }
    Ok(state.store.delete_user_api_keys(user_id).await?)
}

fn wrong_password() -> ApiError {
    ApiError::bad_request("wrong_password", "the current password is missing or wrong")
}

/// Checks a TOTP code against the user's confirmed or pending secret and burns its time
/// step, so a code cannot be replayed by someone who saw it. False (with the audit detail
/// set) when the code is wrong or was already used.
async fn accept_code(
    state: &AppState,
    audit: &Audit,
    user: &User,
    code: &str,
    now: DateTime<Utc>,
) -> ApiResult<bool> {
    let step = user
        .totp_secret
        .as_deref()
        .and_then(|secret| totp::verify(secret, code, now.timestamp()));
    let Some(step) = step else {
        audit.detail("bad_totp");
        return Ok(false);
    };
    if !state.store.consume_totp_step(user.id, step).await? {
        audit.detail("code_reused");
        return Ok(false);
    }
    Ok(true)
}

fn invalid_token() -> ApiError {
    ApiError::bad_request(
        "invalid_token",
        "this link is invalid, expired or already used; ask for a new one",
    )
}
