//! OIDC bearer tokens: JWTs an identity provider (Amazon Cognito first) signs with RSA,
//! verified against its JWKS, and the local user row each identity is mapped to.
//!
//! What is checked: the algorithm is RS256, RS384 or RS512 and the one the key declares
//! (so `none`, HS* with the public key as secret and other confusions are refused); the
//! `kid` names a key of the provider's JWKS; issuer; expiry and not-before with a small
//! leeway; and the client: ID tokens carry it in `aud`, Cognito access tokens in
//! `client_id` (told apart by `token_use`).
//!
//! The JWKS is cached. A token with an unknown `kid` (the provider rotated its keys)
//! refetches it, at most once per `refetch_interval`, so a stream of made-up kids cannot
//! turn Corral into a load generator against the provider; and it is refetched after an
//! hour anyway, so a key the provider withdrew stops being trusted.

use chrono::Utc;
use corral_core::{Role, User};
use corral_store::UserPatch;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, OnceCell, RwLock};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;
/// Keys older than this are refetched before use, so withdrawn keys stop working.
const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// A JWKS is a few kilobytes; anything far larger is not one.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `password_hash` of users who sign in through an identity provider. It is no PHC
/// string, so no password ever matches it, and it marks the account as external.
pub const EXTERNAL_PASSWORD_HASH: &str = "!external:oidc";

/// Whether `user` signs in through the identity provider rather than with a password.
pub fn is_external(user: &User) -> bool {
    user.password_hash == EXTERNAL_PASSWORD_HASH
}

/// The refusal of the built-in password and MFA routes for provider accounts.
pub fn managed_by_provider() -> ApiError {
    ApiError::denied(
        axum::http::StatusCode::FORBIDDEN,
        "managed_by_provider",
        "this account signs in through the identity provider (Amazon Cognito): change its \
         password and MFA there, and log in with POST /api/auth/login",
    )
}

/// How groups in the token become Corral roles. The highest role of the groups wins
/// (admin > user > viewer); a token in none of them gets `default_role`, or is refused
/// when that is None.
#[derive(Debug, Clone)]
pub struct RoleMapping {
    /// `cognito:groups` for Cognito; `groups` for most other providers.
    pub groups_claim: String,
    pub admin_group: String,
    pub user_group: String,
    pub viewer_group: String,
    pub default_role: Option<Role>,
}

impl Default for RoleMapping {
    fn default() -> Self {
        RoleMapping {
            groups_claim: "cognito:groups".into(),
            admin_group: "admin".into(),
            user_group: "user".into(),
            viewer_group: "viewer".into(),
            default_role: Some(Role::User),
        }
    }
}

impl RoleMapping {
    /// The group that gives `role`.
    pub fn group_for(&self, role: Role) -> &str {
        match role {
            Role::Admin => &self.admin_group,
            Role::User => &self.user_group,
            Role::Viewer => &self.viewer_group,
        }
    }

    fn role(&self, claims: &Map<String, Value>) -> ApiResult<Role> {
        let groups: Vec<&str> = match claims.get(&self.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(one)) => vec![one.as_str()],
            _ => Vec::new(),
        };
        let has = |name: &str| groups.contains(&name);
        if has(&self.admin_group) {
            Ok(Role::Admin)
        } else if has(&self.user_group) {
            Ok(Role::User)
        } else if has(&self.viewer_group) {
            Ok(Role::Viewer)
        } else {
            self.default_role.ok_or_else(|| {
                ApiError::denied(
                    axum::http::StatusCode::FORBIDDEN,
                    "no_role",
                    format!(
                        "your account is in none of the groups {}, {} or {}; ask an \
                         administrator to add it to one",
                        self.admin_group, self.user_group, self.viewer_group
                    ),
                )
            })
        }
    }
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The provider's stable user id (`sub`).
    pub subject: String,
    /// Present in ID tokens; Cognito access tokens carry none.
    pub email: Option<String>,
    /// `email_verified` when the token states it.
    pub email_verified: Option<bool>,
    /// Cognito's user name (`cognito:username`, or `username` in access tokens).
    pub username: Option<String>,
    pub role: Role,
    /// An access token rather than an ID token.
    pub is_access: bool,
}

/// Where the provider's keys are and whom its tokens must be for.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub jwks_url: String,
    pub roles: RoleMapping,
    /// Least time between two JWKS fetches caused by unknown `kid`s.
    pub refetch_interval: Duration,
}

