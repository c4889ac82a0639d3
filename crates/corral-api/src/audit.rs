//! Audit logging as a middleware, so no mutating route can forget it: every
//! non-GET request (and any request a handler marks) produces one audit row with
//! actor, action, target, client IP and outcome. Handlers and the `Principal`
//! extractor fill in what only they know through the `Audit` handle.

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::{Method, request::Parts};
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use corral_core::{NewAuditEntry, Outcome, User};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

use crate::state::AppState;

#[derive(Debug, Default)]
struct Note {
    action: Option<String>,
    actor_id: Option<Uuid>,
    actor_email: Option<String>,
    target: Option<String>,
    detail: Option<String>,
}

/// A handle on the audit row of the current request.
#[derive(Debug, Clone, Default)]
pub struct Audit(Arc<Mutex<Note>>);

impl Audit {
    fn with(&self, f: impl FnOnce(&mut Note)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Names the event (e.g. `auth.login`); it is then logged even for a GET.
    pub fn action(&self, action: &str) {
        self.with(|n| n.action = Some(action.to_string()));
    }

    pub fn actor(&self, user: &User) {
        self.with(|n| {
            n.actor_id = Some(user.id);
            n.actor_email = Some(user.email.clone());
        });
    }

    /// The address an anonymous attempt was made for (failed login, reset request).
    pub fn claimed_email(&self, email: &str) {
        self.with(|n| n.actor_email = Some(email.to_string()));
    }

    pub fn target(&self, target: impl ToString) {
        self.with(|n| n.target = Some(target.to_string()));
    }

    /// A short, secret-free reason (e.g. `locked`, `bad_totp`).
    pub fn detail(&self, detail: &str) {
        self.with(|n| n.detail = Some(detail.to_string()));
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Audit {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Audit>().cloned().unwrap_or_default())
    }
}

/// The client's address: the TCP peer, or the first `X-Forwarded-For` hop when the
/// server is configured to sit behind a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    fn from_parts(parts: &Parts, trust_forwarded_for: bool) -> Self {
        if trust_forwarded_for {
            let forwarded = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok());
            if forwarded.is_some() {
                return ClientIp(forwarded);
            }
        }
        ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        )
    }

    pub fn key(&self) -> String {
        self.0.map_or_else(|| "unknown".into(), |ip| ip.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(None)))
    }
}

pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let ip = ClientIp::from_parts(&parts, state.settings.trust_forwarded_for);
    let audit = Audit::default();
    parts.extensions.insert(ip);
    parts.extensions.insert(audit.clone());
    let mutating = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let method = parts.method.clone();

    let response = next.run(Request::from_parts(parts, body)).await;

    let note = std::mem::take(&mut *audit.0.lock().unwrap_or_else(|p| p.into_inner()));
    if !mutating && note.action.is_none() {
        return response;
    }
    let status = response.status();
    let entry = NewAuditEntry {
        actor_id: note.actor_id,
        actor_email: note.actor_email,
        action: note.action.unwrap_or_else(|| format!("{method} {route}")),
        target: note.target,
        ip: ip.0.map(|ip| ip.to_string()),
        outcome: if status.is_success() || status.is_redirection() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        detail: Some(match note.detail {
            Some(detail) => format!("{} {detail}", status.as_u16()),
            None => status.as_u16().to_string(),
        }),
        at: Utc::now(),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        // The action already happened; losing its audit row must be loud, not fatal.
        tracing::error!(error = %e, action = %entry.action, "could not write audit row");
    }
    response
}
