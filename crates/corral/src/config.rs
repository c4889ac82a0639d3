//! Configuration for `corral serve` and the admin commands. Each setting can come from
//! a flag, a `CORRAL_*` environment variable, or `corral.toml`, in that order of
//! precedence, and falls back to a default that suits a laptop.

use clap::Args;
use corral_api::auth::cognito::{AuthMode, CognitoSettings};
use corral_api::auth::oidc::RoleMapping;
use corral_control::HostCapacity;
use corral_core::Quota;
use corral_driver_ecs::{EcsConfig, LaunchMode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::CliError;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = ".corral";
pub const DEFAULT_CONFIG_FILE: &str = "corral.toml";

/// Where the data lives; shared by every command that opens the store.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Configuration file (TOML). Default: ./corral.toml when it exists.
    #[arg(long, env = "CORRAL_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database, the signing key, logs and models.
    #[arg(long, env = "CORRAL_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: `sqlite://PATH`, `postgres://USER:PASS@HOST/DB` or
    /// `dynamodb://TABLE[?region=REGION]`. Default: SQLite at DATA_DIR/corral.db.
    #[arg(
        long,
        env = "CORRAL_DATABASE_URL",
        value_name = "URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Use 0.0.0.0:8080 only behind TLS.
    #[arg(long, env = "CORRAL_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// URL users reach Corral at (links in e-mails). Default: http://LISTEN.
    #[arg(long, env = "CORRAL_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Lifetime of access tokens, e.g. 15m.
    #[arg(long, env = "CORRAL_ACCESS_TOKEN_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub access_token_ttl: Option<Duration>,
    /// Lifetime of refresh tokens, e.g. 30d.
    #[arg(long, env = "CORRAL_REFRESH_TOKEN_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub refresh_token_ttl: Option<Duration>,
    /// Failed logins before an address is locked.
    #[arg(long, env = "CORRAL_LOCKOUT_THRESHOLD", value_name = "N")]
    pub lockout_threshold: Option<u32>,
    /// How long a locked address stays locked, e.g. 15m.
    #[arg(long, env = "CORRAL_LOCKOUT_DURATION", value_name = "DURATION", value_parser = parse_duration)]
    pub lockout_duration: Option<Duration>,
    /// Auth requests allowed per client IP per minute (burst of the same size).
    #[arg(long, env = "CORRAL_AUTH_RATE_PER_IP", value_name = "N")]
    pub auth_rate_per_ip: Option<u32>,
    /// Login, reset and MFA attempts allowed per account per minute.
    #[arg(long, env = "CORRAL_AUTH_RATE_PER_ACCOUNT", value_name = "N")]
    pub auth_rate_per_account: Option<u32>,
    /// How long a new API key lives unless its creator asks otherwise, in whole days
    /// (e.g. 90d, the default), or `never` (keys never expire unless asked).
    #[arg(long, env = "CORRAL_API_KEY_EXPIRY", value_name = "DAYS|never")]
    pub api_key_expiry: Option<String>,
    /// Allow self-service sign-up (true/false). Admins can always create users.
    #[arg(long, env = "CORRAL_SIGNUP_ENABLED", value_name = "BOOL")]
    pub signup_enabled: Option<bool>,
    /// Role of self-signed-up accounts: user (default), or viewer to keep them
    /// read-only until an admin gives them the user role.
    #[arg(long, env = "CORRAL_SIGNUP_DEFAULT_ROLE", value_name = "ROLE")]
    pub signup_default_role: Option<String>,
    /// Deploys (POST /api/models/start) allowed per user per minute (burst of the same
    /// size). Default 30.
    #[arg(long, env = "CORRAL_DEPLOY_RATE_PER_USER", value_name = "N")]
    pub deploy_rate_per_user: Option<u32>,
    /// Require a verified e-mail address before login (true/false).
    #[arg(long, env = "CORRAL_REQUIRE_VERIFIED_EMAIL", value_name = "BOOL")]
    pub require_verified_email: Option<bool>,
    /// Trust X-Forwarded-For for the client IP (only behind your own proxy/ALB); the same
    /// as --trusted-proxy-hops 1 when that is not set.
    #[arg(long, env = "CORRAL_TRUST_FORWARDED_FOR", value_name = "BOOL")]
    pub trust_forwarded_for: Option<bool>,
    /// Proxies in front of Corral that append to X-Forwarded-For (ALB: 1, CloudFront + ALB:
    /// 2); the client IP is the entry this many places from the right. 0: ignore the header.
    #[arg(long, env = "CORRAL_TRUSTED_PROXY_HOPS", value_name = "N")]
    pub trusted_proxy_hops: Option<u32>,
    /// Secret for signing access tokens (≥ 32 bytes). Default: generated once and kept in DATA_DIR/jwt-secret.
    #[arg(
        long,
        env = "CORRAL_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Bearer token that Prometheus may use for /metrics without logging in.
    #[arg(
        long,
        env = "CORRAL_METRICS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    /// Gateway requests allowed per user per minute (burst of the same size); 0: no limit.
    #[arg(long, env = "CORRAL_GATEWAY_REQUESTS_PER_MINUTE", value_name = "N")]
    pub gateway_requests_per_minute: Option<u32>,
    /// Prompt + completion tokens allowed per user per minute through the gateway; 0: no limit.
    #[arg(long, env = "CORRAL_GATEWAY_TOKENS_PER_MINUTE", value_name = "N")]
    pub gateway_tokens_per_minute: Option<u32>,
    /// Gateway requests one user may have in flight at once; 0: no limit.
    #[arg(long, env = "CORRAL_GATEWAY_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub gateway_max_concurrent_requests: Option<u32>,
    /// How long the gateway waits for a whole request body before answering 408, e.g. 60s.
    #[arg(long, env = "CORRAL_GATEWAY_BODY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub gateway_body_timeout: Option<Duration>,
    /// SMTP relay for outgoing mail. Without it, mail goes to the outbox (GET /api/admin/outbox).
    #[arg(long, env = "CORRAL_SMTP_HOST", value_name = "HOST")]
    pub smtp_host: Option<String>,
    #[arg(long, env = "CORRAL_SMTP_PORT", value_name = "PORT")]
    pub smtp_port: Option<u16>,
    #[arg(long, env = "CORRAL_SMTP_USERNAME", value_name = "USER")]
    pub smtp_username: Option<String>,
    /// SMTP password (prefer the environment variable over the flag).
    #[arg(
        long,
        env = "CORRAL_SMTP_PASSWORD",
        value_name = "PASS",
        hide_env_values = true
    )]
    pub smtp_password: Option<String>,
    /// Sender address, e.g. "Corral <corral@example.com>".
    #[arg(long, env = "CORRAL_SMTP_FROM", value_name = "ADDR")]
    pub smtp_from: Option<String>,
    /// starttls (default), tls or none.
    #[arg(long, env = "CORRAL_SMTP_SECURITY", value_name = "MODE")]
    pub smtp_security: Option<String>,
    /// Let model sources (`url` entries, the Ollama registry) be on loopback, link-local
    /// or private addresses (true/false; default false: the control plane refuses to
    /// fetch from its own network, such as the cloud metadata address).
    #[arg(long, env = "CORRAL_ALLOW_PRIVATE_MODEL_SOURCES", value_name = "BOOL")]
    pub allow_private_model_sources: Option<bool>,
    /// Before downloading weights with less than this much disk free (MiB) under the
    /// data dir, delete the weights no catalog entry or instance needs (as `corral
    /// models gc --apply`). 0 turns it off.
    #[arg(long, env = "CORRAL_WEIGHTS_GC_MIN_FREE_MIB", value_name = "MIB")]
    pub weights_gc_min_free_mib: Option<u64>,
    /// Log filter, e.g. info or corral_api=debug.
    #[arg(long, env = "CORRAL_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// ECS cluster for the `ecs` compute driver; the driver is enabled when this (or
    /// `[ecs] cluster`) is set. The rest of its settings are in `[ecs]` of corral.toml.
    #[arg(long, env = "CORRAL_ECS_CLUSTER", value_name = "NAME")]
    pub ecs_cluster: Option<String>,
    /// Subnets of the ECS tasks, comma-separated.
    #[arg(
        long,
        env = "CORRAL_ECS_SUBNETS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub ecs_subnets: Option<Vec<String>>,
    /// Security groups of the ECS tasks, comma-separated.
    #[arg(
        long,
        env = "CORRAL_ECS_SECURITY_GROUPS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub ecs_security_groups: Option<Vec<String>>,
    /// CloudWatch Logs group the ECS tasks log to.
    #[arg(long, env = "CORRAL_ECS_LOG_GROUP", value_name = "NAME")]
    pub ecs_log_group: Option<String>,
    /// Role ECS uses to pull the images and write the logs.
    #[arg(long, env = "CORRAL_ECS_EXECUTION_ROLE_ARN", value_name = "ARN")]
    pub ecs_execution_role_arn: Option<String>,
    /// Role the model servers run as (they need no AWS access; usually unset).
    #[arg(long, env = "CORRAL_ECS_TASK_ROLE_ARN", value_name = "ARN")]
    pub ecs_task_role_arn: Option<String>,
    /// Image of the ollama runtime. Default: ollama/ollama:latest.
    #[arg(long, env = "CORRAL_ECS_RUNTIME_IMAGE", value_name = "IMAGE")]
    pub ecs_runtime_image: Option<String>,
    /// Image of the corral-runner runtime; unset: only the ollama runtime runs on ECS.
    #[arg(long, env = "CORRAL_ECS_RUNNER_IMAGE", value_name = "IMAGE")]
    pub ecs_runner_image: Option<String>,
    /// GPU instance types offered, comma-separated (with a GPU capacity provider).
    #[arg(
        long,
        env = "CORRAL_ECS_GPU_INSTANCE_TYPES",
        value_name = "TYPES",
        value_delimiter = ','
    )]
    pub ecs_gpu_instance_types: Option<Vec<String>>,
    /// A capacity provider per GPU instance type: `g5.xlarge=cp-g5,g4dn.xlarge=cp-g4dn`.
    #[arg(
        long,
        env = "CORRAL_ECS_GPU_CAPACITY_PROVIDERS",
        value_name = "TYPE=PROVIDER,...",
        value_delimiter = ','
    )]
    pub ecs_gpu_capacity_providers: Option<Vec<String>>,
    /// How replicas run on ECS: `task` (one RunTask each, the default) or `service` (one
    /// ECS service per instance, desiredCount = replicas).
    #[arg(long, env = "CORRAL_ECS_LAUNCH", value_name = "task|service")]
    pub ecs_launch: Option<String>,
    /// Where accounts live: `builtin` (Corral's own, default) or `cognito` (an Amazon
    /// Cognito user pool; the rest of its settings are in `[auth.cognito]`).
    #[arg(long, env = "CORRAL_AUTH_MODE", value_name = "MODE")]
    pub auth_mode: Option<String>,
    /// Region of the Cognito user pool. Default: AWS_REGION.
    #[arg(long, env = "CORRAL_COGNITO_REGION", value_name = "REGION")]
    pub cognito_region: Option<String>,
    /// The Cognito user pool, e.g. us-east-1_AbCdEf123.
    #[arg(long, env = "CORRAL_COGNITO_USER_POOL_ID", value_name = "ID")]
    pub cognito_user_pool_id: Option<String>,
    /// The pool's app client Corral signs users in with (USER_PASSWORD_AUTH enabled).
    #[arg(long, env = "CORRAL_COGNITO_CLIENT_ID", value_name = "ID")]
    pub cognito_client_id: Option<String>,
    /// The app client's secret, if it has one.
    #[arg(
        long,
        env = "CORRAL_COGNITO_CLIENT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub cognito_client_secret: Option<String>,
    /// Issuer (`iss`) of the pool's tokens. Default: https://cognito-idp.REGION.amazonaws.com/POOL.
    #[arg(long, env = "CORRAL_COGNITO_ISSUER", value_name = "URL")]
    pub cognito_issuer: Option<String>,
    /// Where the pool's signing keys are. Default: the pool's own JWKS URL.
    #[arg(long, env = "CORRAL_COGNITO_JWKS_URL", value_name = "URL")]
    pub cognito_jwks_url: Option<String>,
    /// Token claim listing the user's groups. Default: cognito:groups.
    #[arg(long, env = "CORRAL_COGNITO_GROUPS_CLAIM", value_name = "CLAIM")]
    pub cognito_groups_claim: Option<String>,
    /// Role of accounts in none of the admin/user/viewer groups: admin, user, viewer, or
    /// none to refuse them. Default: user.
    #[arg(long, env = "CORRAL_COGNITO_DEFAULT_ROLE", value_name = "ROLE")]
    pub cognito_default_role: Option<String>,
    /// Default quota: instances per user (0: none). Admins set per-user quotas.
    #[arg(long, env = "CORRAL_QUOTA_MAX_INSTANCES", value_name = "N")]
    pub quota_max_instances: Option<u32>,
    /// Default quota: replicas of running instances per user.
    #[arg(long, env = "CORRAL_QUOTA_MAX_REPLICAS", value_name = "N")]
    pub quota_max_replicas: Option<u32>,
    /// Default quota: vCPUs of those replicas per user (fractions allowed).
    #[arg(long, env = "CORRAL_QUOTA_MAX_VCPU", value_name = "VCPU")]
    pub quota_max_vcpu: Option<f64>,
    /// Default quota: memory (MiB) of those replicas per user.
    #[arg(long, env = "CORRAL_QUOTA_MAX_MEMORY_MIB", value_name = "MIB")]
    pub quota_max_memory_mib: Option<u32>,
    /// Default quota: GPUs of those replicas per user.
    #[arg(long, env = "CORRAL_QUOTA_MAX_GPUS", value_name = "N")]
    pub quota_max_gpus: Option<u32>,
    /// Default quota: gateway requests in flight per user.
    #[arg(long, env = "CORRAL_QUOTA_MAX_CONCURRENT_REQUESTS", value_name = "N")]
    pub quota_max_concurrent_requests: Option<u32>,
    /// Default monthly budget in USD per user (unset: none).
    #[arg(long, env = "CORRAL_QUOTA_MONTHLY_BUDGET_USD", value_name = "USD")]
    pub quota_monthly_budget_usd: Option<f64>,
    /// Default budget alert threshold in percent.
    #[arg(
        long,
        env = "CORRAL_QUOTA_BUDGET_ALERT_PERCENT",
        value_name = "PERCENT"
    )]
    pub quota_budget_alert_percent: Option<u32>,
    /// Memory (MiB) of this host kept for `corral serve` and the system: local replicas
    /// may commit the total memory less this.
    #[arg(long, env = "CORRAL_CAPACITY_RESERVE_MEMORY_MIB", value_name = "MIB")]
    pub capacity_reserve_memory_mib: Option<u32>,
    /// vCPUs local replicas may commit. Default: the host's cores.
    #[arg(long, env = "CORRAL_CAPACITY_VCPU", value_name = "VCPU")]
    pub capacity_vcpu: Option<f64>,
    /// Name the host's capacity counters are kept under in the store (servers on one
    /// host sharing a store use the same name). Default: local.
    #[arg(long, env = "CORRAL_CAPACITY_HOST_NAME", value_name = "NAME")]
    pub capacity_host_name: Option<String>,
}

