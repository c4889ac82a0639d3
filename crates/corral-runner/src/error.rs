//! The error type of the HTTP API and its two wire shapes (Ollama and OpenAI).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

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

impl ApiError {
    /// Ollama's shape: `{"error": "message"}`.
    pub fn ollama_body(&self) -> Value {
        json!({ "error": self.to_string() })
    }

    /// OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai_body(&self) -> Value {
        let (kind, code) = match self {
            Self::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            Self::NotFound(_) | Self::MalformedJson(_) | Self::InvalidRequest(_) => {
                ("invalid_request_error", None)
            }
            Self::QueueFull => ("server_error", Some("server_busy")),
            Self::Engine(_) => ("server_error", None),
        };
        json!({
            "error": { "message": self.to_string(), "type": kind, "param": null, "code": code }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.ollama_body())).into_response()
    }
}

/// The same error, answered in OpenAI's shape.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.0.status(), Json(self.0.openai_body())).into_response()
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
