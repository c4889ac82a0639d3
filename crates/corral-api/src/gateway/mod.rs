//! The gateway: LLM clients talk to deployed instances through Corral, on the same server
//! as the management API.
//!
//! | Path | API | Routed by |
//! |------|-----|-----------|
//! | `GET /v1/models`, `GET /v1/models/{model}` | OpenAI | the caller's instances |
//! | `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` | OpenAI | body `model` |
//! | `GET /ollama/api/tags`, `/ollama/api/ps`, `/ollama/api/version` | Ollama | the caller's instances |
//! | `POST /ollama/api/generate`, `chat`, `embed`, `embeddings`, `show` | Ollama | body `model` |
//! | `/i/{instance_id}/{path}`, for the paths of `allow` (403 for others) | the replica's own (Ollama, OpenAI under `v1/`) | instance id |
//!
//! `{public_url}/i/{id}` is an instance's endpoint: the official clients work with
//! `ollama.Client(host=f"{base}/i/{id}")` and `openai.OpenAI(base_url=f"{base}/i/{id}/v1")`,
//! or, routed by model, `host=f"{base}/ollama"` and `base_url=f"{base}/v1"`; each with the
//! API key (`crl_...`) or an access token as bearer token.
//!
//! Every call is authenticated (401 without a valid credential). Viewers are read-only:
//! they may list models but get 403 for inference. Each user is held to the
//! requests-per-minute and tokens-per-minute limits of the settings (429 + Retry-After),
//! and to a number of requests in flight at once (429). The caller is authenticated (and,
//! by instance id, the instance resolved) before the request body is read, and the whole
//! body must arrive within the body timeout (408).
//! Errors come in the shape of the path's API (see `error`). Gateway calls are metered
//! (usage rows, metrics) rather than written to the audit log.

mod affinity;
mod allow;
mod concurrency;
mod error;
mod limits;
mod meter;
mod models;
mod proxy;
mod target;
mod writeback;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{MethodRouter, any, get, post};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::time::{Duration, Instant};
use uuid::Uuid;

use concurrency::{Permit, UserConcurrency};
use error::{Dialect, GatewayError};
use limits::{Refusal, UserLimits};
use proxy::{Forward, HttpClient};
pub use writeback::Flusher;
use writeback::Writeback;

use crate::auth::Principal;
use crate::settings::Settings;
use crate::state::AppState;

/// Largest request body the gateway forwards: prompts and embedding batches are larger
/// than the management API's documents.
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// The gateway's shared parts, in `AppState`.
pub struct Gateway {
    client: HttpClient,
    limits: UserLimits,
    /// Requests in flight per user.
    concurrency: UserConcurrency,
    /// Usage and key use, written to the store by the `Flusher`.
    writeback: Writeback,
}

impl Gateway {
    pub fn new(settings: &Settings) -> Self {
        Gateway {
            client: proxy::client(),
            limits: UserLimits::new(
                settings.gateway_requests_per_minute,
                settings.gateway_tokens_per_minute,
            ),
            concurrency: UserConcurrency::default(),
            writeback: Writeback::default(),
        }
    }

    /// Notes an API key's use, for its `last_used_at` (written behind).
    pub fn key_used(&self, id: Uuid, at: chrono::DateTime<chrono::Utc>) {
        self.writeback.key_used(id, at);
    }
}

pub fn routes() -> Router<AppState> {
    use Dialect::{Ollama, OpenAi};
    Router::new()
        .route("/v1/models", only(get(models::openai_list), OpenAi))
        .route("/v1/models/{*model}", only(get(models::openai_one), OpenAi))
        .route("/v1/chat/completions", only(post(openai), OpenAi))
        .route("/v1/completions", only(post(openai), OpenAi))
        .route("/v1/embeddings", only(post(openai), OpenAi))
        .route("/v1/{*rest}", any(openai_unknown))
        .route("/ollama/api/tags", only(get(models::ollama_tags), Ollama))
        .route("/ollama/api/ps", only(get(models::ollama_ps), Ollama))
        .route(
            "/ollama/api/version",
            only(get(models::ollama_version), Ollama),
        )
        .route("/ollama/api/generate", only(post(ollama), Ollama))
        .route("/ollama/api/chat", only(post(ollama), Ollama))
        .route("/ollama/api/embed", only(post(ollama), Ollama))
        .route("/ollama/api/embeddings", only(post(ollama), Ollama))
        .route("/ollama/api/show", only(post(ollama), Ollama))
        .route("/ollama/{*rest}", any(ollama_unknown))
        .route("/i/{instance_id}", any(instance))
        .route("/i/{instance_id}/", any(instance))
        .route("/i/{instance_id}/{*rest}", any(instance))
}

