//! Write-behind metering: what the gateway learns per request (usage, an API key's last
//! use) is added up in memory and written to the store in one go about once a second
//! (`FLUSH_EVERY`) and when the server shuts down, so that no request waits on a store
//! write and a busy minute costs a few writes per (owner, instance, model, hour)
//! rather than one per request.
//!
//! Each flush writes one `record_usage` per (owner, instance, model, hour) bucket, its
//! sample carrying the bucket's request count and token totals: the hourly rows end up
//! exactly as if every request had been written itself, at one upsert per bucket a
//! second however busy the gateway is. A write that fails puts its bucket back (and
//! everything after it), for the next flush; nothing is counted twice or lost while
//! the server runs. (The instance's last activity is not here: the routing table keeps it
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
    /// Adds a sample's usage (the gateway's are one request each).
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
                requests: sample.requests,
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
            let sample = UsageSample {
                owner_id: bucket.owner_id,
                instance_id: bucket.instance_id,
                model_id: bucket.model_id.clone(),
                at: bucket.hour,
                requests: counts.requests,
                prompt_tokens: counts.prompt_tokens,
                completion_tokens: counts.completion_tokens,
            };
            if let Err(e) = store.record_usage(&sample).await {
                self.add(bucket, counts);
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

/// The flushing task (usage, and the audit rows of rate-limited requests once their
/// minute is over). `stop` ends it with a last flush.
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
                        state.refusals.flush(store.as_ref(), false).await;
                    }
                    _ = &mut stopped => break,
                }
            }
            // The server has drained its requests: write what they left.
            if let Err(e) = writeback.flush(store.as_ref()).await {
                tracing::error!(error = %e, "could not write usage at shutdown; it is lost");
            }
            state.refusals.flush(store.as_ref(), true).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use corral_core::{ApiKey, Role, User};

    async fn store() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("corral.db").display());
        let store = corral_store::open(&url).await.unwrap();
        (dir, store)
    }

    fn sample(owner: Uuid, instance: Uuid, at: DateTime<Utc>, p: u64, c: u64) -> UsageSample {
        UsageSample {
            owner_id: owner,
            instance_id: instance,
            model_id: "smollm2:135m".into(),
            at,
            requests: 1,
            prompt_tokens: p,
            completion_tokens: c,
        }
    }

    #[tokio::test]
    async fn one_write_per_bucket_counts_its_requests() {
        let (_dir, store) = store().await;
        let (owner, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let ten = Utc.with_ymd_and_hms(2026, 11, 25, 10, 5, 0).unwrap();
        let eleven = Utc.with_ymd_and_hms(2026, 11, 25, 11, 59, 59).unwrap();
        let wb = Writeback::default();
        wb.usage(sample(owner, a, ten, 10, 2));
        wb.usage(sample(owner, a, ten + TimeDelta::minutes(50), 5, 1));
        wb.usage(sample(owner, a, eleven, 7, 3));
        wb.usage(sample(owner, b, ten, 1, 1));
        wb.flush(store.as_ref()).await.unwrap();
        // Written once: a second flush adds nothing.
        wb.flush(store.as_ref()).await.unwrap();

        let rows = store.usage(Some(owner), None, None).await.unwrap();
        let row = |inst: Uuid, hour: DateTime<Utc>| {
            rows.iter()
                .find(|r| r.instance_id == inst && r.hour == hour)
                .map(|r| (r.requests, r.prompt_tokens, r.completion_tokens))
        };
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(row(a, hour_start(ten)), Some((2, 15, 3)));
        assert_eq!(row(a, hour_start(eleven)), Some((1, 7, 3)));
        assert_eq!(row(b, hour_start(ten)), Some((1, 1, 1)));

        // Added to, not replaced, by a later flush.
        wb.usage(sample(owner, b, ten, 4, 4));
        wb.flush(store.as_ref()).await.unwrap();
        let rows = store.usage(Some(owner), None, None).await.unwrap();
        let b_row = rows.iter().find(|r| r.instance_id == b).unwrap();
        assert_eq!((b_row.requests, b_row.completion_tokens), (2, 5));
    }

    #[tokio::test]
    async fn key_use_keeps_the_latest_time() {
        let (_dir, store) = store().await;
        let user = User::new("k@example.com", "x".into(), Role::User, Utc::now());
        store.create_user(&user).await.unwrap();
        let key = ApiKey {
            id: Uuid::now_v7(),
            owner_id: user.id,
            name: "k".into(),
            prefix: "crl_x".into(),
            key_hash: "h".into(),
            created_at: Utc::now(),
            expires_at: None,
            last_used_at: None,
        };
        store.create_api_key(&key).await.unwrap();
        let late = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        let wb = Writeback::default();
        wb.key_used(key.id, late);
        wb.key_used(key.id, late - TimeDelta::seconds(30));
        wb.flush(store.as_ref()).await.unwrap();
        let stored = store.list_api_keys(user.id).await.unwrap();
        assert_eq!(stored[0].last_used_at, Some(late));
    }
}
