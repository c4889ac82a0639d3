//! The inference thread's loop.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, TryRecvError};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use super::cache::pick_slot;
use super::slot::{Next, Slot};
use super::{EngineConfig, FinishReason, Job, PREFILL_CHUNK};
use crate::metrics::Metrics;

pub(super) struct Worker<'m> {
    ctx: LlamaContext<'m>,
    model: &'m LlamaModel,
    /// Slot `i` decodes as llama.cpp sequence `i`.
    slots: Vec<Option<Slot>>,
    /// What the KV cache sequence of each free slot holds, for the next request to reuse
    /// (see [`super::cache`]). Stays empty when prompt caching is off.
    cached: Vec<Vec<LlamaToken>>,
    cache_prompt: bool,
    batch: LlamaBatch<'static>,
    jobs: Receiver<Job>,
    metrics: Arc<Metrics>,
    /// Reused buffer for token text.
    piece: Vec<u8>,
}

impl<'m> Worker<'m> {
    pub fn new(
        ctx: LlamaContext<'m>,
        model: &'m LlamaModel,
        config: &EngineConfig,
        jobs: Receiver<Job>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let slots = (0..config.slots).map(|_| None).collect();
        Self {
            ctx,
            model,
            slots,
            cached: vec![Vec::new(); config.slots as usize],
            cache_prompt: config.cache_prompt,
            batch: LlamaBatch::new(PREFILL_CHUNK + config.slots as usize, 1),
            jobs,
            metrics,
            piece: Vec::new(),
        }
    }