/// A route that answers other methods with 405 in its dialect.
fn only(route: MethodRouter<AppState>, dialect: Dialect) -> MethodRouter<AppState> {
    route.fallback(move |method: Method, uri: Uri| async move {
        GatewayError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {}", uri.path()),
        )
        .into_response(dialect)
    })
}

async fn openai_unknown(uri: Uri) -> Response {
    unknown(uri, Dialect::OpenAi)
}

async fn ollama_unknown(uri: Uri) -> Response {
    unknown(uri, Dialect::Ollama)
}

fn unknown(uri: Uri, dialect: Dialect) -> Response {
    GatewayError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "{} is not part of Corral's gateway; models are deployed through Corral's API",
            uri.path()
        ),
    )
    .into_response(dialect)
}

/// Authenticates the caller and applies their limits. `inference`: the call runs a
/// model, which viewers may not do. The permit holds the caller's place among their
/// requests in flight until it is dropped (with the answer's body).
async fn admit(
    state: &AppState,
    parts: &mut Parts,
    inference: bool,
) -> Result<(Principal, Permit), GatewayError> {
    let caller = Principal::from_request_parts(parts, state).await?;
    if inference && !caller.user.role.can_mutate() {
        return Err(GatewayError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the viewer role is read-only and cannot run models; ask an admin for the user role",
        ));
    }
    state
        .gateway
        .limits
        .admit(caller.user.id)
        .map_err(|refusal| match refusal {
            Refusal::Requests(after) => GatewayError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!(
                    "request rate limit reached ({} per minute); retry later",
                    state.settings.gateway_requests_per_minute
                ),
            )
            .retry_after(after),
            Refusal::Tokens(after) => GatewayError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "token_rate_limit_exceeded",
                format!(
                    "token rate limit reached ({} tokens per minute); retry later",
                    state.settings.gateway_tokens_per_minute
                ),
            )
            .retry_after(after),
        })?;
    let permit = in_flight(
        state,
        caller.user.id,
        state.settings.gateway_max_concurrent_requests,
    )?;
    Ok((caller, permit))
}

/// A place among `user`'s requests in flight, at most `limit` (0: unlimited) at once.
fn in_flight(state: &AppState, user: Uuid, limit: u32) -> Result<Permit, GatewayError> {
    state.gateway.concurrency.admit(user, limit).ok_or_else(|| {
        GatewayError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "concurrency_limit_exceeded",
            format!("too many requests in flight ({limit} at once); wait for one to finish"),
        )
        .retry_after(Duration::from_secs(1))
    })
}

/// The fields of a request body the gateway looks at.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    /// Older Ollama clients name the model of `/api/show` so.
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<Value>,
}

impl Probe<'_> {
    fn model(&self) -> Option<&str> {
        [&self.model, &self.name]
            .into_iter()
            .flatten()
            .map(|m| m.as_ref())
            .find(|m| !m.is_empty())
    }

    fn wants_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// The whole body, if it arrives within `timeout`: a client trickling its body must not
/// hold a request (and its memory) open for long.
async fn read_body(body: axum::body::Body, timeout: Duration) -> Result<Bytes, GatewayError> {
    tokio::time::timeout(timeout, axum::body::to_bytes(body, BODY_LIMIT))
        .await
        .map_err(|_| {
            GatewayError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            )
        })?
        .map_err(|_| {
            GatewayError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body is larger than the {BODY_LIMIT} byte limit, or was cut short"
                ),
            )
        })
}

