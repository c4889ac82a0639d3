//! `corral serve`: resolves the configuration, opens the store and runs the API.

use corral_api::mail::{Mailer, SmtpSettings};
use corral_api::settings::{Argon2Params, HashLimits};
use corral_api::{AppState, Settings};
use corral_control::{Control, ControlSettings, Leadership, LeaseSettings};
use corral_core::secret;
use corral_driver_ecs::EcsDriver;
use corral_drivers::ComputeDriver;
use corral_drivers::local::{LocalConfig, LocalDriver};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

use crate::config::{DEFAULT_LISTEN, FileConfig, ServeArgs, StoreArgs, StoreConfig};
use crate::error::CliError;

pub async fn run(store_args: &StoreArgs, args: ServeArgs) -> Result<(), CliError> {
    let file = FileConfig::load(store_args.config.as_deref())?;
    init_logging(args.log.as_deref().or(file.log.as_deref()));
    let cfg = StoreConfig::resolve(store_args, &file);
    crate::private::prepare_data_dir(&cfg.data_dir, &cfg.database_url)?;

    // Before the port: a second server on one SQLite file must hear why it cannot run.
    let _serve_lock = crate::single::lock_store(&cfg.database_url)?;

    let listen: SocketAddr = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address"));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(CliError::io(format!(
            "binding {listen} (is another server using it? choose one with --listen)"
        )))?;
    let bound = listener
        .local_addr()
        .map_err(CliError::io("reading the bound address"))?;
    let public_url = args
        .public_url
        .clone()
        .or(file.public_url.clone())
        .unwrap_or_else(|| format!("http://{bound}"))
        .trim_end_matches('/')
        .to_string();

    let jwt_secret = match args.jwt_secret.clone().or(file.jwt_secret.clone()) {
        Some(s) if s.len() >= 32 => s.into_bytes(),
        Some(_) => {
            return Err(CliError::Invalid(
                "the JWT secret must be at least 32 bytes".into(),
            ));
        }
        None => persistent_secret(&cfg.data_dir.join("jwt-secret"))?,
    };

    let mut settings = Settings::new(public_url.clone(), jwt_secret);
    if let Some(v) = args.access_token_ttl.or(file.access_token_ttl) {
        settings.access_ttl = v;
    }
    if let Some(v) = args.refresh_token_ttl.or(file.refresh_token_ttl) {
        settings.refresh_ttl = v;
    }
    if let Some(v) = args.lockout_threshold.or(file.lockout_threshold) {
        settings.lockout_threshold = v.max(1);
    }
    if let Some(v) = args.lockout_duration.or(file.lockout_duration) {
        settings.lockout_duration = v;
    }
    if let Some(v) = args.auth_rate_per_ip.or(file.auth_rate_per_ip) {
        settings.auth_rate_per_ip = v;
    }
    if let Some(v) = args.auth_rate_per_account.or(file.auth_rate_per_account) {
        settings.auth_rate_per_account = v;
    }
    if let Some(v) = args
        .api_key_expiry
        .as_ref()
        .or(file.api_key_expiry.as_ref())
    {
        settings.api_key_default_expiry_days =
            crate::config::parse_key_expiry(v).map_err(CliError::Invalid)?;
    }
    if let Some(v) = args.signup_enabled.or(file.signup_enabled) {
        settings.signup_enabled = v;
    }
    if let Some(v) = args
        .signup_default_role
        .as_deref()
        .or(file.signup_default_role.as_deref())
    {
        settings.signup_default_role =
            corral_api::settings::signup_role(v).map_err(CliError::Invalid)?;
    }
    if let Some(v) = args.deploy_rate_per_user.or(file.deploy_rate_per_user) {
        settings.deploy_rate_per_user = v;
    }
    if let Some(v) = args.require_verified_email.or(file.require_verified_email) {
        settings.require_verified_email = v;
    }
    let trust_forwarded_for = args.trust_forwarded_for.or(file.trust_forwarded_for);
    settings.trusted_proxy_hops = args
        .trusted_proxy_hops
        .or(file.trusted_proxy_hops)
        .unwrap_or(u32::from(trust_forwarded_for == Some(true)));
    settings.metrics_token = args.metrics_token.clone().or(file.metrics_token.clone());
    if let Some(v) = args
        .gateway_requests_per_minute
        .or(file.gateway_requests_per_minute)
    {
        settings.gateway_requests_per_minute = v;
    }
    if let Some(v) = args
        .gateway_tokens_per_minute
        .or(file.gateway_tokens_per_minute)
    {
        settings.gateway_tokens_per_minute = v;
    }
    settings.allow_private_model_sources = args
        .allow_private_model_sources
        .or(file.allow_private_model_sources)
        .unwrap_or(false);
    if let Some(v) = args
        .gateway_max_concurrent_requests
        .or(file.gateway_max_concurrent_requests)
    {
        settings.gateway_max_concurrent_requests = v;
    }
    if let Some(v) = args.gateway_body_timeout.or(file.gateway_body_timeout) {
        settings.gateway_body_timeout = v;
    }
    settings.argon2 = argon2_params(&file);
    settings.password_hashing = hash_limits(&file);
    settings.auth = crate::config::auth_mode(&args, &file)?;

    let mailer = match args.smtp_host.clone().or(file.smtp.host.clone()) {
        Some(host) => Mailer::smtp(&SmtpSettings {
            port: args.smtp_port.or(file.smtp.port).unwrap_or(587),
            username: args.smtp_username.clone().or(file.smtp.username.clone()),
            password: args.smtp_password.clone().or(file.smtp.password.clone()),
            from: args
                .smtp_from
                .clone()
                .or(file.smtp.from.clone())
                .unwrap_or_else(|| format!("Corral <corral@{host}>")),
            security: args
                .smtp_security
                .clone()
                .or(file.smtp.security.clone())
                .unwrap_or_else(|| "starttls".into()),
            host,
        })
        .map_err(CliError::Invalid)?,
        None => Mailer::Outbox,
    };

    let store = crate::store::open(&cfg.database_url).await?;
    // The built-in catalog (the brief's table and the demo model), current at every start.
    for model in corral_core::catalog::builtin_models() {
        store.upsert_model(&model).await?;
    }
    settings.prices = file.prices.clone();
    // With Cognito, administrators are the pool's admin group: no setup token.
    let builtin = matches!(settings.auth, corral_api::auth::cognito::AuthMode::Builtin);
    if builtin && store.count_users().await? == 0 {
        let token = secret::random_token();
        settings.setup_token = Some(token.clone());
        print_setup_hint(&public_url, &token);
    }

    tracing::info!(
        store = store.backend(),
        mail = mailer.describe(),
        data_dir = %cfg.data_dir.display(),
        "starting"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let host = match corral_drivers::local::host_memory_mib() {
        Some(memory) => Some(crate::config::host_capacity(&args, &file, memory, cores)?),
        None => {
            tracing::warn!(
                "total memory unknown: local replicas are not committed against the host"
            );
            None
        }
    };
    let control_settings = ControlSettings {
        data_dir: cfg.data_dir.clone(),
        quota_defaults: crate::config::quota_defaults(&args, &file)?,
        host,
        ..ControlSettings::default()
    };
    // One weights manager for the reconciler (deploys) and the API (presence, pulls), so
    // they share the per-model download lock and its progress.
    let mut weights = corral_models::Weights::new(&cfg.data_dir)
        .allow_private_sources(settings.allow_private_model_sources);
    let gc_min_free_mib = args
        .weights_gc_min_free_mib
        .or(file.weights_gc_min_free_mib)
        .unwrap_or(DEFAULT_WEIGHTS_GC_MIN_FREE_MIB);
    if gc_min_free_mib > 0 {
        let needs = Arc::new(crate::store::StoreNeeds(store.clone()));
        weights = weights.with_gc_threshold(gc_min_free_mib << 20, needs);
    }
    let weights = Arc::new(weights);
    // Without corral-runner (or ollama) this host cannot run models itself; accounts,
    // the catalog and any cloud driver still work, so warn instead of refusing to start.
    let mut drivers: Vec<Arc<dyn ComputeDriver>> = Vec::new();
    match LocalDriver::new(LocalConfig::new(&cfg.data_dir)) {
        Ok(local) => drivers.push(Arc::new(local)),
        Err(e) => {
            tracing::warn!("local compute driver disabled: {e}");
            eprintln!("warning: local compute is disabled: {e}");
        }
    }
    if let Some(ecs) = crate::config::ecs_config(&args, &file)? {
        let ecs = EcsDriver::new(ecs)
            .await
            .map_err(|e| CliError::Invalid(format!("ecs compute driver: {e}")))?;
        drivers.push(Arc::new(ecs));
    }
    let store_backend = store.backend();
    let lease_store = store.clone();
    let control = Control::new(store.clone(), drivers, weights.clone(), control_settings);
    let state = AppState::new(store, settings, mailer, control.clone(), weights);

    // One signal stops both: the server drains its requests while the reconciler finishes
    // the steps it is in. Replicas keep running; the next start adopts them.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = on_signal.send(true);
    });
    // SQLite has one process (the lock above), which leads; on the other stores the
    // processes elect the one that reconciles through a lease in the store.
    let leadership = if store_backend == "sqlite" {
        Leadership::sole()
    } else {
        Leadership::elected(lease_store, LeaseSettings::default())
    };
    let (lease_stop_tx, lease_stop_rx) = watch::channel(false);
    let lease = tokio::spawn(leadership.clone().run(stopped(lease_stop_rx)));
    let reconciler = tokio::spawn(control.run_elected(leadership, stopped(stop_rx.clone())));
    println!(
        "Corral {} listening on {public_url}",
        env!("CARGO_PKG_VERSION")
    );
    let _ = std::io::stdout().flush();
    let served = corral_api::serve(listener, state, stopped(stop_rx)).await;
    // The server may also end on an error: the reconciler must stop with it.
    let _ = stop_tx.send(true);
    // Bounded: the reconciler abandons what is still busy after the replicas' stop grace.
    if let Err(e) = reconciler.await {
        tracing::error!(error = %e, "the reconciler ended abnormally");
    }
    // Only now that no step of ours is in flight: release the lease, so another
    // process takes over at once instead of after it expires.
    let _ = lease_stop_tx.send(true);
    if let Err(e) = lease.await {
        tracing::error!(error = %e, "the leader lease task ended abnormally");
    }
    served.map_err(CliError::io("serving HTTP"))?;
    tracing::info!("stopped");
    Ok(())
}

