//! Continuous batching on llama.cpp.
//!
//! One dedicated thread owns the llama.cpp context (a context must not be used from two
//! threads at once). Requests reach it through a bounded queue; each brings its own channel
//! for the answer. Between two decode steps the thread takes new requests into free slots,
//! so the tokens of every busy slot go through the model together in one batch, and a
//! request that finishes or whose client went away frees its slot for the next step.
//! HTTP handlers never wait on a lock: they only send on and receive from channels.

mod cache;
mod slot;
mod worker;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::Duration;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::sampling::TokenSampler;

/// Prompt tokens evaluated per step, all slots together. Matches llama.cpp's default
/// micro-batch: larger chunks are no faster on CPU, and smaller ones keep the other
/// streams moving while a long prompt is read.
const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub slots: u32,
    pub slot_ctx: u32,
    pub threads: u32,
    pub queue: usize,
    /// Keep each slot's KV cache after a request for the next one to reuse.
    pub cache_prompt: bool,
}

/// A validated generation request.
pub struct GenerationRequest {
    pub prompt: Vec<LlamaToken>,
    pub sampler: TokenSampler,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// Context length for this request; `prompt.len() < num_ctx <= slot_ctx`.
    pub num_ctx: u32,
    /// The client wants the answer in one piece: the text comes in one event at the end
    /// instead of one per token, which saves waking the HTTP side for every token.
    pub whole: bool,
    /// Write special tokens as their text (`<|python_tag|>`, `[TOOL_CALLS]`): tool call
    /// and reasoning markers are special tokens in some vocabularies.
    pub special: bool,
}

/// What the engine sends back for one request, in order: `Started` (only for `whole`
/// requests), text pieces, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// The prompt is read and generation has begun.
    Started,
    Text(String),
    Done(Summary),
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence token or a stop sequence.
    Stop,
    /// `num_predict` / `max_tokens` or the context length reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug)]
pub struct Summary {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    /// Of these, how many were found in the KV cache and not read again.
    pub cached_tokens: u32,
    /// Prompt followed by the generated tokens (Ollama's `context`).
    pub tokens: Vec<LlamaToken>,
    pub generated_tokens: u32,
    /// Reading the prompt, until the first token was sampled.
    pub prompt_duration: Duration,
    /// Generating the rest of the answer.
    pub eval_duration: Duration,
}

struct Job {
    request: GenerationRequest,
    events: UnboundedSender<Event>,
}

/// Clears `engine_alive` when the inference thread ends, by return or by panic, so
/// `/health` reports it.
struct AliveFlag(Arc<Metrics>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.engine_alive.store(false, Relaxed);
    }
}

/// Handle to the inference thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Creates the context on a new thread and returns once it is ready.
    pub fn start(
        backend: Arc<LlamaBackend>,
        model: Arc<LlamaModel>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(config.queue.max(1));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("inference".to_owned())
            .spawn(move || {
                let threads = i32::try_from(config.threads).unwrap_or(1);
                let params = LlamaContextParams::default()
                    .with_n_ctx(std::num::NonZeroU32::new(config.slot_ctx * config.slots))
                    .with_n_seq_max(config.slots)
                    // Room for one decoding token per slot next to a prompt chunk.
                    .with_n_batch(u32::try_from(PREFILL_CHUNK).unwrap_or(512) + config.slots)
                    .with_n_ubatch(u32::try_from(PREFILL_CHUNK).unwrap_or(512) + config.slots)
                    .with_n_threads(threads)
                    .with_n_threads_batch(threads);
                let ctx = match model.new_context(&backend, params) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot create llama.cpp context: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let _alive = AliveFlag(thread_metrics.clone());
                worker::Worker::new(ctx, &model, &config, jobs_rx, thread_metrics).run();
            })
            .map_err(|e| format!("cannot start inference thread: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| "inference thread stopped during startup".to_owned())??;
        Ok(Self {
            jobs: jobs_tx,
            metrics,
        })
    }

    /// Queues a request; its answer arrives on the returned channel. Dropping the
    /// receiver cancels the request and frees its slot.
    pub fn submit(&self, request: GenerationRequest) -> Result<UnboundedReceiver<Event>, ApiError> {
        let (events, rx) = unbounded_channel();
        // Counted before sending so the worker's decrement can never go below zero.
        self.metrics.queue_depth.fetch_add(1, Relaxed);
        match self.jobs.try_send(Job { request, events }) {
            Ok(()) => {
                self.metrics.requests.fetch_add(1, Relaxed);
                Ok(rx)
            }
            Err(err) => {
                self.metrics.queue_depth.fetch_sub(1, Relaxed);
                match err {
                    TrySendError::Full(_) => {
                        self.metrics.rejected.fetch_add(1, Relaxed);
                        Err(ApiError::QueueFull)
                    }
                    TrySendError::Disconnected(_) => Err(ApiError::Engine(
                        "the inference thread has stopped".to_owned(),
                    )),
                }
            }
        }
    }
}