/// An OpenAI stream whose client did not ask for usage gets it asked for, so the request
/// can be metered; the filter in `meter` takes it back out of the stream. Returns the
/// body to send and whether to filter.
fn ask_for_usage(body: Bytes, probe: &Probe<'_>) -> Result<(Bytes, bool), GatewayError> {
    if probe.stream != Some(true) || probe.wants_usage() {
        return Ok((body, false));
    }
    let mut doc: serde_json::Map<String, Value> = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::bad_request(format!("invalid JSON body: {e}")))?;
    doc.insert(
        "stream_options".into(),
        serde_json::json!({ "include_usage": true }),
    );
    let body = serde_json::to_vec(&doc).map_err(GatewayError::internal)?;
    Ok((body.into(), true))
}

/// Whether a replica path (without its leading `/`) generates or embeds, i.e. is metered
/// as usage.
fn is_inference(path: &str) -> bool {
    matches!(
        path,
        "api/generate"
            | "api/chat"
            | "api/embed"
            | "api/embeddings"
            | "v1/chat/completions"
            | "v1/completions"
            | "v1/embeddings"
    )
}

/// Generation endpoints of the OpenAI API, whose streams carry usage only on request.
fn is_openai_generation(path: &str) -> bool {
    matches!(path, "v1/chat/completions" | "v1/completions")
}

async fn openai(State(state): State<AppState>, request: Request) -> Response {
    by_model(&state, request, Dialect::OpenAi)
        .await
        .unwrap_or_else(|e| e.into_response(Dialect::OpenAi))
}

async fn ollama(State(state): State<AppState>, request: Request) -> Response {
    by_model(&state, request, Dialect::Ollama)
        .await
        .unwrap_or_else(|e| e.into_response(Dialect::Ollama))
}

/// `/v1/...` and `/ollama/api/...` inference: to the caller's instance of the body's model.
async fn by_model(
    state: &AppState,
    request: Request,
    dialect: Dialect,
) -> Result<Response, GatewayError> {
    let received = Instant::now();
    let (mut parts, body) = request.into_parts();
    // The model, and so the instance, is named in the body: it is read once the caller
    // is authenticated and holds a place among their requests in flight.
    let (caller, permit) = admit(state, &mut parts, true).await?;
    let body = read_body(body, state.settings.gateway_body_timeout).await?;
    let probe: Probe = serde_json::from_slice(&body)
        .map_err(|e| GatewayError::bad_request(format!("invalid JSON body: {e}")))?;
    let model = probe
        .model()
        .ok_or_else(|| GatewayError::bad_request("`model` is required"))?;
    let route = target::by_model(state, &caller, model).await?;
    // The replica's path: OpenAI's as is, Ollama's without the gateway's prefix.
    let path = match dialect {
        Dialect::OpenAi => parts.uri.path(),
        Dialect::Ollama => parts.uri.path().trim_start_matches("/ollama"),
    };
    let replica_path = path.trim_start_matches('/');
    let (body, strip_usage) = if is_openai_generation(replica_path) {
        ask_for_usage(body.clone(), &probe)?
    } else {
        (body.clone(), false)
    };
    let path_and_query = with_query(path, &parts.uri);
    let inference = is_inference(replica_path);
    let prefix = affinity::prefix_key(replica_path, &body);
    proxy::forward(
        state,
        Forward {
            route,
            prefix,
            method: parts.method,
            path_and_query,
            headers: parts.headers,
            body,
            user_id: caller.user.id,
            inference,
            strip_usage,
            received,
            permit,
        },
    )
    .await
}

/// `/i/{instance_id}/{path}`: the inference and read paths of `allow`, to one instance.
async fn instance(State(state): State<AppState>, request: Request) -> Response {
    let rest = instance_path(request.uri()).map_or("", |(_, rest)| rest);
    let dialect = Dialect::of_instance_path(rest);
    to_instance(&state, request)
        .await
        .unwrap_or_else(|e| e.into_response(dialect))
}