/// Free disk below which a download first collects unneeded weights: about one 7B
/// model's GGUF.
const DEFAULT_WEIGHTS_GC_MIN_FREE_MIB: u64 = 4096;

/// Resolves once `stop` says true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

pub fn argon2_params(file: &FileConfig) -> Argon2Params {
    let d = Argon2Params::default();
    Argon2Params {
        memory_kib: file.argon2.memory_kib.unwrap_or(d.memory_kib),
        iterations: file.argon2.iterations.unwrap_or(d.iterations),
        parallelism: file.argon2.parallelism.unwrap_or(d.parallelism),
    }
}

pub fn hash_limits(file: &FileConfig) -> HashLimits {
    HashLimits::configured(file.argon2.max_in_flight, file.argon2.max_queued)
}

fn print_setup_hint(public_url: &str, token: &str) {
    println!(
        "No users yet. Create the first admin in the browser (one-time link, valid until restart):\n\
         \n  {public_url}/setup?token={token}\n\
         \nor with curl:\n\
         \n  curl -X POST {public_url}/api/auth/setup -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"setup_token\":\"{token}\",\"email\":\"you@example.com\",\"password\":\"...\",\"confirmPassword\":\"...\"}}'\n\
         \nor run: corral admin create-user --email you@example.com --role admin --password-stdin\n"
    );
}

/// Reads the signing key from `path`, creating it (mode 0600) on first start so that
/// tokens survive restarts without anyone having to configure a secret.
fn persistent_secret(path: &Path) -> Result<Vec<u8>, CliError> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim();
        if existing.len() >= 32 {
            return Ok(existing.as_bytes().to_vec());
        }
    }
    let fresh = secret::random_token();
    corral_guard::files::write_private(path, fresh.as_bytes())
        .map_err(CliError::io(format!("writing {}", path.display())))?;
    Ok(fresh.into_bytes())
}

fn init_logging(filter: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter.unwrap_or("info,tower_http=warn"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
