//! Short-lived HS256 access tokens, plus the MFA challenge token that bridges the
//! two login steps. Each carries a `typ` so one kind can never stand in for the other.

use chrono::Utc;
use corral_core::Role;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

const ISSUER: &str = "corral";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    /// Proves the password step of a login; only good for the TOTP step.
    Mfa,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    pub typ: TokenType,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    /// The refresh-token family this access token was issued with (absent for MFA tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn new(secret: &[u8]) -> Self {
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    pub fn issue(
        &self,
        user: Uuid,
        role: Role,
        typ: TokenType,
        ttl: Duration,
        sid: Option<Uuid>,
    ) -> ApiResult<String> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user,
            role,
            typ,
            iss: ISSUER.into(),
            iat: now,
            exp: now + ttl.as_secs() as i64,
            sid,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(ApiError::internal)
    }

    /// Checks signature, algorithm (HS256 only: no `none`, no key confusion), issuer,
    /// expiry (no leeway) and type.
    pub fn verify(&self, token: &str, typ: TokenType) -> ApiResult<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = decode::<Claims>(token, &self.decoding, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            ApiError::Unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired; refresh it or log in again".into(),
                _ => "invalid token".into(),
            })
        })?;
        if data.claims.typ != typ {
            return Err(ApiError::Unauthorized("invalid token".into()));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef");
        let id = Uuid::now_v7();
        let token = keys
            .issue(
                id,
                Role::User,
                TokenType::Access,
                Duration::from_secs(60),
                None,
            )
            .unwrap();
        assert_eq!(keys.verify(&token, TokenType::Access).unwrap().sub, id);
        assert!(
            keys.verify(&token, TokenType::Mfa).is_err(),
            "type is checked"
        );
        let other = Keys::new(b"another-secret-another-secret-xx");
        assert!(
            other.verify(&token, TokenType::Access).is_err(),
            "signature is checked"
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = data_encoding::BASE64URL_NOPAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        parts[0] = &forged;
        assert!(
            keys.verify(&parts.join("."), TokenType::Access).is_err(),
            "alg none refused"
        );
    }

    #[test]
    fn expired_refused() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys
            .issue(
                Uuid::now_v7(),
                Role::User,
                TokenType::Access,
                Duration::ZERO,
                None,
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(keys.verify(&token, TokenType::Access).is_err());
    }
}
