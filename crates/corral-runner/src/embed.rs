//! Embeddings, on their own thread and llama.cpp context.
//!
//! Generation contexts do not produce pooled embeddings, so embedding requests get a
//! separate context with mean pooling. It is created on the first embedding request:
//! a runner that only chats does not pay for its memory.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, SyncSender, TrySendError};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;

pub struct Embeddings {
    /// One vector per input, as the model computes it (not normalised).
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
}

struct Job {
    inputs: Vec<Vec<LlamaToken>>,
    reply: oneshot::Sender<Result<Embeddings, String>>,
}

#[derive(Clone)]
pub struct Embedder {
    jobs: SyncSender<Job>,
    /// Longest input, in tokens: a whole input must fit in one llama.cpp micro-batch.
    pub max_tokens: u32,
    metrics: Arc<Metrics>,
}

impl Embedder {
    pub fn start(
        backend: Arc<LlamaBackend>,
        model: Arc<LlamaModel>,
        max_tokens: u32,
        threads: u32,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(queue.max(1));
        std::thread::Builder::new()
            .name("embeddings".to_owned())
            .spawn(move || {
                let params = LlamaContextParams::default()
                    .with_embeddings(true)
                    .with_pooling_type(LlamaPoolingType::Mean)
                    .with_n_ctx(NonZeroU32::new(max_tokens))
                    .with_n_batch(max_tokens)
                    .with_n_ubatch(max_tokens)
                    .with_n_seq_max(1)
                    .with_n_threads(i32::try_from(threads).unwrap_or(1))
                    .with_n_threads_batch(i32::try_from(threads).unwrap_or(1));
                let mut ctx: Option<LlamaContext<'_>> = None;
                for job in rx {
                    if ctx.is_none() {
                        match model.new_context(&backend, params.clone()) {
                            Ok(c) => ctx = Some(c),
                            Err(e) => {
                                let _ = job
                                    .reply
                                    .send(Err(format!("cannot create embedding context: {e}")));
                                continue;
                            }
                        }
                    }
                    if let Some(ctx) = ctx.as_mut() {
                        let result = embed_all(ctx, &job.inputs);
                        let _ = job.reply.send(result);
                    }
                }
            })
            .map_err(|e| format!("cannot start embedding thread: {e}"))?;
        Ok(Self {
            jobs,
            max_tokens,
            metrics,
        })
    }

    /// Embeds every input (each `1..=max_tokens` tokens long).
    pub async fn embed(&self, inputs: Vec<Vec<LlamaToken>>) -> Result<Embeddings, ApiError> {
        let (reply, rx) = oneshot::channel();
        match self.jobs.try_send(Job { inputs, reply }) {
            Ok(()) => self.metrics.requests.fetch_add(1, Relaxed),
            Err(TrySendError::Full(_)) => {
                self.metrics.rejected.fetch_add(1, Relaxed);
                return Err(ApiError::QueueFull);
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::Engine(
                    "the embedding thread has stopped".to_owned(),
                ));
            }
        };
        let embeddings = rx
            .await
            .map_err(|_| ApiError::Engine("the embedding thread has stopped".to_owned()))?
            .map_err(ApiError::Engine)?;
        self.metrics
            .prompt_tokens
            .fetch_add(u64::from(embeddings.prompt_tokens), Relaxed);
        Ok(embeddings)
    }
}

fn embed_all(ctx: &mut LlamaContext<'_>, inputs: &[Vec<LlamaToken>]) -> Result<Embeddings, String> {
    let longest = inputs.iter().map(Vec::len).max().unwrap_or(0);
    let mut batch = LlamaBatch::new(longest.max(1), 1);
    let mut vectors = Vec::with_capacity(inputs.len());
    for tokens in inputs {
        ctx.clear_kv_cache();
        batch.clear();
        // Every position is an output: mean pooling averages all of them.
        batch
            .add_sequence(tokens, 0, true)
            .map_err(|e| e.to_string())?;
        ctx.decode(&mut batch)
            .map_err(|e| format!("llama.cpp decode failed: {e}"))?;
        let vector = ctx
            .embeddings_seq_ith(0)
            .map_err(|e| format!("no embedding: {e}"))?;
        vectors.push(vector.to_vec());
    }
    let prompt_tokens = inputs.iter().map(Vec::len).sum::<usize>();
    Ok(Embeddings {
        vectors,
        prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
    })
}

/// Scales a vector to unit length (what Ollama's `/api/embed` and OpenAI return).
pub fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_to_unit_length() {
        assert_eq!(normalize(vec![3.0, 4.0]), vec![0.6, 0.8]);
        assert_eq!(normalize(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
