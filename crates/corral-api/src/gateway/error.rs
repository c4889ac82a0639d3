//! Gateway errors, in the shape the caller's client library parses:
//!
//! * OpenAI (`/v1/...`, `/i/{id}/v1/...`):
//!   `{"error": {"message": "...", "type": "...", "param": null, "code": "..."}}`, with
//!   `type` from the status (`invalid_request_error`, `authentication_error`,
//!   `permission_error`, `rate_limit_error`, `server_error`) and a machine-readable `code`.
//! * Ollama (`/ollama/...`, any other `/i/{id}/...`): `{"error": "..."}`.
//!
//! Errors of the replica itself pass through untouched: corral-runner and Ollama answer in
//! the same two shapes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

use crate::error::ApiError;

/// Which API family a gateway path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
}

impl Dialect {
    /// A path forwarded to one instance (after `/i/{id}/`) speaks OpenAI under `v1/`.
    pub fn of_instance_path(rest: &str) -> Self {
        if rest == "v1" || rest.starts_with("v1/") {
            Dialect::OpenAi
        } else {
            Dialect::Ollama
        }
    }
}

#[derive(Debug)]
pub struct GatewayError {
    pub status: StatusCode,
    /// OpenAI's `code`, e.g. `model_not_found`, `rate_limit_exceeded`.
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl GatewayError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// Absent, or owned by someone else: the two answers are the same on purpose.
    pub fn instance_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "instance not found")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "model '{model}' not found: you have no instance of it; deploy it first \
                 (web UI, `corral deploy {model}` or POST /api/models/start)"
            ),
        )
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "gateway: internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; the server log has the details",
        )
    }

    /// The answer in `dialect`'s shape.
    pub fn into_response(self, dialect: Dialect) -> Response {
        let body = match dialect {
            Dialect::Ollama => json!({ "error": self.message }),
            Dialect::OpenAi => json!({ "error": {
                "message": self.message,
                "type": openai_type(self.status),
                "param": null,
                "code": self.code,
            }}),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long must get through.
            let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    }
}

/// The `Principal` extractor's refusals (401 for a missing, bad or expired credential;
/// 500 when the store fails), carried over with their message.
impl From<ApiError> for GatewayError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unauthorized(message) => {
                GatewayError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", message)
            }
            ApiError::Internal(cause) => GatewayError::internal(cause),
            ApiError::TooManyRequests {
                message,
                retry_after,
            } => GatewayError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                .retry_after(retry_after),
            other => {
                let status = other.status();
                GatewayError::new(status, other.code(), other.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn both_shapes() {
        let err = || GatewayError::model_not_found("m:1b");
        let openai = err().into_response(Dialect::OpenAi);
        assert_eq!(openai.status(), 404);
        let v = body(openai).await;
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("m:1b"));
        let v = body(err().into_response(Dialect::Ollama)).await;
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .starts_with("model 'm:1b' not found")
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = GatewayError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "slow")
            .retry_after(Duration::from_millis(1500))
            .into_response(Dialect::Ollama);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn instance_paths() {
        assert_eq!(
            Dialect::of_instance_path("v1/chat/completions"),
            Dialect::OpenAi
        );
        assert_eq!(Dialect::of_instance_path("api/chat"), Dialect::Ollama);
        assert_eq!(Dialect::of_instance_path("v1x"), Dialect::Ollama);
    }
}
