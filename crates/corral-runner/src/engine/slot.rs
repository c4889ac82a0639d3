//! One request's progress through the engine.

use std::time::Instant;

use llama_cpp_2::token::LlamaToken;

use super::{Event, FinishReason, Job, Summary};
use crate::text::{Push, TextStream};

pub(super) struct Slot {
    job: Job,
    /// Prompt tokens already put into a batch.
    pub fed: usize,
    /// Positions filled in this slot's KV cache sequence.
    pub n_past: u32,
    /// Prompt tokens found in the KV cache, not read again.
    reused: usize,
    /// Sampled but not yet decoded: goes into the next batch.
    pub pending: Option<LlamaToken>,
    /// Index in the current batch whose logits this slot samples from.
    pub logits_at: Option<i32>,
    generated: Vec<LlamaToken>,
    text: TextStream,
    /// The answer so far, for `whole` requests.
    buffered: String,
    admitted: Instant,
    first_token: Option<Instant>,
}

/// What happens after a token was sampled.
pub(super) enum Next {
    Continue,
    Finished(FinishReason),
    /// The client is gone.
    Cancelled,
}

impl Slot {
    /// A slot whose KV cache already holds the first `reused` prompt tokens.
    pub fn new(job: Job, reused: usize) -> Self {
        let text = TextStream::new(job.request.stop.clone());
        Self {
            job,
            fed: reused,
            n_past: u32::try_from(reused).unwrap_or(u32::MAX),
            reused,
            pending: None,
            logits_at: None,
            generated: Vec::new(),
            text,
            buffered: String::new(),
            admitted: Instant::now(),
            first_token: None,
        }
    }

    pub fn prompt(&self) -> &[LlamaToken] {
        &self.job.request.prompt
    }

    pub fn prompt_done(&self) -> bool {
        self.fed == self.job.request.prompt.len()
    }

    pub fn client_gone(&self) -> bool {
        self.job.events.is_closed()
    }

    pub fn sampler(&mut self) -> &mut crate::sampling::TokenSampler {
        &mut self.job.request.sampler
    }

    pub fn renders_special(&self) -> bool {
        self.job.request.special
    }

    pub fn max_tokens(&self) -> Option<u32> {
        self.job.request.max_tokens
    }

    /// Takes a sampled token: streams its text and decides whether generation goes on.
    /// `is_eog` and `piece` come from the vocabulary (the slot does not hold the model).
    pub fn accept(&mut self, token: LlamaToken, is_eog: bool, piece: &[u8]) -> Next {
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
            if self.job.request.whole && self.job.events.send(Event::Started).is_err() {
                return Next::Cancelled;
            }
        }
        if is_eog {
            return Next::Finished(FinishReason::Stop);
        }
        self.generated.push(token);
        let (text, stopped) = match self.text.push(piece) {
            Push::Text(t) => (t, false),
            Push::Stopped(t) => (t, true),
        };
        if self.job.request.whole {
            self.buffered.push_str(&text);
        } else if !text.is_empty() && self.job.events.send(Event::Text(text)).is_err() {
            return Next::Cancelled;
        }
        if stopped {
            return Next::Finished(FinishReason::Stop);
        }
        let generated = u32::try_from(self.generated.len()).unwrap_or(u32::MAX);
        if self.max_tokens().is_some_and(|max| generated >= max) {
            return Next::Finished(FinishReason::Length);
        }
        // The next token needs a free position in this request's context.
        if self.n_past >= self.job.request.num_ctx {
            return Next::Finished(FinishReason::Length);
        }
        self.pending = Some(token);
        Next::Continue
    }

    /// The tokens whose keys and values are in this slot's KV cache sequence: the prompt
    /// read so far, then the generated tokens already decoded (the last sampled token
    /// never is).
    pub fn kv_tokens(&self) -> Vec<LlamaToken> {
        let n = self.n_past as usize;
        let prompt = &self.job.request.prompt;
        let mut tokens = prompt[..n.min(prompt.len())].to_vec();
        tokens.extend(self.generated.iter().take(n.saturating_sub(prompt.len())));
        tokens
    }

    pub fn generated_count(&self) -> usize {
        self.generated.len()
    }

    /// Sends the rest of the text and the summary. Consumes the slot.
    pub fn finish(mut self, reason: FinishReason) {
        let now = Instant::now();
        let mut rest = std::mem::take(&mut self.buffered);
        rest.push_str(&self.text.finish());
        if !rest.is_empty() {
            let _ = self.job.events.send(Event::Text(rest));
        }
        let first_token = self.first_token.unwrap_or(now);
        let request = &self.job.request;
        let prompt_tokens = u32::try_from(request.prompt.len()).unwrap_or(u32::MAX);
        let generated_tokens = u32::try_from(self.generated.len()).unwrap_or(u32::MAX);
        let mut tokens = request.prompt.clone();
        tokens.extend_from_slice(&self.generated);
        let summary = Summary {
            reason,
            prompt_tokens,
            cached_tokens: u32::try_from(self.reused).unwrap_or(u32::MAX),
            tokens,
            generated_tokens,
            prompt_duration: first_token.saturating_duration_since(self.admitted),
            eval_duration: now.saturating_duration_since(first_token),
        };
        let _ = self.job.events.send(Event::Done(summary));
    }

    pub fn fail(self, message: String) {
        let _ = self.job.events.send(Event::Failed(message));
    }
}
