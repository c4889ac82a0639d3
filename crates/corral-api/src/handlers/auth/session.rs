//! Sessions: a short-lived access token (JWT) plus a rotating refresh token. The refresh
//! token is random and stored only as a hash. Programs get it in the body; the browser UI
//! keeps it only in an httpOnly cookie scoped to `/api/auth`, out of reach of scripts.
//!
//! Each login starts a family; every refresh replaces the family's current link. A token
//! that was already replaced or revoked coming back means it leaked (or a client raced
//! itself), so the whole family is revoked and both holders must log in again.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, COOKIE, SET_COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use corral_core::{RefreshSession, User, secret};
use corral_store::UserPatch;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use utoipa::ToSchema;
use uuid::Uuid;

use super::account_disabled;
use crate::audit::{Audit, ClientIp};
use crate::auth::jwt::TokenType;
use crate::auth::{Credential, Principal};
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::settings::Settings;
use crate::state::AppState;
use crate::views::UserView;

const REFRESH_COOKIE: &str = "corral_refresh";
/// The cookie goes only to the auth routes (refresh, logout), never to the rest of the API.
const COOKIE_PATH: &str = "/api/auth";
/// Longest user agent kept with a session: enough to tell browsers apart, bounded storage.
const USER_AGENT_MAX: usize = 256;

/// The answer of a successful login, MFA step, setup or refresh.
#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    /// Send as `Authorization: Bearer <access_token>`.
    access_token: String,
    /// Single use: `POST /api/auth/refresh` returns a new pair and retires this one.
    /// Also set as the httpOnly `corral_refresh` cookie.
    refresh_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until `access_token` expires.
    expires_in: u64,
    user: UserView,
    /// Auth mode `cognito` only: the user pool's ID token (OIDC claims of the user).
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

/// Where a session was opened from, kept with it so users can tell their sessions apart.
pub struct Client {
    ip: Option<String>,
    user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Client {
            ip: parts
                .extensions
                .get::<ClientIp>()
                .and_then(|ip| ip.0)
                .map(|ip| ip.to_string()),
            user_agent: parts
                .headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(USER_AGENT_MAX).collect()),
        })
    }
}

/// Completes a login: clears the address's failure count, records the login time and
/// opens a new session family. Returns the cookie headers and the token pair.
pub async fn sign_in(
    state: &AppState,
    user: User,
    client: &Client,
) -> ApiResult<(HeaderMap, TokenPair)> {
    let now = Utc::now();
    state.store.clear_login_failures(&user.email).await?;
    let patch = UserPatch {
        last_login_at: Some(now),
        ..UserPatch::default()
    };
    let user = state
        .store
        .update_user(user.id, &patch, now)
        .await?
        .unwrap_or(user);
    let (refresh_token, session) = new_link(state, &user, Uuid::now_v7(), client)?;
    state.store.create_session(&session).await?;
    token_pair(state, &user, session.family_id, refresh_token)
}

/// The next link of `family`: a fresh random token and its stored (hashed) session.
fn new_link(
    state: &AppState,
    user: &User,
    family_id: Uuid,
    client: &Client,
) -> ApiResult<(String, RefreshSession)> {
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(state.settings.refresh_ttl)
        .map_err(|e| ApiError::internal(format!("refresh ttl: {e}")))?;
    let token = secret::random_token();
    let session = RefreshSession {
        id: Uuid::now_v7(),
        user_id: user.id,
        family_id,
        token_hash: secret::hash(&token),
        created_at: now,
        expires_at: now + ttl,
        replaced_at: None,
        revoked_at: None,
        ip: client.ip.clone(),
        user_agent: client.user_agent.clone(),
    };
    Ok((token, session))
}

fn token_pair(
    state: &AppState,
    user: &User,
    family_id: Uuid,
    refresh_token: String,
) -> ApiResult<(HeaderMap, TokenPair)> {
    let settings = &state.settings;
    let access_token = state.keys.issue(
        user.id,
        user.role,
        TokenType::Access,
        settings.access_ttl,
        Some(family_id),
    )?;
    let mut headers = no_store();
    headers.insert(
        SET_COOKIE,
        cookie(settings, &refresh_token, settings.refresh_ttl.as_secs())?,
    );
    Ok((
        headers,
        TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: settings.access_ttl.as_secs(),
            user: UserView::from(user),
            id_token: None,
        },
    ))
}