/// The built-in default quota of every user, small because self sign-up is on by
/// default: a new account can run a few small models on the local host and no more
/// until an admin raises its quota.
pub fn builtin_quota() -> Quota {
    Quota {
        max_instances: Some(3),
        max_replicas: Some(4),
        max_vcpu: Some(8.0),
        max_memory_mib: Some(16_384),
        max_gpus: Some(1),
        max_concurrent_requests: Some(16),
        monthly_budget_usd: None,
        budget_alert_percent: Some(80),
    }
}

/// The default quota: flags beat `[quota]` of corral.toml beat `builtin_quota`.
pub fn quota_defaults(args: &ServeArgs, file: &FileConfig) -> Result<Quota, CliError> {
    let flags = Quota {
        max_instances: args.quota_max_instances,
        max_replicas: args.quota_max_replicas,
        max_vcpu: args.quota_max_vcpu,
        max_memory_mib: args.quota_max_memory_mib,
        max_gpus: args.quota_max_gpus,
        max_concurrent_requests: args.quota_max_concurrent_requests,
        monthly_budget_usd: args.quota_monthly_budget_usd,
        budget_alert_percent: args.quota_budget_alert_percent,
    };
    let quota = flags.or(&file.quota).or(&builtin_quota());
    quota
        .validate()
        .map_err(|m| CliError::Invalid(format!("quota: {m}")))?;
    Ok(quota)
}

