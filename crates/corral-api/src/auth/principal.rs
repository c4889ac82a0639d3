//! `Principal`: the authenticated caller, from `Authorization: Bearer <JWT or crl_ key>`.
//! The user row, and for an access token whether its login (session family) is still
//! live, are read from the store through the credential cache (`cache`), which the
//! management API clears on every change: a role change, a lock, a deletion or a logout
//! takes effect on the next request rather than when the access token expires.
//!
//! A refused credential counts against the client address's budget of unauthenticated
//! requests (`AppState::ip_limiter`, shared with the auth routes, on the API and the
//! gateway alike): once it is spent, further refusals are 429, and an API key that is
//! not cached is refused without asking the store.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use chrono::Utc;
use corral_core::{User, secret};
use uuid::Uuid;

use super::cache::CachedKey;
use super::jwt::TokenType;
use crate::audit::{Audit, ClientIp};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct Principal {
    pub user: User,
    pub credential: Credential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An access token; `session` is the refresh family it belongs to.
    Jwt {
        session: Option<Uuid>,
    },
    ApiKey {
        id: Uuid,
    },
}

impl Principal {
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.user.role.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this action needs the admin role".into(),
            ))
        }
    }

    /// Creating or changing platform resources; viewers are read-only.
    pub fn require_mutate(&self) -> ApiResult<()> {
        if self.user.role.can_mutate() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "the viewer role is read-only; ask an admin for the user role".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .unwrap_or(ClientIp(None));
        match authenticate(parts, state, ip).await {
            Err(ApiError::Unauthorized(message)) => Err(refused(state, ip, message)),
            other => other,
        }
    }
}

/// 401, or 429 once the address has used up its unauthenticated requests.
fn refused(state: &AppState, ip: ClientIp, message: String) -> ApiError {
    match state.ip_limiter.check(&ip.key()) {
        Ok(()) => ApiError::Unauthorized(message),
        Err(retry_after) => too_many(retry_after),
    }
}

fn too_many(retry_after: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests {
        message: "too many unauthenticated requests from this address; retry later".into(),
        retry_after,
    }
}

async fn authenticate(parts: &Parts, state: &AppState, ip: ClientIp) -> ApiResult<Principal> {
    let token = bearer(parts)?;
    let principal = if token.starts_with(secret::API_KEY_PREFIX) {
        from_api_key(state, token, ip).await?
    } else if let Some(user) = super::cognito::user_for_bearer(state, token).await? {
        // A token of the identity provider (auth mode `cognito`).
        Principal {
            user,
            credential: Credential::Jwt { session: None },
        }
    } else {
        let claims = state.keys.verify(token, TokenType::Access)?;
        let generation = state.auth_cache.generation();
        // Every access token belongs to a login (its refresh family); once that is
        // logged out or revoked, its access tokens are refused too.
        let session = claims
            .sid
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
        if !session_live(state, session, generation).await? {
            return Err(ApiError::Unauthorized(
                "this session has ended (logged out or revoked); log in again".into(),
            ));
        }
        let user = user(state, claims.sub, generation)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
        Principal {
            user,
            credential: Credential::Jwt {
                session: Some(session),
            },
        }
    };
    if principal.user.disabled {
        return Err(ApiError::Unauthorized(
            "this account is locked; contact an administrator".into(),
        ));
    }
    if let Some(audit) = parts.extensions.get::<Audit>() {
        audit.actor(&principal.user);
    }
    Ok(principal)
}

fn bearer(parts: &Parts) -> ApiResult<&str> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "missing `Authorization: Bearer <token>` header; log in or use an API key".into(),
            )
        })?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("invalid Authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("expected `Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized("expected `Bearer <token>`".into()));
    }
    Ok(token.trim())
}

async fn from_api_key(state: &AppState, token: &str, ip: ClientIp) -> ApiResult<Principal> {
    let invalid = || ApiError::Unauthorized("invalid or expired API key".into());
    let hash = secret::hash(token);
    let generation = state.auth_cache.generation();
    let key = match state.auth_cache.key(&hash) {
        Some(key) => key,
        None if state.auth_cache.unknown_key(&hash) => return Err(invalid()),
        None => {
            if let Some(retry_after) = state.ip_limiter.exhausted(&ip.key()) {
                return Err(too_many(retry_after));
            }
            let Some(key) = state.store.api_key_by_hash(&hash).await? else {
                state.auth_cache.put_unknown_key(generation, &hash);
                return Err(invalid());
            };
            let key = CachedKey {
                id: key.id,
                owner_id: key.owner_id,
                expires_at: key.expires_at,
            };
            state.auth_cache.put_key(generation, &hash, key);
            key
        }
    };
    let now = Utc::now();
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(invalid());
    }
    let user = user(state, key.owner_id, generation)
        .await?
        .ok_or_else(invalid)?;
    // `last_used_at` is written behind, with the usage (about once a second).
    state.gateway.key_used(key.id, now);
    Ok(Principal {
        user,
        credential: Credential::ApiKey { id: key.id },
    })
}

/// The user row, from the cache or the store. `generation`: the cache's, taken before
/// the caller's first lookup.
async fn user(state: &AppState, id: Uuid, generation: u64) -> ApiResult<Option<User>> {
    if let Some(user) = state.auth_cache.user(id) {
        return Ok(Some(user));
    }
    let found = state.store.user_by_id(id).await?;
    if let Some(user) = &found {
        state.auth_cache.put_user(generation, user);
    }
    Ok(found)
}

/// Whether the login an access token belongs to is still live, from the cache or the
/// store (see `cache` for how fresh that is).
async fn session_live(state: &AppState, family: Uuid, generation: u64) -> ApiResult<bool> {
    if let Some(live) = state.auth_cache.session(family) {
        return Ok(live);
    }
    let live = state.store.session_family_live(family).await?;
    state.auth_cache.put_session(generation, family, live);
    Ok(live)
}
