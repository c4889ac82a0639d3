//! The error type of the HTTP API and its two wire shapes (Ollama and OpenAI).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Ollama answers 404 with exactly this message for a model it does not have.
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("invalid JSON body: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("server busy: the request queue is full, try again later")]
    QueueFull,
    /// The inference thread stopped; nothing the client can fix.
    #[error("inference engine unavailable: {0}")]
    Engine(String),
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidRequest(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::ModelNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MalformedJson(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Ollama's shape: `{"error": "message"}`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// The same error in OpenAI's shape:
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let err = self.0;
        let (kind, code) = match &err {
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::NotFound(_) => ("invalid_request_error", None),
            ApiError::MalformedJson(_) | ApiError::InvalidRequest(_) => {
                ("invalid_request_error", None)
            }
            ApiError::QueueFull => ("server_error", Some("server_busy")),
            ApiError::Engine(_) => ("server_error", None),
        };
        let body = json!({
            "error": { "message": err.to_string(), "type": kind, "param": null, "code": code }
        });
        (err.status(), Json(body)).into_response()
    }
}

/// Parses a JSON request body whatever its content type: Ollama accepts bodies sent as
/// `curl -d` (form content type), so we do too.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ApiError::ModelNotFound("x".into()).status(), 404);
        assert_eq!(ApiError::MalformedJson("x".into()).status(), 400);
        assert_eq!(ApiError::QueueFull.status(), 503);
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        #[derive(serde::Deserialize, Debug)]
        struct Req {
            #[allow(dead_code)]
            model: String,
        }
        assert!(matches!(
            parse_json::<Req>(b"{"),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse_json::<Req>(b"{\"model\":1}"),
            Err(ApiError::MalformedJson(_))
        ));
    }
}