/// `[capacity]`: what the local driver may commit on this host.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityFile {
    pub reserve_memory_mib: Option<u32>,
    pub vcpu: Option<f64>,
    pub host_name: Option<String>,
}

/// Memory kept for `corral serve` and the system when not configured.
pub const DEFAULT_RESERVE_MEMORY_MIB: u32 = 1024;

/// This host's capacity for local replicas: `total_memory_mib` less the reserve, and
/// the configured vCPUs or `cores`.
pub fn host_capacity(
    args: &ServeArgs,
    file: &FileConfig,
    total_memory_mib: u64,
    cores: usize,
) -> Result<HostCapacity, CliError> {
    let reserve = args
        .capacity_reserve_memory_mib
        .or(file.capacity.reserve_memory_mib)
        .unwrap_or(DEFAULT_RESERVE_MEMORY_MIB);
    let vcpu = args
        .capacity_vcpu
        .or(file.capacity.vcpu)
        .unwrap_or(cores as f64);
    if !(vcpu.is_finite() && vcpu > 0.0 && vcpu <= 100_000.0) {
        return Err(CliError::Invalid(format!(
            "capacity vcpu {vcpu} must be above 0 and at most 100000"
        )));
    }
    let name = args
        .capacity_host_name
        .clone()
        .or_else(|| file.capacity.host_name.clone())
        .unwrap_or_else(|| "local".into());
    Ok(HostCapacity {
        name,
        milli_vcpu: corral_core::quota::milli_vcpu(vcpu),
        memory_mib: i64::try_from(total_memory_mib.saturating_sub(u64::from(reserve)))
            .unwrap_or(i64::MAX),
    })
}

