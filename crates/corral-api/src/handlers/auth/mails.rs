//! The mails of the auth flows, written by the outbound worker (`crate::outbound`) from a
//! queued `MailJob`, not inside the request: a request only queues the job, the same
//! one for an address with or without an account, so neither the answer nor its time
//! tells which addresses have one. The worker decides, at sending time, whether there is
//! anything to send, and makes the one-time token then (it is never stored in clear).

use chrono::{Duration, Utc};
use corral_core::{TokenPurpose, secret};
use corral_store::ActionToken;
use uuid::Uuid;

use crate::auth::oidc;
use crate::error::ApiResult;
use crate::mail::{MailJob, Rendered};
use crate::state::AppState;

const RESET_VALID_MINUTES: i64 = 60;
const VERIFY_VALID_HOURS: i64 = 24;

/// The mail a job stands for, or None when there is nothing to send (no such account,
/// already verified, an account of the identity provider).
pub(crate) async fn render(state: &AppState, job: &MailJob) -> ApiResult<Option<Rendered>> {
    match job {
        MailJob::ResetPassword { to } => {
            let Some(user) = state.store.user_by_email(to).await? else {
                return Ok(None);
            };
            // Provider accounts reset their password at the provider.
            if oidc::is_external(&user) {
                return Ok(None);
            }
            let link = action_link(
                state,
                user.id,
                TokenPurpose::ResetPassword,
                Duration::minutes(RESET_VALID_MINUTES),
                "reset-password",
            )
            .await?;
            Ok(Some(Rendered {
                to: user.email,
                subject: "Reset your Corral password".into(),
                body: format!(
                    "Someone (hopefully you) asked to reset the password of your Corral account.\n\n\
                     Open this link to choose a new one (valid for {RESET_VALID_MINUTES} minutes):\n\
                     {link}\n\n\
                     If you did not ask, ignore this message: your password stays as it is.\n"
                ),
            }))
        }
        MailJob::VerifyEmail { to } => {
            let Some(user) = state.store.user_by_email(to).await? else {
                return Ok(None);
            };
            if user.email_verified || user.disabled {
                return Ok(None);
            }
            let link = action_link(
                state,
                user.id,
                TokenPurpose::VerifyEmail,
                Duration::hours(VERIFY_VALID_HOURS),
                "verify",
            )
            .await?;
            Ok(Some(Rendered {
                to: user.email,
                subject: "Verify your Corral e-mail address".into(),
                body: format!(
                    "Welcome to Corral.\n\n\
                     Open this link to verify your e-mail address (valid for {VERIFY_VALID_HOURS} hours):\n\
                     {link}\n\n\
                     If you did not sign up, ignore this message.\n"
                ),
            }))
        }
        MailJob::SignupExisting { to } => {
            // Not a new verification link: whoever created the pending account chose its
            // password. The owner takes it over with a password reset, which proves the
            // mailbox and sets their own.
            let base = public_url(state);
            Ok(Some(Rendered {
                to: to.clone(),
                subject: "Sign-up attempt with your Corral address".into(),
                body: format!(
                    "Someone (perhaps you) tried to create a Corral account with this address, \
                     which already has one. No new account was created.\n\n\
                     If it was you, log in at {base}/login, or set a new password at \
                     {base}/reset-password.\n\n\
                     If it was not you, you can ignore this message.\n"
                ),
            }))
        }
    }
}

/// Stores a one-time token for `user_id` (hashed) and returns the UI link that carries it.
async fn action_link(
    state: &AppState,
    user_id: Uuid,
    purpose: TokenPurpose,
    valid_for: Duration,
    page: &str,
) -> ApiResult<String> {
    let token = secret::random_token();
    let now = Utc::now();
    state
        .store
        .create_action_token(&ActionToken {
            token_hash: secret::hash(&token),
            user_id,
            purpose,
            created_at: now,
            expires_at: now + valid_for,
        })
        .await?;
    Ok(format!("{}/{page}?token={token}", public_url(state)))
}

fn public_url(state: &AppState) -> &str {
    state.settings.public_url.trim_end_matches('/')
}
