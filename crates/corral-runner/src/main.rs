//! corral-runner: serves one GGUF model over Ollama's and OpenAI's HTTP APIs.

mod api;
mod chat_template;
mod cli;
mod embed;
mod engine;
mod error;
mod metrics;
mod model;
mod options;
mod prompt;
mod reasoning;
mod sampling;
mod text;
mod tools;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use axum::serve::ListenerExt;
use clap::Parser;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use tracing_subscriber::EnvFilter;

use crate::api::AppState;
use crate::cli::Args;
use crate::embed::Embedder;
use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;
use crate::model::ServedModel;

/// Longest embedding input in tokens. A whole input goes through one llama.cpp
/// micro-batch, whose buffers grow with this number.
const MAX_EMBED_TOKENS: u32 = 2048;

#[derive(Debug, thiserror::Error)]
enum StartupError {
    #[error("model file {0} not found")]
    ModelMissing(String),
    #[error("llama.cpp: {0}")]
    Llama(String),
    #[error("cannot read chat template {0}: {1}")]
    Template(String, std::io::Error),
    #[error("cannot read model file: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,llama_cpp_2=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("corral-runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral-runner: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), StartupError> {
    if !args.model.is_file() {
        return Err(StartupError::ModelMissing(args.model.display().to_string()));
    }
    llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
    let backend = Arc::new(LlamaBackend::init().map_err(|e| StartupError::Llama(e.to_string()))?);

    let started = Instant::now();
    let llama = LlamaModel::load_from_file(&backend, &args.model, &LlamaModelParams::default())
        .map_err(|e| StartupError::Llama(format!("cannot load {}: {e}", args.model.display())))?;
    let llama = Arc::new(llama);
    let slot_ctx = args.ctx.get();
    if slot_ctx > llama.n_ctx_train() {
        tracing::warn!(
            "--ctx {slot_ctx} is beyond the {} tokens the model was trained on; answers may degrade",
            llama.n_ctx_train()
        );
    }

    let metrics = Arc::new(Metrics::new(args.parallel.get() as usize));
    let threads = args.threads();
    let engine = Engine::start(
        backend.clone(),
        llama.clone(),
        EngineConfig {
            slots: args.parallel.get(),
            slot_ctx,
            threads,
            queue: args.queue,
            cache_prompt: !args.no_cache_prompt,
        },
        metrics.clone(),
    )
    .map_err(StartupError::Llama)?;
    let embedder = Embedder::start(
        backend.clone(),
        llama.clone(),
        slot_ctx.min(MAX_EMBED_TOKENS),
        threads,
        args.queue,
        metrics.clone(),
    )
    .map_err(StartupError::Llama)?;
    let template = match &args.chat_template {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| StartupError::Template(path.display().to_string(), e))?,
        ),
        None => None,
    };
    let model = ServedModel::new(llama, args.model_name(), &args.model, slot_ctx, template)?;
    tracing::info!(
        "loaded {} as {} in {:.2?} ({} slots x {slot_ctx} tokens, {threads} threads)",
        args.model.display(),
        model.name,
        started.elapsed(),
        args.parallel,
    );

    let state = Arc::new(AppState {
        model,
        engine,
        embedder,
        metrics,
    });
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError::Bind(addr, e))?;
    let bound = listener.local_addr()?;
    // The one line on stdout: the parent process reads the port from it.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{bound}")?;
    stdout.flush()?;
    drop(stdout);

    // Tokens stream as many small writes: with Nagle's algorithm each would wait for the
    // previous one's acknowledgement (up to 40 ms with delayed ACKs).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
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
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
