//! Prometheus metrics: `GET /metrics` in the text exposition format, for an admin's
//! bearer token or the configured scrape token (`Settings::metrics_token`).
//!
//! | Metric | Type | What |
//! |--------|------|------|
//! | `corral_http_request_duration_seconds{route,status}` | histogram | every request, until its response head, by route template and status class (`2xx`) |
//! | `corral_auth_failures_total{status}` | counter | 401 and 403 answers |
//! | `corral_login_failures_total` | counter | refused logins and MFA steps |
//! | `corral_gateway_requests_in_flight` | gauge | requests being proxied to replicas |
//! | `corral_gateway_upstream_duration_seconds` | histogram | from sending to a replica to the end of its answer |
//! | `corral_gateway_time_to_first_token_seconds` | histogram | streams: from receipt to the first chunk (wake-up included) |
//! | `corral_gateway_tokens_total{kind}` | counter | `prompt` and `completion` tokens |
//! | `corral_gateway_tokens_per_second` | histogram | per request: completion tokens over generation time |
//! | `corral_instances{state}` | gauge | instances by observed state |
//! | `corral_ready_replicas` | gauge | replicas serving traffic |
//! | `corral_deploy_duration_seconds` | histogram | from pending to ready, per deploy or wake |
//! | `corral_password_hashes_in_flight`, `corral_password_hashes_in_flight_peak`, `corral_password_hashes_in_flight_limit` | gauge | Argon2 calls running now, the most at once since start, and the bound (see `auth::password`) |
//! | `corral_password_hashes_refused_total` | counter | password checks refused with 503 because the queue was full |
//! | `corral_replica_restarts_total`, `corral_wakes_total`, `corral_idle_shutdowns_total` | counter | the reconciler's |
//!
//! The hot path is lock-free but for a read lock on the route map (written once per
//! route); a scrape renders everything into one string.
//!
//! Besides these, `instances` keeps each instance's last hour minute by minute for the
//! instance page (`GET /api/instances/{id}/metrics`, owner-scoped like the instance).

mod histogram;
pub mod instance;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_control::ControlStats;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub use histogram::Histogram;

use crate::auth::Principal;
use crate::auth::password::HashStats;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Seconds: sub-millisecond API calls up to minutes-long non-streamed generations.
static LATENCY: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
/// Seconds to the first token: a warm small model answers in tens of milliseconds, a
/// woken one in seconds.
static FIRST_TOKEN: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];
static TOKENS_PER_SECOND: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Routes of the login steps, whose refusals are login failures.
const LOGIN_ROUTES: [&str; 2] = ["/api/auth/login", "/api/auth/mfa/verify"];

/// Label of requests no route matched (the UI's fallback, unknown paths): one series, so
/// that scanning for URLs cannot grow the metrics without bound.
const UNMATCHED: &str = "unmatched";

pub struct Metrics {
    /// Per route template: a latency histogram per status class.
    http: RwLock<HashMap<Box<str>, Arc<[Histogram; 5]>>>,
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
    login_failures: AtomicU64,
    pub gateway: GatewayMetrics,
    /// Per instance, per minute, for the instance page (`GET /api/instances/{id}/metrics`).
    pub instances: instance::InstanceStats,
}

pub struct GatewayMetrics {
    pub in_flight: AtomicI64,
    pub upstream_seconds: Histogram,
    pub first_token_seconds: Histogram,
    pub tokens_per_second: Histogram,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http: RwLock::default(),
            unauthorized: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            login_failures: AtomicU64::new(0),
            gateway: GatewayMetrics {
                in_flight: AtomicI64::new(0),
                upstream_seconds: Histogram::new(&LATENCY),
                first_token_seconds: Histogram::new(&FIRST_TOKEN),
                tokens_per_second: Histogram::new(&TOKENS_PER_SECOND),
                prompt_tokens: AtomicU64::new(0),
                completion_tokens: AtomicU64::new(0),
            },
            instances: instance::InstanceStats::default(),
        }
    }
}

