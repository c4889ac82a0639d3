//! Outgoing mail (verification and reset links). Requests never send mail themselves:
//! they queue a `MailJob` in the store's outbound queue (`enqueue`), and the outbound
//! worker (`crate::outbound`) renders and sends it, retrying with back-off. With SMTP
//! configured it is sent; without, it goes to the outbox table that admins read at
//! `GET /api/admin/outbox`, so a laptop install works with no mail server.

use chrono::Utc;
use corral_core::OutboxMessage;
use corral_store::Store;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The `kind` of mail jobs in the outbound queue.
pub const MAIL_JOB: &str = "mail";

/// A queued mail: which one, to whom. Rendered when it is sent (`handlers::auth::mails`),
/// so the queue holds no link or token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum MailJob {
    /// A password-reset link, if the address has an account.
    ResetPassword { to: String },
    /// A verification link, if the address has an account still unverified.
    VerifyEmail { to: String },
    /// A notice that someone tried to sign up with an address that has an account.
    SignupExisting { to: String },
}

/// A mail ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Queues a mail for the outbound worker and wakes it. Costs the request one store
/// write, whatever the mail and whether or not it will be sent.
pub async fn enqueue(state: &AppState, job: &MailJob) -> ApiResult<()> {
    let payload = serde_json::to_string(job).map_err(ApiError::internal)?;
    state
        .store
        .enqueue_job(&corral_store::OutboundJob::new(
            MAIL_JOB,
            payload,
            Utc::now(),
        ))
        .await?;
    state.outbound_wakeup.notify_one();
    Ok(())
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (local relay only).
    pub security: String,
}

pub enum Mailer {
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
    },
    Outbox,
}

impl Mailer {
    pub fn smtp(s: &SmtpSettings) -> Result<Self, String> {
        let builder = match s.security.as_str() {
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host),
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host),
            "none" => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                &s.host,
            )),
            other => {
                return Err(format!(
                    "smtp security {other:?}: expected starttls, tls or none"
                ));
            }
        }
        .map_err(|e| format!("smtp host {}: {e}", s.host))?;
        let mut builder = builder.port(s.port);
        if let (Some(user), Some(pass)) = (&s.username, &s.password) {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let from = s
            .from
            .parse()
            .map_err(|e| format!("smtp from address {:?}: {e}", s.from))?;
        Ok(Mailer::Smtp {
            transport: Box::new(builder.build()),
            from,
        })
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Mailer::Smtp { .. } => "smtp",
            Mailer::Outbox => "outbox",
        }
    }

    pub async fn send(
        &self,
        store: &dyn Store,
        to: &str,
        subject: &str,
        body: &str,
    ) -> ApiResult<()> {
        match self {
            Mailer::Smtp { transport, from } => {
                let to: Mailbox = to.parse().map_err(|_| {
                    ApiError::bad_request("invalid_email", "invalid e-mail address")
                })?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(subject)
                    .body(body.to_string())
                    .map_err(ApiError::internal)?;
                transport
                    .send(message)
                    .await
                    .map_err(|e| ApiError::Unavailable(format!("could not send e-mail: {e}")))?;
            }
            Mailer::Outbox => {
                store
                    .push_outbox(&OutboxMessage {
                        id: Uuid::now_v7(),
                        to: to.to_string(),
                        subject: subject.to_string(),
                        body: body.to_string(),
                        created_at: Utc::now(),
                    })
                    .await?;
                tracing::info!(%to, %subject, "mail written to the outbox (no SMTP configured)");
            }
        }
        Ok(())
    }
}