/// `/i/{id}/{rest}` → (id, rest); None for an id that is not a UUID (404 like a missing
/// instance).
fn instance_path(uri: &Uri) -> Option<(&str, &str)> {
    let tail = uri.path().strip_prefix("/i/")?;
    Some(tail.split_once('/').unwrap_or((tail, "")))
}

async fn to_instance(state: &AppState, request: Request) -> Result<Response, GatewayError> {
    let received = Instant::now();
    let (mut parts, body) = request.into_parts();
    let (caller, permit) = admit(state, &mut parts, true).await?;
    let (id, rest) = instance_path(&parts.uri).ok_or_else(GatewayError::instance_not_found)?;
    if !allow::forwardable(rest) {
        return Err(GatewayError::new(
            StatusCode::FORBIDDEN,
            "path_not_allowed",
            format!(
                "/{rest} is not forwarded to instances; the gateway forwards only the \
                 inference and read endpoints (api/generate, api/chat, api/embed, \
                 api/embeddings, api/show, api/tags, api/ps, api/version, v1/chat/completions, \
                 v1/completions, v1/embeddings, v1/models)"
            ),
        ));
    }
    let id: Uuid = id.parse().map_err(|_| GatewayError::instance_not_found())?;
    let route = target::by_id(state, &caller, id).await?;
    let body = read_body(body, state.settings.gateway_body_timeout).await?;
    let (body, strip_usage) = if parts.method == Method::POST && is_openai_generation(rest) {
        // The replica validates the body; one that is not JSON is its to refuse.
        match serde_json::from_slice::<Probe>(&body) {
            Ok(probe) => ask_for_usage(body.clone(), &probe)?,
            Err(_) => (body.clone(), false),
        }
    } else {
        (body, false)
    };
    let path_and_query = with_query(&format!("/{rest}"), &parts.uri);
    let prefix = if parts.method == Method::POST {
        affinity::prefix_key(rest, &body)
    } else {
        None
    };
    proxy::forward(
        state,
        Forward {
            route,
            prefix,
            inference: parts.method == Method::POST && is_inference(rest),
            method: parts.method,
            path_and_query,
            headers: parts.headers,
            body,
            user_id: caller.user.id,
            strip_usage,
            received,
            permit,
        },
    )
    .await
}

fn with_query(path: &str, uri: &Uri) -> String {
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_asked_for_only_when_missing() {
        let body = Bytes::from_static(br#"{"model":"m","stream":true,"messages":[]}"#);
        let probe: Probe = serde_json::from_slice(&body).unwrap();
        let (sent, strip) = ask_for_usage(body.clone(), &probe).unwrap();
        assert!(strip);
        let sent: Value = serde_json::from_slice(&sent).unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["model"], "m");

        let asked = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        let probe: Probe = serde_json::from_slice(&asked).unwrap();
        let (sent, strip) = ask_for_usage(asked.clone(), &probe).unwrap();
        assert!(!strip);
        assert_eq!(sent, asked, "sent as is");

        let unary = Bytes::from_static(br#"{"model":"m"}"#);
        let probe: Probe = serde_json::from_slice(&unary).unwrap();
        assert!(!ask_for_usage(unary.clone(), &probe).unwrap().1);
    }

    #[test]
    fn model_or_name() {
        let probe: Probe = serde_json::from_slice(br#"{"name":"a:1","model":""}"#).unwrap();
        assert_eq!(probe.model(), Some("a:1"));
        let probe: Probe = serde_json::from_slice(br#"{"prompt":"x"}"#).unwrap();
        assert_eq!(probe.model(), None);
    }

    #[test]
    fn instance_paths() {
        let uri: Uri = "/i/0190/v1/chat/completions?x=1".parse().unwrap();
        assert_eq!(instance_path(&uri), Some(("0190", "v1/chat/completions")));
        let uri: Uri = "/i/0190".parse().unwrap();
        assert_eq!(instance_path(&uri), Some(("0190", "")));
        assert_eq!(with_query("/v1/x", &"/a?b=c".parse().unwrap()), "/v1/x?b=c");
    }
}