impl Metrics {
    fn observe_http(&self, route: &str, status: StatusCode, seconds: f64) {
        let class = usize::from(status.as_u16() / 100)
            .clamp(1, 5)
            .saturating_sub(1);
        let known = self
            .http
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned();
        let series = match known {
            Some(series) => series,
            None => self
                .http
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(route.into())
                .or_insert_with(|| Arc::new(std::array::from_fn(|_| Histogram::new(&LATENCY))))
                .clone(),
        };
        series[class].observe(seconds);
        match status {
            StatusCode::UNAUTHORIZED => self.unauthorized.fetch_add(1, Relaxed),
            StatusCode::FORBIDDEN => self.forbidden.fetch_add(1, Relaxed),
            _ => 0,
        };
        if LOGIN_ROUTES.contains(&route) && matches!(status.as_u16(), 401 | 403 | 429) {
            self.login_failures.fetch_add(1, Relaxed);
        }
    }

    /// The text exposition of everything, with the reconciler's `control` figures.
    pub fn render(&self, control: &ControlStats) -> String {
        let mut out = String::with_capacity(16 * 1024);
        family(
            &mut out,
            "corral_http_request_duration_seconds",
            "histogram",
            "HTTP requests until the response head, by route template and status class.",
        );
        let mut routes: Vec<(Box<str>, Arc<[Histogram; 5]>)> = self
            .http
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(route, series)| (route.clone(), series.clone()))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        for (route, series) in &routes {
            for (class, h) in STATUS_CLASSES.iter().zip(series.iter()) {
                if !h.is_empty() {
                    let labels = format!("route=\"{}\",status=\"{class}\"", escape(route));
                    h.render(&mut out, "corral_http_request_duration_seconds", &labels);
                }
            }
        }
        family(
            &mut out,
            "corral_auth_failures_total",
            "counter",
            "Requests refused for missing or bad credentials (401) or a role that does not allow them (403).",
        );
        let _ = writeln!(
            out,
            "corral_auth_failures_total{{status=\"401\"}} {}",
            self.unauthorized.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "corral_auth_failures_total{{status=\"403\"}} {}",
            self.forbidden.load(Relaxed)
        );
        counter(
            &mut out,
            "corral_login_failures_total",
            "Refused logins and MFA steps (wrong credentials, locked, unverified).",
            self.login_failures.load(Relaxed),
        );
        self.render_gateway(&mut out);
        render_control(&mut out, control);
        out
    }

    fn render_gateway(&self, out: &mut String) {
        let g = &self.gateway;
        family(
            out,
            "corral_gateway_requests_in_flight",
            "gauge",
            "Gateway requests being proxied to replicas now.",
        );
        let _ = writeln!(
            out,
            "corral_gateway_requests_in_flight {}",
            g.in_flight.load(Relaxed)
        );
        family(
            out,
            "corral_gateway_upstream_duration_seconds",
            "histogram",
            "From sending a request to a replica to the end of its answer.",
        );
        g.upstream_seconds
            .render(out, "corral_gateway_upstream_duration_seconds", "");
        family(
            out,
            "corral_gateway_time_to_first_token_seconds",
            "histogram",
            "Streamed answers: from receipt of the request to the first chunk, waking included.",
        );
        g.first_token_seconds
            .render(out, "corral_gateway_time_to_first_token_seconds", "");
        family(
            out,
            "corral_gateway_tokens_total",
            "counter",
            "Tokens metered through the gateway: prompt (in) and completion (out).",
        );
        let _ = writeln!(
            out,
            "corral_gateway_tokens_total{{kind=\"prompt\"}} {}",
            g.prompt_tokens.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "corral_gateway_tokens_total{{kind=\"completion\"}} {}",
            g.completion_tokens.load(Relaxed)
        );
        family(
            out,
            "corral_gateway_tokens_per_second",
            "histogram",
            "Generation speed per request: completion tokens over the time between the first and last chunk (streams) or the whole call.",
        );
        g.tokens_per_second
            .render(out, "corral_gateway_tokens_per_second", "");
    }
}

