//! Audit logging as a middleware, so no mutating route can forget it: every
//! non-GET request to a route (and any request a handler marks) produces one audit row
//! with actor, action (the handler's name for it, or the route template), target, client
//! IP and outcome; rate-limited requests are counted into one row per address and minute. Handlers and the `Principal`
//! extractor fill in what only they know through the `Audit` handle.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{Method, request::Parts};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use corral_core::{NewAuditEntry, Outcome, User};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

pub use crate::client_ip::ClientIp;
use crate::error::RateLimited;
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

/// Longest action, e-mail, target or detail written: they may come from the request
/// (a claimed address), which must not choose the size of a row.
const FIELD_MAX: usize = 256;

fn bounded(mut s: String) -> String {
    if s.len() > FIELD_MAX {
        let mut end = FIELD_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Writes the audit row of every matched, mutating (or handler-named) request. Requests
/// that match no route are not written (their path is the client's to choose, and
/// nothing happened), and those refused by a rate limiter are only counted (`Refusals`):
/// a flood from one address costs a row a minute, not a row a request. (A locked
/// account's 429 is written: the per-IP and per-account limits bound those.)
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let ip = parts
        .extensions
        .get::<ClientIp>()
        .copied()
        .unwrap_or(ClientIp(None));
    let audit = Audit::default();
    parts.extensions.insert(audit.clone());
    let mutating = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let method = parts.method.clone();

    let response = next.run(Request::from_parts(parts, body)).await;

    let Some(route) = route else {
        return response;
    };
    let note = std::mem::take(&mut *audit.0.lock().unwrap_or_else(|p| p.into_inner()));
    if !mutating && note.action.is_none() {
        return response;
    }
    if response.extensions().get::<RateLimited>().is_some() {
        state.refusals.count(ip.0, Utc::now());
        return response;
    }
    let status = response.status();
    let entry = NewAuditEntry {
        actor_id: note.actor_id,
        actor_email: note.actor_email.map(bounded),
        action: bounded(note.action.unwrap_or_else(|| format!("{method} {route}"))),
        target: note.target.map(bounded),
        ip: ip.0.map(|ip| ip.to_string()),
        outcome: if status.is_success() || status.is_redirection() {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        detail: Some(bounded(match note.detail {
            Some(detail) => format!("{} {detail}", status.as_u16()),
            None => status.as_u16().to_string(),
        })),
        at: Utc::now(),
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        // The action already happened; losing its audit row must be loud, not fatal.
        tracing::error!(error = %e, action = %entry.action, "could not write audit row");
    }
    response
}

/// Above this many addresses in one minute, further ones are counted together (with no
/// address), so that a flood from many addresses cannot grow the tally without bound.
const REFUSAL_ADDRESSES_MAX: usize = 10_000;

/// A client address (None: unknown, or one of too many) and the start of a minute.
type AddressMinute = (Option<IpAddr>, DateTime<Utc>);

/// Rate-limited requests (429), counted per client address and minute and written as
/// one `rate_limited` audit row each (by the gateway's `Flusher`, once the minute is
/// over, and at shutdown).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<HashMap<AddressMinute, u64>>,
}

fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::minutes(1)).unwrap_or(at)
}

impl Refusals {
    pub fn count(&self, ip: Option<IpAddr>, at: DateTime<Utc>) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let minute = minute_of(at);
        let key = if counts.len() >= REFUSAL_ADDRESSES_MAX && !counts.contains_key(&(ip, minute)) {
            (None, minute)
        } else {
            (ip, minute)
        };
        *counts.entry(key).or_default() += 1;
    }

    /// Takes the counts of the minutes before `now`'s (all of them with `all`) as the
    /// audit rows to write.
    pub fn take(&self, now: DateTime<Utc>, all: bool) -> Vec<NewAuditEntry> {
        let current = minute_of(now);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let done: Vec<_> = counts
            .keys()
            .filter(|(_, minute)| all || *minute < current)
            .copied()
            .collect();
        let mut rows: Vec<NewAuditEntry> = done
            .into_iter()
            .filter_map(|key| counts.remove(&key).map(|n| (key, n)))
            .map(|((ip, minute), n)| NewAuditEntry {
                actor_id: None,
                actor_email: None,
                action: "rate_limited".into(),
                target: None,
                ip: ip.map(|ip| ip.to_string()),
                outcome: Outcome::Failure,
                detail: Some(format!(
                    "429 x{n} in the minute from {}",
                    minute.format("%H:%M")
                )),
                at: minute,
            })
            .collect();
        rows.sort_by_key(|r| r.at);
        rows
    }

    /// Writes the finished minutes' rows (all of them with `all`).
    pub async fn flush(&self, store: &dyn corral_store::Store, all: bool) {
        for row in self.take(Utc::now(), all) {
            if let Err(e) = store.append_audit(&row).await {
                tracing::error!(error = %e, "could not write the rate-limited requests' audit row");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_one_row_per_address_and_minute() {
        let refusals = Refusals::default();
        let t0: DateTime<Utc> = "2026-01-01T10:00:05Z".parse().unwrap();
        let (a, b) = (
            Some("192.0.2.1".parse().unwrap()),
            Some("192.0.2.2".parse().unwrap()),
        );
        for i in 0..1000 {
            refusals.count(a, t0 + TimeDelta::milliseconds(i));
        }
        refusals.count(b, t0);
        refusals.count(a, t0 + TimeDelta::seconds(60));
        assert!(
            refusals.take(t0, false).is_empty(),
            "the minute is not over"
        );
        let rows = refusals.take(t0 + TimeDelta::seconds(60), false);
        assert_eq!(rows.len(), 2);
        let row_a = rows
            .iter()
            .find(|r| r.ip.as_deref() == Some("192.0.2.1"))
            .unwrap();
        assert_eq!(row_a.action, "rate_limited");
        assert_eq!(
            row_a.detail.as_deref(),
            Some("429 x1000 in the minute from 10:00")
        );
        let rest = refusals.take(t0 + TimeDelta::seconds(60), true);
        assert_eq!(rest.len(), 1, "the last minute, at shutdown");
        assert!(refusals.take(t0 + TimeDelta::seconds(600), true).is_empty());
    }

    #[test]
    fn long_fields_are_cut() {
        assert_eq!(bounded("é".repeat(200)).len(), FIELD_MAX);
        assert_eq!(bounded("short".into()), "short");
    }
}