/// The answer of a sign-in through the identity provider: its tokens, in the shape of
/// Corral's own, with the refresh token also in the `corral_refresh` cookie.
pub fn provider_pair(
    state: &AppState,
    user: &User,
    access_token: String,
    expires_in: u64,
    refresh_token: String,
    id_token: String,
) -> ApiResult<(HeaderMap, TokenPair)> {
    let settings = &state.settings;
    let mut headers = no_store();
    headers.insert(
        SET_COOKIE,
        cookie(settings, &refresh_token, settings.refresh_ttl.as_secs())?,
    );
    Ok((
        headers,
        TokenPair {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in,
            user: UserView::from(user),
            id_token: Some(id_token),
        },
    ))
}

/// Answers that carry credentials must not be kept by caches (RFC 6749 §5.1).
pub fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers
}

/// `Set-Cookie` for the refresh token; an empty value with `max_age` 0 deletes it.
fn cookie(settings: &Settings, value: &str, max_age: u64) -> ApiResult<HeaderValue> {
    // Over plain http (local use) a Secure cookie would never come back; over https it must
    // never leave the TLS channel.
    let secure = if settings
        .public_url
        .to_ascii_lowercase()
        .starts_with("https://")
    {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .map_err(ApiError::internal)
}

fn clear_cookie(settings: &Settings) -> ApiResult<HeaderMap> {
    let mut headers = no_store();
    headers.insert(SET_COOKIE, cookie(settings, "", 0)?);
    Ok(headers)
}

/// The refresh token from the body, else from the `corral_refresh` cookie.
fn presented_token(body: Option<String>, headers: &HeaderMap) -> Option<String> {
    body.filter(|t| !t.is_empty()).or_else(|| {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == REFRESH_COOKIE && !value.is_empty()).then(|| value.to_string())
            })
    })
}

#[derive(Default, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// Optional when the `corral_refresh` cookie is sent (the browser UI).
    refresh_token: Option<String>,
}

/// Exchanges a refresh token for a new token pair; the presented token is retired.
///
/// The refresh token comes from the body or, when the body has none (or there is no
/// body), from the `corral_refresh` cookie. Presenting a token that was already used or
/// revoked signs out its whole login (every token of the family) and answers 401
/// `refresh_token_reused`. A failed refresh also deletes the cookie.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    request_body(content = Option<RefreshRequest>, description = "may be omitted when the cookie is sent"),
    responses(
        (status = 200, body = TokenPair, headers(("Set-Cookie" = String, description = "the new `corral_refresh` cookie"))),
        (status = 401, description = "`invalid_refresh_token` (missing, unknown or expired) or `refresh_token_reused`"),
        (status = 403, description = "`account_disabled`"),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    audit: Audit,
    client: Client,
    headers: HeaderMap,
    body: Option<Json<RefreshRequest>>,
) -> Response {
    audit.action("auth.refresh");
    let token = presented_token(body.and_then(|Json(b)| b.refresh_token), &headers);
    let refreshed = match &state.cognito {
        Some(cognito) => super::cognito::refresh(&state, cognito, &audit, token).await,
        None => rotate(&state, &audit, &client, token).await,
    };
    match refreshed {
        Ok((headers, pair)) => (headers, Json(pair)).into_response(),
        // The cookie is of no further use; dropping it tells the browser UI to log in again.
        // Other failures (store down) leave it: it may still be good.
        Err(e) if matches!(e.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            match clear_cookie(&state.settings) {
                Ok(headers) => (headers, e).into_response(),
                Err(internal) => internal.into_response(),
            }
        }
        Err(e) => e.into_response(),
    }
}

fn invalid_refresh() -> ApiError {
    ApiError::denied(
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
        "missing, unknown or expired refresh token; log in again",
    )
}

