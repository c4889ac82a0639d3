//! Forwarding one request to a replica and streaming its answer back.
//!
//! A pooled HTTP/1 client (keep-alive connections to each replica, a connect timeout, no
//! overall timeout: a generation may stream for minutes). The replica's body is passed on
//! frame by frame through `Metered`; nothing is buffered or compressed. When the client
//! goes away, the server drops the response body, which drops the replica's body and
//! closes that connection: the replica sees the disconnect and stops generating.

use axum::body::{Body, Bytes};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, Uri};
use corral_control::InstanceRoute;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::concurrency::Permit;
use super::error::GatewayError;
use super::meter::{Accounting, InFlightGauge, Metered, UsageFilter};
use crate::metrics::instance::Sample;
use crate::state::AppState;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Replicas are on loopback or a private network: one that does not accept a connection
/// within this is down (the reconciler's health checks will replace it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle keep-alive connections to a replica are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(90);

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // Streams are many small writes; Nagle would hold tokens back.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// One request on its way to an instance.
pub struct Forward {
    pub route: Arc<InstanceRoute>,
    /// The request's prompt-prefix key (`affinity`), for cache-aware replica choice.
    pub prefix: Option<u64>,
    pub method: Method,
    /// Path and query on the replica, e.g. `/api/chat` or `/v1/chat/completions`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The caller, whom usage and the token limit are charged to.
    pub user_id: Uuid,
    /// Whether a successful answer is a generation or embedding to record as usage.
    pub inference: bool,
    /// The gateway asked the replica for usage the client did not ask for: take it out.
    pub strip_usage: bool,
    pub received: Instant,
    /// The caller's place among their requests in flight, held until the answer ends.
    pub permit: Permit,
}

pub async fn forward(state: &AppState, fwd: Forward) -> Result<Response<Body>, GatewayError> {
    // The replica likely to hold the prompt's prefix within the load bound, else the
    // least busy one; reserved until the answer's body is done.
    let slot = fwd.route.acquire(fwd.prefix).ok_or_else(|| {
        GatewayError::unavailable(
            "instance_not_ready",
            "the instance has no ready replica right now; retry shortly",
        )
    })?;
    let uri: Uri = format!(
        "{}{}",
        slot.replica.endpoint.trim_end_matches('/'),
        fwd.path_and_query
    )
    .parse()
    .map_err(|e| GatewayError::internal(format!("replica URI: {e}")))?;
    let mut request = Request::new(Full::new(fwd.body));
    *request.method_mut() = fwd.method;
    *request.uri_mut() = uri;
    copy_headers(&fwd.headers, request.headers_mut(), REQUEST_DROPPED);

    let gauge = InFlightGauge::new(state);
    let sent = Instant::now();
    let upstream = state.gateway.client.request(request).await.map_err(|e| {
        tracing::warn!(error = %e, instance = %fwd.route.instance_id, replica = %slot.replica.replica_id, "gateway: replica did not answer");
        if fwd.inference {
            state.metrics.instances.record(
                fwd.route.instance_id,
                Sample {
                    latency: fwd.received.elapsed(),
                    first_token: None,
                    tokens_out: 0,
                    error: true,
                },
            );
        }
        GatewayError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "upstream_error",
            "the instance's replica did not answer; it may be restarting, retry shortly",
        )
    })?;

    let (parts, incoming) = upstream.into_parts();
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_stream_type);
    let filter = fwd.strip_usage.then(UsageFilter::default);
    let accounting = Accounting {
        state: state.clone(),
        slot,
        gauge,
        user_id: fwd.user_id,
        instance_id: fwd.route.instance_id,
        model_id: fwd.route.model_id.clone(),
        inference: fwd.inference,
        record: fwd.inference && parts.status.is_success(),
        failed: parts.status.is_server_error(),
        streamed,
        received: fwd.received,
        sent,
        _permit: fwd.permit,
    };
    let mut response = Response::new(Body::new(Metered::new(incoming, filter, accounting)));
    *response.status_mut() = parts.status;
    let dropped = if fwd.strip_usage {
        RESPONSE_DROPPED_FILTERED
    } else {
        RESPONSE_DROPPED
    };
    copy_headers(&parts.headers, response.headers_mut(), dropped);
    if streamed {
        // Tell a reverse proxy in front of Corral (nginx) not to buffer the stream either.
        response.headers_mut().insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
    Ok(response)
}

fn is_stream_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/x-ndjson")
        || essence.eq_ignore_ascii_case("text/event-stream")
}

/// Connection-level headers (RFC 9110 §7.6.1), which belong to one hop, not the message.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Not forwarded to a replica, besides the hop-by-hop ones: the caller's credentials
/// (Corral's, not the replica's), the Host and length (the client sets them for the
/// replica's URI and the body sent), `Expect` (the body is already here), and
/// `Accept-Encoding`, so that the replica never compresses what is streamed through.
const REQUEST_DROPPED: &[&str] = &[
    "authorization",
    "cookie",
    "host",
    "content-length",
    "expect",
    "accept-encoding",
];

const RESPONSE_DROPPED: &[&str] = &[];

/// A filtered stream is not as long as the replica said.
const RESPONSE_DROPPED_FILTERED: &[&str] = &["content-length"];

/// Header names are lower-case in a `HeaderMap`, as in these lists.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, dropped: &[&str]) {
    // Headers the sender marked as connection-specific in `Connection: a, b`.
    let listed: Vec<&str> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for (name, value) in from {
        let skip = HOP_BY_HOP.contains(&name.as_str())
            || dropped.contains(&name.as_str())
            || listed.iter().any(|l| name.as_str().eq_ignore_ascii_case(l));
        if !skip {
            to.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer crl_secret"),
            ("cookie", "corral_refresh=x"),
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("accept-encoding", "gzip"),
            ("host", "corral.example"),
            ("content-length", "12"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ] {
            from.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, REQUEST_DROPPED);
        let mut kept: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["content-type", "x-request-id"]);
    }

    #[test]
    fn stream_types() {
        assert!(is_stream_type("application/x-ndjson"));
        assert!(is_stream_type("text/event-stream; charset=utf-8"));
        assert!(!is_stream_type("application/json"));
    }
}