    /// Runs until every `Engine` handle is dropped and the last request is done.
    pub fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            self.drop_cancelled();
            if self.busy() == 0 {
                continue;
            }
            self.step();
        }
    }

    fn busy(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Moves queued requests into free slots. Blocks while there is nothing to do.
    /// Returns false when the queue is closed and no slot is busy.
    fn admit(&mut self) -> bool {
        while self.slots.iter().any(Option::is_none) {
            let job = if self.busy() == 0 {
                match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            if job.events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Relaxed);
                continue;
            }
            if job.request.max_tokens == Some(0) {
                Slot::new(job, 0).finish(FinishReason::Length);
                continue;
            }
            let free = self
                .slots
                .iter()
                .zip(&self.cached)
                .enumerate()
                .filter(|(_, (slot, _))| slot.is_none())
                .map(|(i, (_, cached))| (i, cached.as_slice()));
            let Some((index, reuse)) = pick_slot(free, &job.request.prompt) else {
                break;
            };
            let reused = self.keep_prefix(index, reuse);
            self.slots[index] = Some(Slot::new(job, reused));
            self.metrics.slots_busy.fetch_add(1, Relaxed);
            self.metrics
                .prompt_cached_tokens
                .fetch_add(reused as u64, Relaxed);
        }
        true
    }

    /// Keeps the first `reuse` positions of sequence `seq` and removes the rest from the
    /// KV cache (the cached conversation may diverge from the new prompt mid-way).
    /// Returns how many positions were kept: 0 if llama.cpp cannot cut this sequence.
    fn keep_prefix(&mut self, seq: usize, reuse: usize) -> usize {
        let cached = std::mem::take(&mut self.cached[seq]);
        if reuse == 0 {
            self.clear_sequence(seq);
            return 0;
        }
        if cached.len() == reuse {
            return reuse;
        }
        // Positions are u32 in the KV cache API; a slot's context is far below that.
        let from = u32::try_from(reuse).unwrap_or(u32::MAX);
        match self
            .ctx
            .clear_kv_cache_seq(Some(seq as u32), Some(from), None)
        {
            Ok(true) => reuse,
            // Recurrent models cannot drop the tail of a sequence: start from scratch.
            Ok(false) | Err(_) => {
                self.clear_sequence(seq);
                0
            }
        }
    }

    fn drop_cancelled(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(Slot::client_gone) {
                self.release(i);
                self.metrics.cancelled.fetch_add(1, Relaxed);
            }
        }
    }

    /// One decode: the pending token of every generating slot plus a chunk of the
    /// prompts still being read, then sampling for every slot that got logits.
    fn step(&mut self) {
        self.batch.clear();
        let mut add_failed = false;
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if let Some(token) = slot.pending.take() {
                add_failed |= self
                    .batch
                    .add(token, slot.n_past as i32, &[seq as i32], true)
                    .is_err();
                slot.logits_at = Some(self.batch.n_tokens() - 1);
                slot.n_past += 1;
            }
        }
        let mut budget = PREFILL_CHUNK;
        let mut prompt_tokens = 0u64;
        for (seq, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.prompt_done() || budget == 0 {
                continue;
            }
            let end = slot.prompt().len().min(slot.fed + budget);
            for i in slot.fed..end {
                let last = i + 1 == slot.prompt().len();
                let token = slot.prompt()[i];
                add_failed |= self
                    .batch
                    .add(token, slot.n_past as i32, &[seq as i32], last)
                    .is_err();
                slot.n_past += 1;
            }
            if end == slot.prompt().len() {
                slot.logits_at = Some(self.batch.n_tokens() - 1);
            }
            budget -= end - slot.fed;
            prompt_tokens += (end - slot.fed) as u64;
            slot.fed = end;
        }
        // The batch is sized for a full prompt chunk plus one token per slot, so adding
        // cannot fail; if it ever does, failing the requests beats a wrong answer.
        let decoded = if add_failed {
            Err("internal error: batch overflow".to_owned())
        } else {
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| format!("llama.cpp decode failed: {e}"))
        };
        if let Err(message) = decoded {
            tracing::error!("{message}");
            self.fail_all(&message);
            return;
        }
        self.metrics.prompt_tokens.fetch_add(prompt_tokens, Relaxed);
        self.sample();
    }

    fn sample(&mut self) {
        let vocab = self.model.vocab();
        let mut generated = 0;
        for i in 0..self.slots.len() {
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            let Some(at) = slot.logits_at.take() else {
                continue;
            };
            let Some(token) = slot.sampler().sample(&self.ctx, at) else {
                // Every candidate was ruled out (a grammar with no way forward).
                if let Some(slot) = self.release(i) {
                    slot.finish(FinishReason::Stop);
                }
                continue;
            };
            let is_eog = vocab.is_eog(token);
            self.piece.clear();
            if !is_eog {
                let special = slot.renders_special();
                vocab.token_to_piece_into(token, &mut self.piece, special, None);
            }
            let before = slot.generated_count();
            let next = slot.accept(token, is_eog, &self.piece);
            generated += slot.generated_count() - before;
            match next {
                Next::Continue => {}
                Next::Finished(reason) => {
                    if let Some(slot) = self.release(i) {
                        slot.finish(reason);
                    }
                }
                Next::Cancelled => {
                    self.release(i);
                    self.metrics.cancelled.fetch_add(1, Relaxed);
                }
            }
        }
        if generated > 0 {
            self.metrics.record_generated(generated as u64);
        }
    }

    fn fail_all(&mut self, message: &str) {
        for i in 0..self.slots.len() {
            if let Some(slot) = self.release(i) {
                slot.fail(message.to_owned());
                self.metrics.failed.fetch_add(1, Relaxed);
            }
            // After a failed decode the KV cache may hold part of a batch: trust none of it.
            self.cached[i].clear();
            self.clear_sequence(i);
        }
    }

    /// Frees slot `i`. With prompt caching its KV cache stays for the next request to
    /// reuse; without, its cells are freed at once.
    fn release(&mut self, i: usize) -> Option<Slot> {
        let slot = self.slots[i].take()?;
        if self.cache_prompt {
            self.cached[i] = slot.kv_tokens();
        } else {
            self.clear_sequence(i);
        }
        self.metrics.slots_busy.fetch_sub(1, Relaxed);
        Some(slot)
    }

    fn clear_sequence(&mut self, seq: usize) {
        if let Err(e) = self.ctx.clear_kv_cache_seq(Some(seq as u32), None, None) {
            tracing::warn!("cannot clear KV cache of sequence {seq}: {e}");
        }
    }
}
