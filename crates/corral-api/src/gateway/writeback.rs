//! Write-behind metering: what the gateway learns per request (usage, an API key's last
//! use) is added up in memory and written to the store in one go about once a second
//! (`FLUSH_EVERY`) and when the server shuts down, so that no request waits on a store
//! write and a busy minute costs a few writes per (owner, instance, model, hour)
//! rather than one per request.
//!
//! The store's `record_usage` adds one request per call, so a bucket of n requests is
//! written as n calls, the first carrying the bucket's tokens: the hourly rows end up
//! exactly as if every request had been written itself. A write that fails puts back
//! what was not written, for the next flush; nothing is counted twice or lost while the
//! server runs. (The instance's last activity is not here: the routing table keeps it
//! and the reconciler writes it; see `corral_control::routing`.)

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use corral_core::UsageSample;
use corral_store::Store;
use std::collections::HashMap;
use std::mem;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::state::AppState;

/// How often pending usage is written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bucket {
    owner_id: Uuid,
    instance_id: Uuid,
    model_id: String,
    /// Start of the hour.
    hour: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Debug, Default)]
struct Pending {
    usage: HashMap<Bucket, Counts>,
    /// API key id → when it was last used.
    keys: HashMap<Uuid, DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct Writeback {
    pending: Mutex<Pending>,
}

fn hour_start(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(TimeDelta::hours(1)).unwrap_or(at)
}

impl Writeback {
    /// Adds one request's usage.
    pub fn usage(&self, sample: UsageSample) {
        let bucket = Bucket {
            owner_id: sample.owner_id,
            instance_id: sample.instance_id,
            model_id: sample.model_id,
            hour: hour_start(sample.at),
        };
        self.add(
            bucket,
            Counts {
                requests: 1,
                prompt_tokens: sample.prompt_tokens,
                completion_tokens: sample.completion_tokens,
            },
        );
    }

    fn add(&self, bucket: Bucket, counts: Counts) {
        let mut pending = self.lock();
        let c = pending.usage.entry(bucket).or_default();
        c.requests += counts.requests;
        c.prompt_tokens += counts.prompt_tokens;
        c.completion_tokens += counts.completion_tokens;
    }

    /// Notes that an API key was used at `at`.
    pub fn key_used(&self, id: Uuid, at: DateTime<Utc>) {
        let mut pending = self.lock();
        let last = pending.keys.entry(id).or_insert(at);
        *last = (*last).max(at);
    }

    /// Writes everything pending. On a store error, what was not written stays pending
    /// and the error is returned.
    pub async fn flush(&self, store: &dyn Store) -> corral_store::Result<()> {
        let Pending { usage, keys } = mem::take(&mut *self.lock());
        let mut usage = usage.into_iter();
        while let Some((bucket, counts)) = usage.next() {
            if let Err((e, left)) = write_bucket(store, &bucket, counts).await {
                self.add(bucket, left);
                for (bucket, counts) in usage {
                    self.add(bucket, counts);
                }
                for (id, at) in keys {
                    self.key_used(id, at);
                }
                return Err(e);
            }
        }
        let mut keys = keys.into_iter();
        while let Some((id, at)) = keys.next() {
            if let Err(e) = store.touch_api_key(id, at).await {
                self.key_used(id, at);
                for (id, at) in keys {
                    self.key_used(id, at);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes a bucket as `requests` calls; on failure, returns what is left to write.
async fn write_bucket(
    store: &dyn Store,
    bucket: &Bucket,
    counts: Counts,
) -> Result<(), (corral_store::Error, Counts)> {
    let mut left = counts;
    while left.requests > 0 {
        let sample = UsageSample {
            owner_id: bucket.owner_id,
            instance_id: bucket.instance_id,
            model_id: bucket.model_id.clone(),
            at: bucket.hour,
            prompt_tokens: left.prompt_tokens,
            completion_tokens: left.completion_tokens,
        };
        store.record_usage(&sample).await.map_err(|e| (e, left))?;
        left = Counts {
            requests: left.requests - 1,
            prompt_tokens: 0,
            completion_tokens: 0,
        };
    }
    Ok(())
}

/// The flushing task. `stop` ends it with a last flush.
pub struct Flusher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Flusher {
    pub fn start(state: AppState) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let writeback = &state.gateway.writeback;
            let store = &state.store;
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = writeback.flush(store.as_ref()).await {
                            tracing::error!(error = %e, "could not write usage; retrying in a second");
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            // The server has drained its requests: write what they left.
            if let Err(e) = writeback.flush(store.as_ref()).await {
                tracing::error!(error = %e, "could not write usage at shutdown; it is lost");
            }
        });
        Flusher { stop, task }
    }

    /// Stops the periodic flushes and waits for the last one.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the usage flusher failed");
        }
    }
}