/// `api_key_expiry`: `never` (None), or a duration of whole days from 1 to 3650, as the
/// API accepts for one key (e.g. `90d`, `52w`).
pub fn parse_key_expiry(s: &str) -> Result<Option<u32>, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let explain =
        || format!("api_key_expiry {s:?}: expected whole days from 1d to 3650d, or never");
    let duration = humantime::parse_duration(s.trim()).map_err(|_| explain())?;
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 || secs % 86_400 != 0 {
        return Err(explain());
    }
    match u32::try_from(secs / 86_400) {
        Ok(days @ 1..=3650) => Ok(Some(days)),
        _ => Err(explain()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 15m, 12h, 30d)"))
}

/// `corral.toml`: the same settings as the flags, with snake_case names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub public_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub access_token_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub refresh_token_ttl: Option<Duration>,
    pub lockout_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    pub lockout_duration: Option<Duration>,
    pub auth_rate_per_ip: Option<u32>,
    pub auth_rate_per_account: Option<u32>,
    pub api_key_expiry: Option<String>,
    pub signup_enabled: Option<bool>,
    pub signup_default_role: Option<String>,
    pub deploy_rate_per_user: Option<u32>,
    pub require_verified_email: Option<bool>,
    pub trust_forwarded_for: Option<bool>,
    pub trusted_proxy_hops: Option<u32>,
    pub jwt_secret: Option<String>,
    pub metrics_token: Option<String>,
    pub gateway_requests_per_minute: Option<u32>,
    pub gateway_tokens_per_minute: Option<u32>,
    pub allow_private_model_sources: Option<bool>,
    pub gateway_max_concurrent_requests: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    pub gateway_body_timeout: Option<Duration>,
    pub weights_gc_min_free_mib: Option<u64>,
    pub log: Option<String>,
    #[serde(default)]
    pub smtp: SmtpFile,
    #[serde(default)]
    pub argon2: Argon2File,
    /// Hourly prices behind the cost figures (defaults: AWS us-east-1 list prices, local
    /// compute free); any field left out keeps its default.
    #[serde(default)]
    pub prices: corral_core::PriceTable,
    /// The `ecs` compute driver; absent: only the local driver.
    pub ecs: Option<EcsFile>,
    #[serde(default)]
    pub auth: AuthFile,
    /// `[quota]`: the default quota of every user (see `builtin_quota`).
    #[serde(default)]
    pub quota: Quota,
    #[serde(default)]
    pub capacity: CapacityFile,
}

