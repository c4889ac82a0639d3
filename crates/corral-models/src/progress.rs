//! Where a model's weights stand, for the instance timeline and the CLI's progress bar.

use serde::Serialize;
use tokio::sync::watch;

/// What `Weights::resolve` is doing for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nothing is being fetched: nothing was asked since the server started, or the last
    /// resolve was cancelled (`done` then says how far it got; the next one resumes).
    Idle,
    /// Asking the Ollama registry which blob holds the GGUF.
    Manifest,
    Downloading,
    /// Hashing a file already on disk (one that was there without a verified record).
    Verifying,
    /// The verified GGUF is in place.
    Ready,
    Failed,
}

/// A snapshot: `done` of `total` bytes (total unknown until the server says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: Option<u64>,
    /// Set with [`Phase::Failed`]: the same message `resolve` returned.
    pub error: Option<String>,
}

impl Progress {
    pub(crate) const IDLE: Progress = Progress {
        phase: Phase::Idle,
        done: 0,
        total: None,
        error: None,
    };

    /// Whole percent done, when the total is known.
    pub fn percent(&self) -> Option<u8> {
        let total = self.total.filter(|t| *t > 0)?;
        Some((self.done.min(total) * 100 / total) as u8)
    }
}

/// Without a known size, log every this many bytes instead of every 5 %.
const LOG_EVERY_UNKNOWN: u64 = 64 << 20;

/// Publishes progress for one resolve and logs it at info every ~5 %, so an operator
/// tailing the server log sees a long pull move without being flooded. Dropped before
/// `Ready` or `Failed` (the resolve was cancelled: the instance was stopped meanwhile),
/// it goes back to `Idle` so nobody waits on a download that no one is doing.
pub(crate) struct Meter<'a> {
    tx: &'a watch::Sender<Progress>,
    model: &'a str,
    logged_step: Option<u64>,
}

impl<'a> Meter<'a> {
    pub(crate) fn new(tx: &'a watch::Sender<Progress>, model: &'a str) -> Self {
        Meter {
            tx,
            model,
            logged_step: None,
        }
    }

    pub(crate) fn phase(&mut self, phase: Phase, done: u64, total: Option<u64>) {
        self.logged_step = None;
        self.tx.send_replace(Progress {
            phase,
            done,
            total,
            error: None,
        });
    }

    pub(crate) fn bytes(&mut self, done: u64, total: Option<u64>) {
        self.tx.send_modify(|p| {
            p.done = done;
            p.total = total;
        });
        let step = match total {
            Some(t) if t > 0 => done.min(t) * 20 / t,
            _ => done / LOG_EVERY_UNKNOWN,
        };
        if self.logged_step.is_none_or(|s| step > s) {
            self.logged_step = Some(step);
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            match total {
                Some(t) => tracing::info!(
                    model = self.model,
                    "weights: {:.1} of {:.1} MiB ({}%)",
                    mib(done),
                    mib(t),
                    step * 5
                ),
                None => tracing::info!(model = self.model, "weights: {:.1} MiB", mib(done)),
            }
        }
    }

    pub(crate) fn failed(&mut self, error: String) {
        self.tx.send_modify(|p| {
            p.phase = Phase::Failed;
            p.error = Some(error);
        });
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        self.tx.send_if_modified(|p| {
            let running = matches!(
                p.phase,
                Phase::Manifest | Phase::Downloading | Phase::Verifying
            );
            if running {
                p.phase = Phase::Idle;
            }
            running
        });
    }
}
