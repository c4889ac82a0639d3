//! Accounts and the credentials that hang off them. These are store rows; the API
//! decides what of them is shown (never a hash or a TOTP secret).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Role;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: Uuid,
    /// Stored lower-cased and trimmed; unique.
    pub email: String,
    pub display_name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub email_verified: bool,
    /// Set by an admin; a disabled account cannot log in and its tokens stop working.
    pub disabled: bool,
    /// Base32 TOTP secret; present from enrolment, `totp_enabled` once confirmed with a code.
    pub totp_secret: Option<String>,
    pub totp_enabled: bool,
    /// Last TOTP time step accepted, so a code cannot be used twice.
    pub totp_last_step: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl User {
    /// A new, unverified account with a fresh id.
    pub fn new(email: &str, password_hash: String, role: Role, now: DateTime<Utc>) -> Self {
        let email = normalize_email(email);
        User {
            id: Uuid::now_v7(),
            display_name: email.split('@').next().unwrap_or_default().to_string(),
            email,
            password_hash,
            role,
            email_verified: false,
            disabled: false,
            totp_secret: None,
            totp_enabled: false,
            totp_last_step: None,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        }
    }
}

pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Deliberately simple: one `@`, a non-empty local part, a dotted domain, no spaces or
/// control characters, at most 254 bytes (RFC 5321). Delivery is the real check.
pub fn is_valid_email(email: &str) -> bool {
    let email = email.trim();
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        }
        None => false,
    }
}

/// One link in a refresh-token family. Rotating marks the old link `replaced_at`
/// and inserts the next; presenting a replaced or revoked token revokes the family.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub replaced_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    /// First characters of the key (e.g. `crl_AbCd`), shown in lists so users can tell keys apart.
    pub prefix: String,
    pub key_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a one-time e-mailed token is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenPurpose {
    VerifyEmail,
    ResetPassword,
}

impl TokenPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::VerifyEmail => "verify_email",
            TokenPurpose::ResetPassword => "reset_password",
        }
    }
}

/// Failed-login bookkeeping, kept per e-mail address whether or not an account
/// exists, so lockout behaves the same for unknown addresses (no enumeration).
#[derive(Debug, Clone, PartialEq)]
pub struct LoginFailures {
    pub email: String,
    pub count: i64,
    pub locked_until: Option<DateTime<Utc>>,
}

/// A message that was sent, or would have been sent with no SMTP configured.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct OutboxMessage {
    pub id: Uuid,
    pub to: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(is_valid_email("user@example.com"));
        assert!(is_valid_email(" User@Example.com "));
        for bad in [
            "",
            "user",
            "@example.com",
            "user@",
            "user@example",
            "a b@c.d",
            "a@b..c",
            "a@@b.c",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
        assert_eq!(normalize_email(" User@Example.COM "), "user@example.com");
    }
}