/// `[auth]`: `mode = "builtin" | "cognito"`, and `[auth.cognito]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub mode: Option<String>,
    #[serde(default)]
    pub cognito: CognitoFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CognitoFile {
    /// Default: AWS_REGION, then AWS_DEFAULT_REGION.
    pub region: Option<String>,
    pub user_pool_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub issuer: Option<String>,
    pub jwks_url: Option<String>,
    /// Default: AWS_ENDPOINT_URL, else AWS's own.
    pub endpoint_url: Option<String>,
    pub groups_claim: Option<String>,
    pub admin_group: Option<String>,
    pub user_group: Option<String>,
    pub viewer_group: Option<String>,
    pub default_role: Option<String>,
}

/// The auth mode after precedence (flags and CORRAL_* over `[auth]`). Empty values count
/// as unset, as deployment templates pass every variable, set or not.
pub fn auth_mode(args: &ServeArgs, file: &FileConfig) -> Result<AuthMode, CliError> {
    let set = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let pick =
        |flag: &Option<String>, from_file: &Option<String>| set(flag).or_else(|| set(from_file));
    let mode = pick(&args.auth_mode, &file.auth.mode).unwrap_or_else(|| "builtin".into());
    let c = &file.auth.cognito;
    match mode.as_str() {
        "builtin" => Ok(AuthMode::Builtin),
        "cognito" => {
            let defaults = RoleMapping::default();
            let default_role = match pick(&args.cognito_default_role, &c.default_role).as_deref() {
                None => defaults.default_role,
                Some("none") => None,
                Some(role) => Some(role.parse().map_err(|e| {
                    CliError::Invalid(format!("[auth.cognito] default_role: {e}, or none"))
                })?),
            };
            let settings = CognitoSettings {
                region: pick(&args.cognito_region, &c.region)
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .unwrap_or_default(),
                user_pool_id: pick(&args.cognito_user_pool_id, &c.user_pool_id).unwrap_or_default(),
                client_id: pick(&args.cognito_client_id, &c.client_id).unwrap_or_default(),
                client_secret: pick(&args.cognito_client_secret, &c.client_secret),
                issuer: pick(&args.cognito_issuer, &c.issuer),
                jwks_url: pick(&args.cognito_jwks_url, &c.jwks_url),
                endpoint_url: set(&c.endpoint_url),
                roles: RoleMapping {
                    groups_claim: pick(&args.cognito_groups_claim, &c.groups_claim)
                        .unwrap_or(defaults.groups_claim),
                    admin_group: set(&c.admin_group).unwrap_or(defaults.admin_group),
                    user_group: set(&c.user_group).unwrap_or(defaults.user_group),
                    viewer_group: set(&c.viewer_group).unwrap_or(defaults.viewer_group),
                    default_role,
                },
                jwks_refetch_interval: CognitoSettings::DEFAULT_JWKS_REFETCH_INTERVAL,
            };
            let problems = settings.problems();
            if !problems.is_empty() {
                return Err(CliError::Invalid(format!(
                    "auth mode cognito: {}",
                    problems.join("; ")
                )));
            }
            Ok(AuthMode::Cognito(Box::new(settings)))
        }
        other => Err(CliError::Invalid(format!(
            "unknown auth mode {other:?}: expected builtin or cognito"
        ))),
    }
}

