//! `AppState`: what every handler shares. Cheap to clone (one `Arc`).

use corral_control::{Control, RoutingTable};
use corral_models::Weights;
use corral_store::Store;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use crate::audit::Refusals;
use crate::auth::cache::AuthCache;
use crate::auth::cognito::{AuthMode, Cognito};
use crate::auth::jwt::Keys;
use crate::auth::password::Passwords;
use crate::gateway::Gateway;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::settings::Settings;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    pub keys: Keys,
    /// Argon2 hashing and verification, bounded (see `auth::password`).
    pub passwords: Passwords,
    /// The user pool, in auth mode `cognito`.
    pub cognito: Option<Cognito>,
    /// API keys and users of recent requests (see `auth::cache`).
    pub auth_cache: AuthCache,
    pub mailer: Mailer,
    /// Unauthenticated requests, per client IP: the auth routes, and API and gateway
    /// requests whose credential is refused.
    pub ip_limiter: RateLimiter,
    /// Rate-limited requests, counted for the audit log.
    pub refusals: Refusals,
    /// Login, reset and MFA, per target account (e-mail or user id).
    pub account_limiter: RateLimiter,
    /// Deploys, per user.
    pub deploy_limiter: RateLimiter,
    pub started: Instant,
    /// The reconciler: the API changes `desired` through it, the gateway wakes with it.
    pub control: Control,
    /// `control`'s routing table, kept at hand for the gateway's per-request lookup.
    pub routing: RoutingTable,
    pub gateway: Gateway,
    pub metrics: Metrics,
    /// Model weights on this machine: the catalog's `present`, pulls and their progress.
    pub weights: Arc<Weights>,
    /// Wakes the outbound worker when this server queues a job (other servers' jobs are
    /// found by its polling).
    pub outbound_wakeup: tokio::sync::Notify,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        settings: Settings,
        mailer: Mailer,
        control: Control,
        weights: Arc<Weights>,
    ) -> Self {
        AppState(Arc::new(Inner {
            routing: control.routing(),
            gateway: Gateway::new(&settings),
            metrics: Metrics::default(),
            control,
            weights,
            keys: Keys::new(&settings.jwt_secret),
            passwords: Passwords::new(settings.argon2, settings.password_hashing),
            cognito: match &settings.auth {
                AuthMode::Builtin => None,
                AuthMode::Cognito(cognito) => Some(Cognito::new((**cognito).clone())),
            },
            auth_cache: AuthCache::default(),
            ip_limiter: RateLimiter::per_minute(settings.auth_rate_per_ip),
            refusals: Refusals::default(),
            account_limiter: RateLimiter::per_minute(settings.auth_rate_per_account),
            deploy_limiter: RateLimiter::per_minute(settings.deploy_rate_per_user),
            store,
            settings,
            mailer,
            started: Instant::now(),
            outbound_wakeup: tokio::sync::Notify::new(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
