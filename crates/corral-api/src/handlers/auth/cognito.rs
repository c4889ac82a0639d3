//! The `/api/auth/*` flows in auth mode `cognito`: the same paths and answer shapes as
//! the built-in ones, carried out by the user pool. Sign-up and reset mail a code
//! (Cognito sends it), which comes back with the address to `verify` and
//! `reset-password/confirm`. Login answers the pool's access token, its refresh token
//! (prefixed with the user name a SECRET_HASH needs) and its ID token, after the local
//! user row is created or brought in line with the pool's groups.
//!
//! The built-in protections stay in front: the per-IP and per-account rate limits and
//! the address lockout, on top of Cognito's own.

use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use corral_store::UserPatch;

use super::login::{LoginResponse, MfaChallenge};
use super::session::{TokenPair, provider_pair};
use super::{
    Accepted, Done, account_disabled, check_new_password, count_attempt, invalid_code,
    invalid_credentials, invalid_token, limit_account, valid_email,
};
use crate::audit::Audit;
use crate::auth::cognito::{Cognito, Failure, Tokens, unwrap_refresh, wrap_refresh};
use crate::auth::oidc;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Cognito keeps an MFA session for 3 minutes.
const MFA_SESSION_SECS: u64 = 180;

const CODE_SENT: Accepted = Accepted {
    status: "verification_sent",
    message: "check your mailbox: a confirmation code is on its way if the address can \
              receive mail; send it with your address to POST /api/auth/verify, then log in",
};

fn is(failure: &Failure, codes: &[&str]) -> bool {
    failure.code().is_some_and(|code| codes.contains(&code))
}

fn weak_password(failure: Failure) -> ApiError {
    match failure {
        Failure::Rejected { message, .. } => ApiError::bad_request(
            "weak_password",
            format!("the identity provider refused the password: {message}"),
        ),
        other => other.into(),
    }
}

/// The address a code-carrying request names; required in this mode.
fn required_email(email: Option<&str>) -> ApiResult<String> {
    valid_email(email.unwrap_or_default())
}

pub async fn signup(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    email: &str,
    password: &str,
    confirm: &str,
) -> ApiResult<(StatusCode, Accepted)> {
    let email = valid_email(email)?;
    audit.claimed_email(&email);
    limit_account(state, &email)?;
    check_new_password(password, confirm)?;
    match cognito.sign_up(&email, password).await {
        Ok(()) => {}
        // The same answer, so sign-up does not tell which addresses have accounts.
        Err(f) if is(&f, &["UsernameExistsException"]) => audit.detail("existing_account"),
        Err(f) if is(&f, &["InvalidPasswordException"]) => return Err(weak_password(f)),
        Err(f) => return Err(f.into()),
    }
    Ok((StatusCode::ACCEPTED, CODE_SENT))
}

/// ConfirmSignUp with the code Cognito mailed.
pub async fn verify(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    email: Option<&str>,
    code: &str,
) -> ApiResult<Done> {
    let email = required_email(email)?;
    audit.claimed_email(&email);
    // Codes are short: guessing them is limited like passwords.
    limit_account(state, &email)?;
    match cognito.confirm_sign_up(&email, code.trim()).await {
        Ok(()) => Ok(Done { status: "verified" }),
        Err(f)
            if is(
                &f,
                &[
                    "CodeMismatchException",
                    "ExpiredCodeException",
                    "UserNotFoundException",
                    "NotAuthorizedException",
                ],
            ) =>
        {
            Err(invalid_token())
        }
        Err(f) => Err(f.into()),
    }
}

pub async fn resend_verification(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    email: &str,
) -> ApiResult<(StatusCode, Accepted)> {
    let email = valid_email(email)?;
    audit.claimed_email(&email);
    limit_account(state, &email)?;
    match cognito.resend_confirmation(&email).await {
        Ok(()) => {}
        // Unknown or already confirmed: the same answer, as in the built-in mode.
        Err(f @ Failure::Rejected { .. }) if !is(&f, &["TooManyRequestsException"]) => {
            audit.detail("no_pending_account")
        }
        Err(f) => return Err(f.into()),
    }
    Ok((StatusCode::ACCEPTED, CODE_SENT))
}