async fn rotate(
    state: &AppState,
    audit: &Audit,
    client: &Client,
    token: Option<String>,
) -> ApiResult<(HeaderMap, TokenPair)> {
    let token = token.ok_or_else(invalid_refresh)?;
    let now = Utc::now();
    let session = state
        .store
        .session_by_hash(&secret::hash(&token))
        .await?
        .ok_or_else(invalid_refresh)?;
    audit.target(session.user_id);
    if session.replaced_at.is_some() || session.revoked_at.is_some() {
        return Err(reused(state, audit, &session).await);
    }
    if session.expires_at <= now {
        audit.detail("expired");
        return Err(invalid_refresh());
    }
    let user = state
        .store
        .user_by_id(session.user_id)
        .await?
        .ok_or_else(invalid_refresh)?;
    audit.actor(&user);
    if user.disabled {
        audit.detail("disabled");
        state
            .store
            .revoke_session_family(session.family_id, now)
            .await?;
        return Err(account_disabled());
    }
    let (next_token, next) = new_link(state, &user, session.family_id, client)?;
    // Conditional: of two requests presenting the same token, only one rotates it; the
    // other is a reuse like any other.
    if !state.store.rotate_session(session.id, &next, now).await? {
        return Err(reused(state, audit, &session).await);
    }
    token_pair(state, &user, session.family_id, next_token)
}

async fn reused(state: &AppState, audit: &Audit, session: &RefreshSession) -> ApiError {
    audit.action("auth.refresh_reuse");
    tracing::warn!(user_id = %session.user_id, family_id = %session.family_id,
        "refresh token reused: revoking its session family");
    if let Err(e) = state
        .store
        .revoke_session_family(session.family_id, Utc::now())
        .await
    {
        return e.into();
    }
    ApiError::denied(
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
        "this refresh token was already used, so every session of its login was signed out; \
         log in again",
    )
}

#[derive(Default, Deserialize, ToSchema)]
pub struct LogoutRequest {
    /// The session to end; defaults to the `corral_refresh` cookie, else to the session
    /// of the bearer access token.
    refresh_token: Option<String>,
    /// End every session of the bearer token's user (needs `Authorization: Bearer`).
    #[serde(default)]
    all: bool,
}

/// Ends a session (its whole refresh family) and deletes the refresh cookie.
///
/// With `{"all": true}` and a bearer token, ends every session of that user instead and
/// deletes their API keys. The access tokens of an ended session are refused from then
/// on (within about a second on every server sharing the store).
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "may be omitted"),
    responses(
        (status = 204, description = "signed out; the cookie is deleted"),
        (status = 401, description = "`all` without a valid bearer token"),
    ))]
pub async fn logout(
    State(state): State<AppState>,
    audit: Audit,
    mut parts: Parts,
    body: Option<Json<LogoutRequest>>,
) -> ApiResult<(StatusCode, HeaderMap)> {
    audit.action("auth.logout");
    let body = body.map(|Json(b)| b).unwrap_or_default();
    if let Some(cognito) = &state.cognito {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let token = presented_token(body.refresh_token, &parts.headers);
        super::cognito::logout(cognito, &audit, token, body.all, bearer).await?;
        return Ok((StatusCode::NO_CONTENT, clear_cookie(&state.settings)?));
    }
    let now = Utc::now();
    // The bearer token is optional: the UI logs out with just its cookie, often after the
    // access token expired. It is only required for `all`.
    let principal = if parts
        .headers
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        Principal::from_request_parts(&mut parts, &state).await.ok()
    } else {
        None
    };
    if body.all {
        let principal = principal.ok_or_else(|| {
            ApiError::Unauthorized(
                "logging out everywhere needs `Authorization: Bearer <access token>`".into(),
            )
        })?;
        let keys = super::revoke_credentials(&state, principal.user.id, true, now).await?;
        audit.detail(&format!("all revoked_api_keys={keys}"));
        return Ok((StatusCode::NO_CONTENT, clear_cookie(&state.settings)?));
    }
    let family = match presented_token(body.refresh_token, &parts.headers) {
        Some(token) => state
            .store
            .session_by_hash(&secret::hash(&token))
            .await?
            .map(|session| {
                audit.target(session.user_id);
                session.family_id
            }),
        None => principal.and_then(|p| match p.credential {
            Credential::Jwt { session } => session,
            Credential::ApiKey { .. } => None,
        }),
    };
    match family {
        Some(family) => {
            state.store.revoke_session_family(family, now).await?;
        }
        // Logging out twice, or with a token the server no longer knows, is still a logout.
        None => audit.detail("no_session"),
    }
    Ok((StatusCode::NO_CONTENT, clear_cookie(&state.settings)?))
}