pub struct Verifier {
    config: OidcConfig,
    /// Made on first use: building it can fail, and constructing the state cannot.
    http: OnceCell<reqwest::Client>,
    keys: RwLock<KeyCache>,
    /// Held while fetching, so concurrent misses make one request; holds the time of the
    /// last attempt, successful or not.
    fetching: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched_at: Option<Instant>,
}

impl KeyCache {
    fn fresh(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        self.fetched_at
            .filter(|at| at.elapsed() < MAX_KEY_AGE)
            .and_then(|_| self.keys.get(kid).cloned())
    }
}

impl Verifier {
    pub fn new(config: OidcConfig) -> Self {
        Verifier {
            config,
            http: OnceCell::new(),
            keys: RwLock::new(KeyCache::default()),
            fetching: Mutex::new(None),
        }
    }

    /// Whether `token` is meant for this verifier rather than Corral's own HS256 tokens:
    /// any JWT whose header is not HS256. Those that are not RS* are refused by `verify`.
    pub fn claims_token(token: &str) -> bool {
        jsonwebtoken::decode_header(token).is_ok_and(|h| h.alg != Algorithm::HS256)
    }

    /// Verifies `token` (see the module docs) and maps its groups to a role.
    pub async fn verify(&self, token: &str) -> ApiResult<Identity> {
        let invalid = || ApiError::Unauthorized("invalid token".into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
        ) {
            return Err(invalid());
        }
        let kid = header.kid.ok_or_else(invalid)?;
        let (alg, key) = self.key(&kid).await?;
        if alg != header.alg {
            return Err(invalid());
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // Checked below: ID and access tokens name the client in different claims.
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| {
                ApiError::Unauthorized(match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "token expired; refresh it or log in again".into()
                    }
                    _ => "invalid token".into(),
                })
            })?
            .claims;
        let string = |name: &str| claims.get(name).and_then(Value::as_str);
        let audience_has = |id: &str| match claims.get("aud") {
            Some(Value::String(aud)) => aud == id,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(id)),
            _ => false,
        };
        let client = self.config.client_id.as_str();
        let is_access = match string("token_use") {
            Some("access") => {
                if string("client_id") != Some(client) {
                    return Err(invalid());
                }
                true
            }
            Some("id") | None => {
                if !audience_has(client) {
                    return Err(invalid());
                }
                false
            }
            Some(_) => return Err(invalid()),
        };
        let subject = string("sub").ok_or_else(invalid)?.to_string();
        Ok(Identity {
            role: self.config.roles.role(&claims)?,
            email: string("email").map(corral_core::user::normalize_email),
            email_verified: claims.get("email_verified").and_then(|v| match v {
                Value::Bool(b) => Some(*b),
                // Some providers send it as a string.
                Value::String(s) => s.parse().ok(),
                _ => None,
            }),
            username: string("cognito:username")
                .or_else(|| string("username"))
                .map(str::to_string),
            subject,
            is_access,
        })
    }

    /// The key named `kid`, from the cache or, when unknown or old, a fresh JWKS.
    async fn key(&self, kid: &str) -> ApiResult<(Algorithm, DecodingKey)> {
        if let Some(key) = self.keys.read().await.fresh(kid) {
            return Ok(key);
        }
        let mut last_attempt = self.fetching.lock().await;
        // Another request may have fetched while this one waited for the lock.
        let stale = {
            let cache = self.keys.read().await;
            if let Some(key) = cache.fresh(kid) {
                return Ok(key);
            }
            cache.keys.get(kid).cloned()
        };
        let too_soon = last_attempt.is_some_and(|at| at.elapsed() < self.config.refetch_interval);
        if !too_soon {
            *last_attempt = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(keys = keys.len(), url = %self.config.jwks_url, "fetched the identity provider's keys");
                    let mut cache = self.keys.write().await;
                    cache.keys = keys;
                    cache.fetched_at = Some(Instant::now());
                    if let Some(key) = cache.keys.get(kid) {
                        return Ok(key.clone());
                    }
                    return Err(ApiError::Unauthorized(
                        "invalid token: unknown signing key".into(),
                    ));
                }
                // The old keys keep working while the provider is unreachable.
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.config.jwks_url, "could not fetch the identity provider's keys")
                }
            }
        }
        match stale {
            Some(key) => Ok(key),
            None if self.keys.read().await.fetched_at.is_none() => Err(ApiError::Unavailable(
                "the identity provider's signing keys cannot be fetched; try again later".into(),
            )),
            None => Err(ApiError::Unauthorized(
                "invalid token: unknown signing key".into(),
            )),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
        let http = self
            .http
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .await?;
        let mut response = http
            .get(&self.config.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        parse_jwks(&body)
    }
}

