//! API keys for programs: `POST/GET/DELETE /api/keys`. Every route is scoped to the
//! caller's own keys. A key acts with its owner's role (a viewer's key is read-only),
//! is shown once at creation, and only its SHA-256 is stored.
//!
//! Creating one needs the password (and the authenticator code with MFA), so that a
//! stolen 15-minute access token cannot be turned into a lasting credential, and a key
//! expires after `Settings::api_key_default_expiry_days` unless asked otherwise (a key
//! that never expires must be asked for explicitly).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use corral_core::{ApiKey, secret};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::audit::Audit;
use crate::auth::{Credential, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_key, list_keys))
        .routes(routes!(delete_key))
}

/// Keys per user; enough for every program a person runs, small enough to review.
const MAX_KEYS_PER_USER: usize = 50;
const NAME_MAX: usize = 64;
const MAX_EXPIRY_DAYS: u32 = 3650;
/// Characters of the key kept in clear (`crl_` plus four), so lists can tell keys apart.
const PREFIX_LEN: usize = 8;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// 1 to 64 printable characters, e.g. `ci-pipeline`.
    name: String,
    /// 1 to 3650; when absent, the server's default (90 days unless configured).
    expires_in_days: Option<u32>,
    /// True for a key that never expires (not with `expires_in_days`).
    #[serde(default)]
    never_expires: bool,
    /// The caller's current password (required; a missing one is `wrong_password`).
    #[serde(default)]
    password: String,
    /// A current authenticator code; required when the account has MFA.
    code: Option<String>,
}

/// The new key. `key` is shown here and never again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    id: Uuid,
    name: String,
    /// Use as `Authorization: Bearer <key>`.
    key: String,
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// A key as listed: never the key itself nor its hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    id: Uuid,
    name: String,
    /// The key's first characters, e.g. `crl_AbCd`.
    prefix: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    /// Accurate to about a minute.
    last_used_at: Option<DateTime<Utc>>,
    /// Past `expires_at`: refused with 401, kept until deleted.
    expired: bool,
}

/// Creates an API key for the caller. Needs an interactive login: a key cannot mint keys.
#[utoipa::path(post, path = "/api/keys", tag = "keys",
    security(("bearer" = [])),
    request_body = CreateKey,
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, description = "invalid_name, invalid_expiry, too_many_keys, wrong_password or code_required"),
        (status = 401, description = "missing or invalid credentials, or `invalid_code`"),
        (status = 403, description = "called with an API key"),
        (status = 429, description = "`account_locked` or `rate_limited`, with Retry-After"),
    ))]
async fn create_key(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Json(body): Json<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    audit.action("keys.create");
    if let Credential::ApiKey { .. } = principal.credential {
        // Otherwise one leaked key could mint replacements that outlive its deletion.
        return Err(ApiError::Forbidden(
            "API keys cannot create API keys; log in interactively".into(),
        ));
    }
    let name = validate_name(&body.name)?;
    let days = expiry_days(
        body.expires_in_days,
        body.never_expires,
        state.settings.api_key_default_expiry_days,
    )?;
    let user = &principal.user;
    crate::handlers::auth::limit_account(&state, &user.email)?;
    crate::handlers::auth::reauthenticate(
        &state,
        &audit,
        user,
        Some(&body.password),
        body.code.as_deref(),
        user.totp_enabled,
    )
    .await?;
    let now = Utc::now();
    let expires_at = days.map(|days| now + Duration::days(i64::from(days)));
    let owner = user.id;
    if state.store.list_api_keys(owner).await?.len() >= MAX_KEYS_PER_USER {
        return Err(ApiError::bad_request(
            "too_many_keys",
            format!("at most {MAX_KEYS_PER_USER} API keys per user; delete unused ones first"),
        ));
    }
    let key = secret::new_api_key();
    let row = ApiKey {
        id: Uuid::now_v7(),
        owner_id: owner,
        name,
        prefix: key.chars().take(PREFIX_LEN).collect(),
        key_hash: secret::hash(&key),
        created_at: now,
        expires_at,
        last_used_at: None,
    };
    state.store.create_api_key(&row).await?;
    audit.target(row.id);
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            id: row.id,
            name: row.name,
            key,
            prefix: row.prefix,
            created_at: row.created_at,
            expires_at: row.expires_at,
        }),
    ))
}

/// The caller's API keys, newest first.
#[utoipa::path(get, path = "/api/keys", tag = "keys",
    security(("bearer" = [])),
    responses(
        (status = 200, body = [KeyView]),
        (status = 401, description = "missing or invalid credentials"),
    ))]
async fn list_keys(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<KeyView>>> {
    let now = Utc::now();
    let keys = state.store.list_api_keys(principal.user.id).await?;
    Ok(Json(
        keys.into_iter()
            .map(|k| KeyView {
                expired: k.expires_at.is_some_and(|at| at <= now),
                id: k.id,
                name: k.name,
                prefix: k.prefix,
                created_at: k.created_at,
                expires_at: k.expires_at,
                last_used_at: k.last_used_at,
            })
            .collect(),
    ))
}

/// Deletes one of the caller's keys; it stops working at once. Another user's key id
/// answers 404, exactly like an unknown one.
#[utoipa::path(delete, path = "/api/keys/{id}", tag = "keys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "key id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "id is not a UUID"),
        (status = 401, description = "missing or invalid credentials"),
        (status = 404, description = "no such key among the caller's"),
    ))]
async fn delete_key(
    State(state): State<AppState>,
    principal: Principal,
    audit: Audit,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    audit.action("keys.delete");
    audit.target(id);
    if state.store.delete_api_key(principal.user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("API key"))
    }
}

/// How many days a new key lives (None: never): what was asked, else the server's
/// default. Never expiring must be asked for, and not together with a number of days.
fn expiry_days(asked: Option<u32>, never: bool, default: Option<u32>) -> ApiResult<Option<u32>> {
    let invalid = |message: String| ApiError::bad_request("invalid_expiry", message);
    match (asked, never) {
        (Some(_), true) => Err(invalid(
            "give either expires_in_days or never_expires, not both".into(),
        )),
        (None, true) => Ok(None),
        (Some(days @ 1..=MAX_EXPIRY_DAYS), false) => Ok(Some(days)),
        (Some(_), false) => Err(invalid(format!(
            "expires_in_days must be 1 to {MAX_EXPIRY_DAYS}"
        ))),
        (None, false) => Ok(default),
    }
}

fn validate_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    let len = name.chars().count();
    if len == 0 || len > NAME_MAX || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("name must be 1 to {NAME_MAX} printable characters"),
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_asked_or_the_default() {
        assert_eq!(expiry_days(None, false, Some(90)).unwrap(), Some(90));
        assert_eq!(expiry_days(None, false, None).unwrap(), None);
        assert_eq!(expiry_days(Some(7), false, Some(90)).unwrap(), Some(7));
        assert_eq!(expiry_days(None, true, Some(90)).unwrap(), None);
        assert!(expiry_days(Some(7), true, Some(90)).is_err());
        assert!(expiry_days(Some(0), false, Some(90)).is_err());
        assert!(expiry_days(Some(MAX_EXPIRY_DAYS + 1), false, None).is_err());
    }
}