pub async fn login(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    email: &str,
    password: &str,
) -> ApiResult<(HeaderMap, LoginResponse)> {
    let email = valid_email(email)?;
    audit.claimed_email(&email);
    limit_account(state, &email)?;
    let attempt = count_attempt(state, audit, &email, Utc::now()).await?;
    match cognito.sign_in(&email, password).await {
        Ok(crate::auth::cognito::SignIn::Tokens(tokens)) => {
            let (headers, pair) = finish(state, cognito, audit, tokens, None).await?;
            Ok((headers, LoginResponse::Tokens(pair)))
        }
        Ok(crate::auth::cognito::SignIn::Mfa { session }) => {
            audit.detail("mfa_required");
            Ok((
                super::session::no_store(),
                LoginResponse::MfaRequired(MfaChallenge {
                    mfa_required: true,
                    // Cognito checks that the session belongs to this user name.
                    mfa_token: wrap_refresh(&email, &session),
                    token_type: "Bearer",
                    expires_in: MFA_SESSION_SECS,
                }),
            ))
        }
        Err(f) if is(&f, &["NotAuthorizedException", "UserNotFoundException"]) => {
            audit.detail("bad_password");
            Err(attempt.failed(invalid_credentials()))
        }
        Err(f) if is(&f, &["UserNotConfirmedException"]) => {
            audit.detail("unverified");
            Err(ApiError::denied(
                StatusCode::FORBIDDEN,
                "email_not_verified",
                "confirm your e-mail address first: send the code from the confirmation mail \
                 with your address to POST /api/auth/verify, or ask for a new one at \
                 POST /api/auth/resend-verification",
            ))
        }
        Err(f) if is(&f, &["PasswordResetRequiredException"]) => Err(ApiError::denied(
            StatusCode::FORBIDDEN,
            "password_reset_required",
            "this account must set a new password: ask for a code at \
             POST /api/auth/reset-password",
        )),
        Err(f) => Err(f.into()),
    }
}

/// The TOTP step of a login whose account has MFA in the pool.
pub async fn mfa_verify(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    mfa_token: &str,
    code: &str,
) -> ApiResult<(HeaderMap, TokenPair)> {
    let invalid_challenge = || {
        ApiError::denied(
            StatusCode::UNAUTHORIZED,
            "invalid_mfa_token",
            "the MFA challenge is invalid or expired; log in again",
        )
    };
    let (email, session) = unwrap_refresh(mfa_token).ok_or_else(invalid_challenge)?;
    audit.claimed_email(&email);
    limit_account(state, &email)?;
    let attempt = count_attempt(state, audit, &email, Utc::now()).await?;
    match cognito.answer_mfa(&email, session, code.trim()).await {
        Ok(tokens) => finish(state, cognito, audit, tokens, None).await,
        Err(f) if is(&f, &["CodeMismatchException"]) => {
            audit.detail("bad_totp");
            Err(attempt.failed(invalid_code()))
        }
        Err(f)
            if is(
                &f,
                &[
                    "NotAuthorizedException",
                    "ExpiredCodeException",
                    "UserNotFoundException",
                    "ResourceNotFoundException",
                ],
            ) =>
        {
            Err(invalid_challenge())
        }
        Err(f) => Err(f.into()),
    }
}

pub fn invalid_refresh() -> ApiError {
    ApiError::denied(
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
        "missing, unknown, revoked or expired refresh token; log in again",
    )
}

/// REFRESH_TOKEN_AUTH. The pool keeps its refresh token (unless it rotates them), so
/// the answer carries the same one back.
pub async fn refresh(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    token: Option<String>,
) -> ApiResult<(HeaderMap, TokenPair)> {
    let token = token.ok_or_else(invalid_refresh)?;
    let (username, refresh_token) = unwrap_refresh(&token).ok_or_else(invalid_refresh)?;
    match cognito.refresh(&username, refresh_token).await {
        Ok(tokens) => {
            finish(
                state,
                cognito,
                audit,
                tokens,
                Some(refresh_token.to_string()),
            )
            .await
        }
        Err(f) if is(&f, &["NotAuthorizedException", "UserNotFoundException"]) => {
            Err(invalid_refresh())
        }
        Err(f) => Err(f.into()),
    }
}

/// Ends the presented refresh token (RevokeToken) or, with `all`, every session of the
/// bearer's user (GlobalSignOut, which needs the pool's access token).
pub async fn logout(
    cognito: &Cognito,
    audit: &Audit,
    refresh_token: Option<String>,
    all: bool,
    bearer: Option<&str>,
) -> ApiResult<()> {
    if all {
        let access_token = bearer.ok_or_else(|| {
            ApiError::Unauthorized(
                "logging out everywhere needs `Authorization: Bearer <access token>`".into(),
            )
        })?;
        audit.detail("all");
        return match cognito.sign_out_everywhere(access_token).await {
            Ok(()) => Ok(()),
            Err(f) if is(&f, &["NotAuthorizedException"]) => Err(ApiError::Unauthorized(
                "logging out everywhere needs a valid access token of the identity provider".into(),
            )),
            Err(f) => Err(f.into()),
        };
    }
    match refresh_token.as_deref().and_then(unwrap_refresh) {
        // Logging out with a token that is no longer good is still a logout; a provider
        // that cannot be reached leaves the token to expire, and the cookie goes anyway.
        Some((_, token)) => {
            if let Err(f) = cognito.revoke(token).await {
                audit.detail("revoke_failed");
                if let Failure::Unreachable(why) = f {
                    tracing::warn!(error = %why, "could not revoke a refresh token");
                }
            }
        }
        None => audit.detail("no_session"),
    }
    Ok(())
}

