//! The one error type of the API, and its stable JSON shape:
//! `{"error": {"code": "...", "message": "...", ...details}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_core::{LimitKind, Refusal, Resource};
use serde_json::{Value, json};
use std::time::Duration;
use thiserror::Error;

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Debug, Error)]
pub enum ApiError {
    /// Malformed or invalid input; `code` is machine-readable (e.g. `weak_password`).
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// Missing, malformed, expired or tampered credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but the role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// Absent, or owned by someone else (the two are indistinguishable on purpose).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the {0} byte limit")]
    PayloadTooLarge(usize),
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after: Duration,
    },
    /// A refusal that clients must tell apart from others with the same status, so it
    /// carries its own code: 401 `invalid_credentials` vs `refresh_token_reused`,
    /// 403 `email_not_verified`, 429 `account_locked` (with Retry-After).
    #[error("{message}")]
    Denied {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A change refused by a quota (409 `quota_exceeded`) or by the host's capacity
    /// (409 `insufficient_capacity`); `details` say which limit, how much is in use
    /// and (capacity) what is free. Nothing was changed.
    #[error("{}", limit_message(.0))]
    Limit(corral_core::Refusal),
    /// Something on our side failed; the cause is logged, never sent to the client.
    #[error("internal error")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn denied(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Denied {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Denied { status, .. } => *status,
            ApiError::Limit(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::Denied { code, .. } => code,
            ApiError::Limit(r) => match r.kind {
                LimitKind::Quota => "quota_exceeded",
                LimitKind::Capacity => "insufficient_capacity",
            },
            ApiError::Internal(_) => "internal",
            ApiError::Unavailable(_) => "unavailable",
        }
    }
}

/// The sentence of a refusal, saying what to do about it.
fn limit_message(r: &Refusal) -> String {
    match r.kind {
        LimitKind::Quota => {
            format!("{r}; stop or delete instances, or ask an administrator to raise the quota")
        }
        LimitKind::Capacity => {
            format!("{r}; stop instances on this host or choose a smaller size")
        }
    }
}

/// `details` of a refusal: `limit`, `allowed`, `in_use`, `requested` (vCPUs as
/// numbers of vCPUs, everything else as counted), and for the host's capacity the
/// `free` amount. A quota's `limit` is the quota field (`max_instances`); a
/// capacity's is the host resource (`memory_mib`, `vcpu`).
pub fn limit_details(r: &Refusal) -> Value {
    let amount = |v: i64| -> Value {
        match r.resource {
            Resource::MaxVcpu => json!(v as f64 / 1000.0),
            _ => json!(v),
        }
    };
    let mut details = json!({
        "allowed": amount(r.allowed),
        "in_use": amount(r.in_use),
        "requested": amount(r.requested),
    });
    match r.kind {
        LimitKind::Quota => details["limit"] = json!(r.resource.as_str()),
        LimitKind::Capacity => {
            details["limit"] = json!(r.resource.as_str().trim_start_matches("max_"));
            details["free"] = amount((r.allowed - r.in_use).max(0));
        }
    }
    details
}

impl From<corral_store::Error> for ApiError {
    fn from(e: corral_store::Error) -> Self {
        match e {
            corral_store::Error::Conflict(what) => {
                ApiError::Conflict(format!("{what} already exists"))
            }
            // The store's sentence says what to do first (e.g. delete the user's instances).
            corral_store::Error::InUse(sentence) => ApiError::Conflict(sentence.to_string()),
            last @ corral_store::Error::LastAdmin => {
                ApiError::denied(StatusCode::CONFLICT, "last_admin", last.to_string())
            }
            // Handlers validate first; these are races (a model deleted meanwhile).
            corral_store::Error::UnknownReference(what) => {
                ApiError::bad_request("unknown_reference", format!("{what} does not exist"))
            }
            corral_store::Error::Invalid(why) => ApiError::bad_request("invalid_value", why),
            corral_store::Error::Refused(refusal) => ApiError::Limit(refusal),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                "internal error; the server log has the details".to_string()
            }
            other => other.to_string(),
        };
        let mut error = json!({ "code": self.code(), "message": message });
        if let ApiError::BadRequest {
            details: Some(details),
            ..
        } = &self
        {
            error["details"] = details.clone();
        }
        if let ApiError::Limit(refusal) = &self {
            error["details"] = limit_details(refusal);
        }
        let mut response = (status, axum::Json(json!({ "error": error }))).into_response();
        if let ApiError::TooManyRequests { retry_after, .. }
        | ApiError::Denied {
            retry_after: Some(retry_after),
            ..
        } = &self
        {
            // Round up: a client that waits exactly Retry-After seconds must get through.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if matches!(self, ApiError::TooManyRequests { .. }) {
            response.extensions_mut().insert(RateLimited);
        }
        response
    }
}

/// Marks the answer of a rate limiter (not that of a locked account), which the audit
/// log counts rather than writes one by one.
#[derive(Debug, Clone, Copy)]
pub struct RateLimited;