/// The RSA signing keys of a JWKS document, by `kid`. Keys of other types or uses, and
/// keys without a `kid`, are skipped rather than failing the whole set.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, (Algorithm, DecodingKey)>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let mut keys = HashMap::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            || matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature)
        {
            continue;
        }
        // A key that names no algorithm is taken as RS256, the one OIDC requires.
        let alg = match jwk.common.key_algorithm {
            None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(KeyAlgorithm::RS384) => Algorithm::RS384,
            Some(KeyAlgorithm::RS512) => Algorithm::RS512,
            Some(_) => continue,
        };
        let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(&jwk)) else {
            continue;
        };
        keys.insert(kid, (alg, key));
    }
    Ok(keys)
}

/// The local row of a provider identity: created on first sight (keyed by e-mail, so
/// ownership, audit and usage work as for built-in accounts), its role kept in step with
/// the provider's groups.
pub async fn local_user(state: &AppState, identity: &Identity, email: &str) -> ApiResult<User> {
    if identity.email_verified == Some(false) {
        return Err(ApiError::denied(
            axum::http::StatusCode::FORBIDDEN,
            "email_not_verified",
            "the identity provider has not verified this account's e-mail address yet",
        ));
    }
    let now = Utc::now();
    let existing = match state.store.user_by_email(email).await? {
        Some(user) => user,
        None => {
            let mut user = User::new(
                email,
                EXTERNAL_PASSWORD_HASH.to_string(),
                identity.role,
                now,
            );
            user.email_verified = true;
            match state.store.create_user(&user).await {
                Ok(()) => {
                    tracing::info!(user_id = %user.id, email, role = %user.role, "created the local row of a provider account");
                    return Ok(user);
                }
                // Two first requests raced; the other one created it.
                Err(corral_store::Error::Conflict(_)) => state
                    .store
                    .user_by_email(email)
                    .await?
                    .ok_or_else(|| ApiError::internal("user vanished after a conflict"))?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    if existing.role == identity.role {
        return Ok(existing);
    }
    let patch = UserPatch {
        role: Some(identity.role),
        ..UserPatch::default()
    };
    tracing::info!(user_id = %existing.id, from = %existing.role, to = %identity.role, "role follows the provider's groups");
    let updated = state
        .store
        .update_user(existing.id, &patch, now)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
    // The user's API keys must not keep acting with the cached old role.
    state.auth_cache.invalidate();
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn groups_map_to_the_highest_role() {
        let m = RoleMapping::default();
        let role = |v| m.role(&claims(v)).map_err(|e| e.code());
        assert_eq!(
            role(serde_json::json!({"cognito:groups": ["viewer", "admin"]})),
            Ok(Role::Admin)
        );
        assert_eq!(
            role(serde_json::json!({"cognito:groups": ["viewer", "user"]})),
            Ok(Role::User)
        );
        assert_eq!(
            role(serde_json::json!({"cognito:groups": "viewer"})),
            Ok(Role::Viewer)
        );
        assert_eq!(role(serde_json::json!({})), Ok(Role::User));
        let refuse = RoleMapping {
            default_role: None,
            groups_claim: "groups".into(),
            ..RoleMapping::default()
        };
        assert_eq!(
            refuse
                .role(&claims(serde_json::json!({"cognito:groups": ["admin"]})))
                .map_err(|e| e.code()),
            Err("no_role"),
            "the configured claim is the one read"
        );
    }

    #[test]
    fn jwks_keeps_only_rsa_signing_keys_with_a_kid() {
        let n = "j1pT3xKbswmMySvCefmiD3mfDaRFpZ9Y3Jl4fF0hMaCRVAt_e0yR7BeueDfqmj_NhVSO0WB5ao5e8V-9RFQOtK8SrqKl3i01-CyWYPICwybaGKhbJJR0S_6cZ8n5kscF1MjpIlsJcCzm-yKgTc3Mxk6KtrLoNgRvMwGLeHUXPkhS9YHfDKRe864iMFOK4df69brIYEICG2VLduh0hXYa0i-J3drwm7vxNdX7pVpCDu34qJtYoWq6CXt3Tzfi3YfWp8cFjGNbaDa3WnCd2IXpp0TFsFS-cEsw5rJjSl5OllJGeZKBtLeyVTy9PYwnk7MW43WSYeYstbk9NluX4H8Iuw";
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "a", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "alg": "RS512", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB"},
            {"kty": "RSA", "alg": "RS256", "n": n, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": "AQAB"},
            {"kty": "weird"}
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["a", "b"]);
        assert_eq!(keys["b"].0, Algorithm::RS512);
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(b"not json").is_err());
    }
}
