//! Settings the API needs at run time. The binary fills these from flags, environment
//! and `corral.toml`; tests fill them directly.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Where users reach Corral (links in e-mails, OTP issuer), e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
    /// HS256 key for access tokens; at least 32 bytes.
    pub jwt_secret: Vec<u8>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Failed logins before an address is locked, and for how long.
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    /// Per client IP, on the auth routes: burst size and sustained rate per minute.
    pub auth_rate_per_ip: u32,
    /// Per account (e-mail), on login, reset and MFA.
    pub auth_rate_per_account: u32,
    /// Days a new API key lives unless its creator asks otherwise; None: keys never
    /// expire by default (`never` in the configuration).
    pub api_key_default_expiry_days: Option<u32>,
    /// Whether `POST /api/auth/signup` is open; admins can always create users.
    pub signup_enabled: bool,
    /// The role of a self-signed-up account: `user`, or `viewer` to keep new accounts
    /// read-only until an admin approves them (`signup_role` parses it).
    pub signup_default_role: corral_core::Role,
    /// Deploys (`POST /api/models/start`) per user per minute, with a burst of the same
    /// size.
    pub deploy_rate_per_user: u32,
    /// Require a verified e-mail before login.
    pub require_verified_email: bool,
    pub argon2: Argon2Params,
    /// How many Argon2 calls run at once, and how many more may wait (see `auth::password`).
    pub password_hashing: HashLimits,
    /// Proxies in front of Corral that append to `X-Forwarded-For` (an ALB: 1; CloudFront
    /// and an ALB: 2); the client IP is the entry this many places from the right. 0: the
    /// header is ignored and the TCP peer is the client (see `client_ip`).
    pub trusted_proxy_hops: u32,
    /// One-time token that lets the first admin sign up when no user exists.
    pub setup_token: Option<String>,
    /// Token for `GET /metrics` scrapers that do not log in.
    pub metrics_token: Option<String>,
    /// Hourly prices for the cost of running instances (`[prices]` in corral.toml).
    pub prices: corral_core::PriceTable,
    /// Gateway requests per user and minute (burst of as many); 0: unlimited.
    pub gateway_requests_per_minute: u32,
    /// Prompt + completion tokens per user and minute, counted when a request ends, so a
    /// spent budget refuses the next requests; 0: unlimited.
    pub gateway_tokens_per_minute: u32,
    /// Gateway requests of one user in flight at once (from authentication to the end of
    /// the answer's body); 0: unlimited.
    pub gateway_max_concurrent_requests: u32,
    /// How long the gateway waits for a whole request body before answering 408.
    pub gateway_body_timeout: Duration,
    /// Corral's own accounts (default) or an identity provider's.
    pub auth: crate::auth::cognito::AuthMode,
    /// Whether `url` model sources (and the weights manager's fetches) may target
    /// loopback, link-local or private addresses. Off: the control plane must not fetch
    /// from its own network on an admin's say-so (the cloud metadata address).
    pub allow_private_model_sources: bool,
}

/// Argon2id cost. The default is OWASP's first recommendation (19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Argon2Params {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The bound on Argon2 work: `in_flight` hashes run at once (each holds its memory, 19 MiB
/// by default), `queued` more wait for a turn, and callers beyond are refused with 503.
#[derive(Debug, Clone, Copy)]
pub struct HashLimits {
    pub in_flight: usize,
    pub queued: usize,
}

/// Queued hashes per worker: at tens of milliseconds a hash, the last in the queue waits
/// about a second or two, while a burst beyond is refused rather than held in memory.
const QUEUED_PER_WORKER: usize = 32;

impl HashLimits {
    /// What is configured, the rest derived: by default one hash per core (Argon2 is
    /// CPU-bound, so more at once only adds memory) and `QUEUED_PER_WORKER` waiting per
    /// hash in flight.
    pub fn configured(in_flight: Option<usize>, queued: Option<usize>) -> Self {
        let in_flight = in_flight
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
            .max(1);
        HashLimits {
            in_flight,
            queued: queued.unwrap_or(in_flight * QUEUED_PER_WORKER),
        }
    }
}

impl Default for HashLimits {
    fn default() -> Self {
        HashLimits::configured(None, None)
    }
}

/// `signup_default_role`'s value: `user` or `viewer`. An admin role for whoever signs up
/// would hand the platform to anyone, so it is refused.
pub fn signup_role(value: &str) -> Result<corral_core::Role, String> {
    match value.parse::<corral_core::Role>()? {
        corral_core::Role::Admin => Err(
            "signup_default_role must be user or viewer: self-signed-up accounts are never admins"
                .into(),
        ),
        role => Ok(role),
    }
}

impl Settings {
    /// Defaults suitable for tests and local use; the binary overrides what is configured.
    pub fn new(public_url: impl Into<String>, jwt_secret: Vec<u8>) -> Self {
        Settings {
            public_url: public_url.into(),
            jwt_secret,
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            lockout_threshold: 5,
            lockout_duration: Duration::from_secs(15 * 60),
            auth_rate_per_ip: 60,
            auth_rate_per_account: 20,
            api_key_default_expiry_days: Some(90),
            signup_enabled: true,
            signup_default_role: corral_core::Role::User,
            deploy_rate_per_user: 30,
            require_verified_email: true,
            argon2: Argon2Params::default(),
            password_hashing: HashLimits::default(),
            trusted_proxy_hops: 0,
            setup_token: None,
            metrics_token: None,
            prices: corral_core::PriceTable::default(),
            gateway_requests_per_minute: 600,
            gateway_tokens_per_minute: 200_000,
            gateway_max_concurrent_requests: 32,
            gateway_body_timeout: Duration::from_secs(60),
            auth: crate::auth::cognito::AuthMode::Builtin,
            allow_private_model_sources: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_limits_derive_the_queue_from_the_workers() {
        let l = HashLimits::configured(Some(3), None);
        assert_eq!((l.in_flight, l.queued), (3, 96));
        let l = HashLimits::configured(Some(0), Some(0));
        assert_eq!((l.in_flight, l.queued), (1, 0));
        let l = HashLimits::default();
        assert!(l.in_flight >= 1 && l.queued == l.in_flight * QUEUED_PER_WORKER);
    }

    #[test]
    fn signup_role_is_user_or_viewer() {
        assert_eq!(signup_role("user"), Ok(corral_core::Role::User));
        assert_eq!(signup_role("viewer"), Ok(corral_core::Role::Viewer));
        assert!(signup_role("admin").is_err());
        assert!(signup_role("root").is_err());
    }
}