fn render_control(out: &mut String, control: &ControlStats) {
    family(
        out,
        "corral_instances",
        "gauge",
        "Instances by observed state.",
    );
    for (state, n) in &control.instances_by_state {
        let _ = writeln!(out, "corral_instances{{state=\"{}\"}} {n}", state.as_str());
    }
    family(
        out,
        "corral_ready_replicas",
        "gauge",
        "Replicas serving traffic.",
    );
    let _ = writeln!(out, "corral_ready_replicas {}", control.ready_replicas);
    family(
        out,
        "corral_deploy_duration_seconds",
        "histogram",
        "From pending to ready, per deploy or wake since this server started.",
    );
    let d = &control.deploy_seconds;
    let mut cumulative = d.cumulative.clone();
    cumulative.push(d.count);
    histogram::render_series(
        out,
        "corral_deploy_duration_seconds",
        "",
        &d.bounds,
        &cumulative,
        d.sum,
    );
    counter(
        out,
        "corral_replica_restarts_total",
        "Replicas relaunched after a crash or failed health checks.",
        control.restarts_total,
    );
    counter(
        out,
        "corral_wakes_total",
        "Sleeping instances woken by a gateway request.",
        control.wakes_total,
    );
    counter(
        out,
        "corral_idle_shutdowns_total",
        "Instances stopped or put to sleep for being idle.",
        control.idle_shutdowns_total,
    );
}

fn render_passwords(out: &mut String, stats: HashStats) {
    for (name, help, value) in [
        (
            "corral_password_hashes_in_flight",
            "Argon2 password hashes and verifications running now.",
            stats.active,
        ),
        (
            "corral_password_hashes_in_flight_peak",
            "The most Argon2 calls that ran at once since the server started.",
            stats.peak,
        ),
        (
            "corral_password_hashes_in_flight_limit",
            "The bound on Argon2 calls at once; more wait in a queue.",
            stats.in_flight_limit,
        ),
    ] {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    counter(
        out,
        "corral_password_hashes_refused_total",
        "Password checks refused with 503 because the Argon2 queue was full.",
        stats.refused,
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value in the exposition format.
fn escape(value: &str) -> Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

/// Times every request and counts auth failures. Wraps the whole router (per route, so
/// the matched route template is known).
pub async fn track(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    state
        .metrics
        .observe_http(route, response.status(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
pub async fn handler(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    if let Err(e) = authorize(&state, &mut parts).await {
        return e.into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        {
            let mut body = state.metrics.render(&state.control.stats());
            render_passwords(&mut body, state.passwords.stats());
            body
        },
    )
        .into_response()
}

/// The scrape token, else an admin's access token or API key.
async fn authorize(state: &AppState, parts: &mut axum::http::request::Parts) -> ApiResult<()> {
    let expected = state
        .settings
        .metrics_token
        .as_deref()
        .filter(|t| !t.is_empty());
    if let (Some(expected), Some(given)) = (expected, bearer(&parts.headers))
        && constant_time_eq(given.as_bytes(), expected.as_bytes())
    {
        return Ok(());
    }
    let principal = Principal::from_request_parts(parts, state).await?;
    principal
        .require_admin()
        .map_err(|_| ApiError::Forbidden("metrics need the admin role or the scrape token".into()))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed
/// token was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_status_classes_and_auth_failures() {
        let m = Metrics::default();
        m.observe_http("/v1/chat/completions", StatusCode::OK, 0.002);
        m.observe_http("/v1/chat/completions", StatusCode::UNAUTHORIZED, 0.0001);
        m.observe_http("/api/auth/login", StatusCode::UNAUTHORIZED, 0.05);
        m.observe_http("/api/admin/users", StatusCode::FORBIDDEN, 0.001);
        let stats = corral_control::ControlStats {
            instances_by_state: vec![(corral_core::State::Ready, 2)],
            ready_replicas: 3,
            deploy_seconds: corral_control::Histogram {
                bounds: vec![1.0, 5.0],
                cumulative: vec![0, 1],
                count: 2,
                sum: 9.5,
            },
            recent_deploy_seconds: vec![],
            restarts_total: 1,
            wakes_total: 4,
            idle_shutdowns_total: 0,
        };
        let text = m.render(&stats);
        for line in [
            "corral_http_request_duration_seconds_count{route=\"/v1/chat/completions\",status=\"2xx\"} 1",
            "corral_http_request_duration_seconds_count{route=\"/v1/chat/completions\",status=\"4xx\"} 1",
            "corral_auth_failures_total{status=\"401\"} 2",
            "corral_auth_failures_total{status=\"403\"} 1",
            "corral_login_failures_total 1",
            "corral_instances{state=\"ready\"} 2",
            "corral_ready_replicas 3",
            "corral_deploy_duration_seconds_bucket{le=\"5\"} 1",
            "corral_deploy_duration_seconds_bucket{le=\"+Inf\"} 2",
            "corral_wakes_total 4",
            "corral_gateway_requests_in_flight 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("status=\"5xx\""),
            "empty series are left out"
        );
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
