//! HTTP: the Ollama API, the OpenAI API, health and metrics.

mod answer;
mod health;
mod ollama;
mod openai;
mod stream;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::embed::Embedder;
use crate::engine::{Engine, Event, GenerationRequest};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::ServedModel;
use crate::prompt;
use crate::sampling::GenerationSettings;

pub struct AppState {
    pub model: ServedModel,
    pub engine: Engine,
    pub embedder: Embedder,
    pub metrics: Arc<Metrics>,
}

pub type SharedState = Arc<AppState>;

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/", get(ollama::root))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*model}", get(openai::model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

impl AppState {
    /// 404 unless the request names the served model.
    fn check_model(&self, requested: &str) -> Result<(), ApiError> {
        if requested.is_empty() {
            return Err(ApiError::invalid("model is required"));
        }
        if self.model.answers_to(requested) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound(requested.to_owned()))
        }
    }

    /// Validates and queues a generation.
    fn generate(
        &self,
        prompt: Vec<llama_cpp_2::token::LlamaToken>,
        settings: GenerationSettings,
        stream: bool,
        special: bool,
    ) -> Result<UnboundedReceiver<Event>, ApiError> {
        prompt::check_fits(prompt.len(), settings.num_ctx)?;
        let sampler = settings
            .sampling
            .build(&self.model.llama, settings.num_ctx)?;
        self.engine.submit(GenerationRequest {
            prompt,
            sampler,
            max_tokens: settings.max_tokens,
            stop: settings.stop,
            num_ctx: settings.num_ctx,
            whole: !stream,
            special,
        })
    }
}

/// Nanoseconds, the unit of Ollama's duration fields.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An id for OpenAI objects (`chatcmpl-…`): unique enough without a UUID dependency.
fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Relaxed);
    format!("{prefix}-{:016x}", RandomState::new().hash_one(n))
}