/// `[ecs]`: where and how the ECS driver runs replicas.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcsFile {
    pub cluster: Option<String>,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub assign_public_ip: bool,
    pub runtime_image: Option<String>,
    pub runner_image: Option<String>,
    pub execution_role_arn: Option<String>,
    pub task_role_arn: Option<String>,
    pub log_group: Option<String>,
    /// Default: AWS_REGION, then AWS_DEFAULT_REGION.
    pub region: Option<String>,
    pub gpu_capacity_provider: Option<String>,
    #[serde(default)]
    pub gpu_instance_types: Vec<String>,
    /// A capacity provider per GPU instance type, e.g. `{ "g5.xlarge" = "cp-g5" }`.
    #[serde(default)]
    pub gpu_capacity_providers: BTreeMap<String, String>,
    /// Default: AWS_ENDPOINT_URL, else AWS's own endpoints.
    pub endpoint_url: Option<String>,
    /// `task` (default) or `service`.
    pub launch: Option<String>,
    /// Seconds after its launch that a task ECS does not list yet counts as starting
    /// (ECS is eventually consistent); default 60.
    pub missing_grace_secs: Option<u64>,
}

/// The ECS driver's settings after precedence (flags and CORRAL_ECS_* over `[ecs]`), or
/// None when no cluster is configured. What is still missing is reported by the driver.
/// Empty values count as unset, as deployment templates pass every variable, set or not.
pub fn ecs_config(args: &ServeArgs, file: &FileConfig) -> Result<Option<EcsConfig>, CliError> {
    let ecs = file.ecs.as_ref();
    let from_file = |f: fn(&EcsFile) -> Option<String>| ecs.and_then(f);
    let flag = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    let Some(cluster) = flag(&args.ecs_cluster).or_else(|| from_file(|e| e.cluster.clone())) else {
        return Ok(None);
    };
    let list = |flag: &Option<Vec<String>>, f: fn(&EcsFile) -> Vec<String>| {
        flag.clone()
            .map(|v| v.into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>())
            .filter(|v| !v.is_empty())
            .or_else(|| ecs.map(f))
            .unwrap_or_default()
    };
    let gpu_capacity_providers = match &args.ecs_gpu_capacity_providers {
        Some(pairs) if pairs.iter().any(|p| !p.is_empty()) => pairs
            .iter()
            .filter(|p| !p.is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .map(|(t, p)| (t.trim().to_string(), p.trim().to_string()))
                    .filter(|(t, p)| !t.is_empty() && !p.is_empty())
                    .ok_or_else(|| {
                        CliError::Invalid(format!(
                            "CORRAL_ECS_GPU_CAPACITY_PROVIDERS: {pair:?} is not TYPE=PROVIDER"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => ecs
            .map(|e| e.gpu_capacity_providers.clone())
            .unwrap_or_default(),
    };
    Ok(Some(EcsConfig {
        cluster,
        subnets: list(&args.ecs_subnets, |e| e.subnets.clone()),
        security_groups: list(&args.ecs_security_groups, |e| e.security_groups.clone()),
        assign_public_ip: ecs.is_some_and(|e| e.assign_public_ip),
        runtime_image: flag(&args.ecs_runtime_image)
            .or_else(|| from_file(|e| e.runtime_image.clone()))
            .unwrap_or_else(|| EcsConfig::DEFAULT_RUNTIME_IMAGE.into()),
        runner_image: flag(&args.ecs_runner_image)
            .or_else(|| from_file(|e| e.runner_image.clone())),
        execution_role_arn: flag(&args.ecs_execution_role_arn)
            .or_else(|| from_file(|e| e.execution_role_arn.clone()))
            .unwrap_or_default(),
        task_role_arn: flag(&args.ecs_task_role_arn)
            .or_else(|| from_file(|e| e.task_role_arn.clone())),
        log_group: flag(&args.ecs_log_group)
            .or_else(|| from_file(|e| e.log_group.clone()))
            .unwrap_or_default(),
        region: from_file(|e| e.region.clone())
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_default(),
        gpu_capacity_provider: from_file(|e| e.gpu_capacity_provider.clone()),
        gpu_instance_types: list(&args.ecs_gpu_instance_types, |e| {
            e.gpu_instance_types.clone()
        }),
        gpu_capacity_providers,
        endpoint_url: from_file(|e| e.endpoint_url.clone()),
        launch: match flag(&args.ecs_launch).or_else(|| from_file(|e| e.launch.clone())) {
            Some(mode) => mode
                .parse()
                .map_err(|e: corral_drivers::Error| CliError::Invalid(e.to_string()))?,
            None => LaunchMode::default(),
        },
        service_start_timeout: EcsConfig::DEFAULT_SERVICE_START_TIMEOUT,
        missing_grace: ecs
            .and_then(|e| e.missing_grace_secs)
            .map_or(EcsConfig::DEFAULT_MISSING_GRACE, Duration::from_secs),
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: Option<String>,
    pub security: Option<String>,
}

/// Argon2id cost; only in the file, since it is rarely changed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Argon2File {
    pub memory_kib: Option<u32>,
    pub iterations: Option<u32>,
    pub parallelism: Option<u32>,
    /// Argon2 calls at once (default: the number of cores).
    pub max_in_flight: Option<usize>,
    /// Calls waiting for a turn beyond those; more are refused with 503 (default: 32 per
    /// `max_in_flight`).
    pub max_queued: Option<usize>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl FileConfig {
    /// Reads the file named by `--config`, or `./corral.toml` if present, or nothing.
    pub fn load(explicit: Option<&Path>) -> Result<Self, CliError> {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => PathBuf::from(DEFAULT_CONFIG_FILE),
            None => return Ok(FileConfig::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| CliError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| CliError::Config {
            path,
            message: e.to_string(),
        })
    }
}

/// The data directory and database URL after precedence is applied.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub database_url: String,
}

impl StoreConfig {
    pub fn resolve(args: &StoreArgs, file: &FileConfig) -> Self {
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = args
            .database_url
            .clone()
            .or_else(|| file.database_url.clone())
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("corral.db").display()));
        StoreConfig {
            data_dir,
            database_url,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_expiry_is_days_or_never() {
        use super::parse_key_expiry as p;
        assert_eq!(p("90d"), Ok(Some(90)));
        assert_eq!(p("1w"), Ok(Some(7)));
        assert_eq!(p("never"), Ok(None));
        assert_eq!(p("Never"), Ok(None));
        for bad in ["", "0d", "36h", "3651d", "soon", "-1d"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn file_config_parses_durations_and_rejects_unknown_keys() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\naccess_token_ttl = \"5m\"\n[smtp]\nhost = \"mail\"\n",
        )
        .unwrap();
        assert_eq!(file.access_token_ttl, Some(Duration::from_secs(300)));
        assert_eq!(file.smtp.host.as_deref(), Some("mail"));
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
    }

    #[test]
    fn prices_override_only_what_they_name() {
        let file: FileConfig = toml::from_str(
            "[prices]\nlocal_hour = 0.05\n[prices.gpu_instance_hour]\n\"g5.xlarge\" = 0.8\n",
        )
        .unwrap();
        let defaults = corral_core::PriceTable::default();
        assert_eq!(file.prices.local_hour, 0.05);
        assert_eq!(file.prices.gpu_instance_hour["g5.xlarge"], 0.8);
        assert_eq!(file.prices.fargate_vcpu_hour, defaults.fargate_vcpu_hour);
        assert_eq!(FileConfig::default().prices, defaults);
    }

    #[test]
    fn ecs_from_file_and_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let file: FileConfig = toml::from_str(
            "[ecs]\ncluster = \"corral\"\nsubnets = [\"subnet-a\"]\nsecurity_groups = [\"sg-a\"]\n\
             execution_role_arn = \"arn:role\"\nlog_group = \"/corral\"\nregion = \"eu-west-1\"\n\
             gpu_capacity_provider = \"gpu\"\ngpu_instance_types = [\"g5.xlarge\"]\n",
        )
        .unwrap();
        let none = Cli::parse_from(["corral"]).serve;
        assert!(ecs_config(&none, &FileConfig::default()).unwrap().is_none());
        let cfg = ecs_config(&none, &file).unwrap().unwrap();
        assert_eq!(cfg.cluster, "corral");
        assert_eq!(cfg.subnets, ["subnet-a"]);
        assert_eq!(cfg.runtime_image, "ollama/ollama:latest");
        assert_eq!(cfg.region, "eu-west-1");
        assert_eq!(cfg.gpu_instance_types, ["g5.xlarge"]);
        assert_eq!(cfg.launch, LaunchMode::Task, "the default");
        let service: FileConfig =
            toml::from_str("[ecs]\ncluster = \"c\"\nlaunch = \"service\"\n").unwrap();
        let cfg = ecs_config(&none, &service).unwrap().unwrap();
        assert_eq!(cfg.launch, LaunchMode::Service);
        let as_task = Cli::parse_from(["corral", "--ecs-launch", "task"]).serve;
        let cfg = ecs_config(&as_task, &service).unwrap().unwrap();
        assert_eq!(cfg.launch, LaunchMode::Task, "the flag wins");
        let wrong = Cli::parse_from(["corral", "--ecs-launch", "services"]).serve;
        let err = ecs_config(&wrong, &service).unwrap_err().to_string();
        assert!(err.contains("\"services\""), "{err}");
        let flags = Cli::parse_from([
            "corral",
            "--ecs-cluster",
            "other",
            "--ecs-subnets",
            "subnet-b,subnet-c",
            "--ecs-log-group",
            "/other",
            "--ecs-runner-image",
            "",
            "--ecs-gpu-capacity-providers",
            "g5.xlarge=cp-g5,g4dn.xlarge=cp-g4dn",
        ])
        .serve;
        let cfg = ecs_config(&flags, &file).unwrap().unwrap();
        assert_eq!(cfg.runner_image, None, "empty is unset");
        assert_eq!(cfg.gpu_capacity_providers["g4dn.xlarge"], "cp-g4dn");
        assert_eq!(cfg.cluster, "other");
        assert_eq!(cfg.subnets, ["subnet-b", "subnet-c"]);
        assert_eq!(cfg.security_groups, ["sg-a"], "from the file");
        assert_eq!(cfg.log_group, "/other");
        assert!(toml::from_str::<FileConfig>("[ecs]\nclustr = \"x\"").is_err());
        let bad = Cli::parse_from([
            "corral",
            "--ecs-cluster",
            "c",
            "--ecs-gpu-capacity-providers",
            "g5.xlarge",
        ])
        .serve;
        assert!(ecs_config(&bad, &file).is_err());
    }

    #[test]
    fn auth_mode_from_file_and_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let none = Cli::parse_from(["corral"]).serve;
        assert!(matches!(
            auth_mode(&none, &FileConfig::default()).unwrap(),
            AuthMode::Builtin
        ));
        let file: FileConfig = toml::from_str(
            "[auth]\nmode = \"cognito\"\n[auth.cognito]\nregion = \"eu-west-1\"\n\
             user_pool_id = \"eu-west-1_Pool1\"\nclient_id = \"client1\"\n\
             admin_group = \"corral-admins\"\ndefault_role = \"none\"\n",
        )
        .unwrap();
        let AuthMode::Cognito(cfg) = auth_mode(&none, &file).unwrap() else {
            panic!("cognito mode expected");
        };
        assert_eq!(cfg.user_pool_id, "eu-west-1_Pool1");
        assert_eq!(cfg.roles.admin_group, "corral-admins");
        assert_eq!(cfg.roles.user_group, "user");
        assert_eq!(cfg.roles.groups_claim, "cognito:groups");
        assert_eq!(cfg.roles.default_role, None);
        let flags = Cli::parse_from([
            "corral",
            "--cognito-client-id",
            "client2",
            "--cognito-default-role",
            "viewer",
            "--cognito-client-secret",
            "",
        ])
        .serve;
        let AuthMode::Cognito(cfg) = auth_mode(&flags, &file).unwrap() else {
            panic!("cognito mode expected");
        };
        assert_eq!(cfg.client_id, "client2");
        assert_eq!(cfg.client_secret, None, "empty is unset");
        assert_eq!(cfg.roles.default_role, Some(corral_core::Role::Viewer));
        let builtin = Cli::parse_from(["corral", "--auth-mode", "builtin"]).serve;
        assert!(matches!(
            auth_mode(&builtin, &file).unwrap(),
            AuthMode::Builtin
        ));
        let typo = Cli::parse_from(["corral", "--auth-mode", "cognitoo"]).serve;
        assert!(auth_mode(&typo, &file).is_err());
        let bad_role = Cli::parse_from(["corral", "--cognito-default-role", "root"]).serve;
        assert!(auth_mode(&bad_role, &file).is_err());
        let incomplete: FileConfig =
            toml::from_str("[auth]\nmode = \"cognito\"\n[auth.cognito]\nregion = \"eu-west-1\"\n")
                .unwrap();
        assert!(auth_mode(&none, &incomplete).is_err());
        assert!(toml::from_str::<FileConfig>("[auth.cognito]\npool = \"x\"").is_err());
    }

    #[test]
    fn flags_beat_file_beats_default() {
        let file: FileConfig = toml::from_str("data_dir = \"/srv/corral\"").unwrap();
        let none = StoreArgs {
            config: None,
            data_dir: None,
            database_url: None,
        };
        let resolved = StoreConfig::resolve(&none, &file);
        assert_eq!(resolved.database_url, "sqlite:///srv/corral/corral.db");
        let flag = StoreArgs {
            data_dir: Some("/tmp/x".into()),
            ..none
        };
        assert_eq!(
            StoreConfig::resolve(&flag, &file).data_dir,
            PathBuf::from("/tmp/x")
        );
    }
}