pub async fn reset_request(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    email: &str,
) -> ApiResult<(StatusCode, Accepted)> {
    let email = valid_email(email)?;
    audit.claimed_email(&email);
    limit_account(state, &email)?;
    match cognito.forgot_password(&email).await {
        Ok(()) => {}
        // Unknown, unconfirmed or unable to receive a code: the same answer for all.
        Err(f)
            if is(
                &f,
                &[
                    "UserNotFoundException",
                    "InvalidParameterException",
                    "NotAuthorizedException",
                ],
            ) =>
        {
            audit.detail("unknown_email")
        }
        Err(f) => return Err(f.into()),
    }
    Ok((
        StatusCode::ACCEPTED,
        Accepted {
            status: "reset_sent",
            message: "check your mailbox: if an account uses this address, a reset code is \
                      on its way; send it with your address and the new password to \
                      POST /api/auth/reset-password/confirm",
        },
    ))
}

pub async fn reset_confirm(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    email: Option<&str>,
    code: &str,
    password: &str,
    confirm: &str,
) -> ApiResult<Done> {
    let email = required_email(email)?;
    audit.claimed_email(&email);
    check_new_password(password, confirm)?;
    limit_account(state, &email)?;
    match cognito
        .confirm_forgot_password(&email, code.trim(), password)
        .await
    {
        Ok(()) => {
            // As in the built-in mode, a new password lifts the address's lockout.
            state.store.clear_login_failures(&email).await?;
            Ok(Done {
                status: "password_reset",
            })
        }
        Err(f)
            if is(
                &f,
                &[
                    "CodeMismatchException",
                    "ExpiredCodeException",
                    "UserNotFoundException",
                ],
            ) =>
        {
            Err(invalid_token())
        }
        Err(f) if is(&f, &["InvalidPasswordException"]) => Err(weak_password(f)),
        Err(f) => Err(f.into()),
    }
}

/// Completes a sign-in or refresh: verifies the ID token the pool answered (it names
/// the address and the groups), brings the local user in line and answers the pair.
async fn finish(
    state: &AppState,
    cognito: &Cognito,
    audit: &Audit,
    tokens: Tokens,
    kept_refresh: Option<String>,
) -> ApiResult<(HeaderMap, TokenPair)> {
    let identity = cognito.verifier.verify(&tokens.id_token).await?;
    // An app client may be denied reading `email` into ID tokens; GetUser still has it.
    let email = match identity.email {
        Some(_) => cognito.email_of(&identity, &tokens.id_token).await?,
        None => {
            let access = cognito.verifier.verify(&tokens.access_token).await?;
            cognito.email_of(&access, &tokens.access_token).await?
        }
    };
    let user = oidc::local_user(state, &identity, &email).await?;
    audit.actor(&user);
    if user.disabled {
        audit.detail("disabled");
        return Err(account_disabled());
    }
    let now = Utc::now();
    state.store.clear_login_failures(&user.email).await?;
    let patch = UserPatch {
        last_login_at: Some(now),
        ..UserPatch::default()
    };
    let user = state
        .store
        .update_user(user.id, &patch, now)
        .await?
        .unwrap_or(user);
    let refresh_token = tokens
        .refresh_token
        .or(kept_refresh)
        .ok_or_else(|| ApiError::internal("Cognito answered no refresh token"))?;
    let username = identity.username.as_deref().unwrap_or(&email);
    provider_pair(
        state,
        &user,
        tokens.access_token,
        tokens.expires_in,
        wrap_refresh(username, &refresh_token),
        tokens.id_token,
    )
}

/// `reauthenticate` for auth mode `cognito`, where the password (and the TOTP code, when
/// the account has MFA in the pool) are the pool's: an `InitiateAuth` with them, whose
/// tokens are thrown away. Ok(Err(refusal)) when they are wrong.
pub(super) async fn reauthenticate(
    cognito: &Cognito,
    audit: &Audit,
    email: &str,
    password: Option<&str>,
    code: Option<&str>,
) -> ApiResult<Result<(), ApiError>> {
    let Some(password) = password else {
        audit.detail("wrong_password");
        return Ok(Err(super::wrong_password()));
    };
    let session = match cognito.sign_in(email, password).await {
        Ok(crate::auth::cognito::SignIn::Tokens(_)) => return Ok(Ok(())),
        Ok(crate::auth::cognito::SignIn::Mfa { session }) => session,
        Err(f) if is(&f, &["NotAuthorizedException", "UserNotFoundException"]) => {
            audit.detail("wrong_password");
            return Ok(Err(super::wrong_password()));
        }
        Err(f) => return Err(f.into()),
    };
    let Some(code) = code else {
        audit.detail("code_required");
        return Ok(Err(super::code_required()));
    };
    match cognito.answer_mfa(email, &session, code.trim()).await {
        Ok(_) => Ok(Ok(())),
        Err(f) if is(&f, &["CodeMismatchException", "ExpiredCodeException"]) => {
            audit.detail("bad_totp");
            Ok(Err(invalid_code()))
        }
        Err(f) => Err(f.into()),
    }
}
