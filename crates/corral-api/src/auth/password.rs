//! Argon2id hashing. Hashing is CPU- and memory-heavy by design (19 MiB and tens of
//! milliseconds per call by default), so it runs on the blocking pool, never on the async
//! workers, and only `HashLimits::in_flight` calls at once: a login burst would otherwise
//! start one hash per request, each on another blocking thread holding its own 19 MiB
//! block, and the server's memory would follow the burst. Callers beyond that wait in a
//! bounded queue; beyond the queue they get 503 with Retry-After.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::http::StatusCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use crate::error::{ApiError, ApiResult};
use crate::settings::{Argon2Params, HashLimits};

fn argon2(p: Argon2Params) -> ApiResult<Argon2<'static>> {
    let params =
        Params::new(p.memory_kib, p.iterations, p.parallelism, None).map_err(ApiError::internal)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The server's (or the CLI's) one way to hash and verify passwords, with the bound on
/// Argon2 work in flight.
pub struct Passwords {
    params: Argon2Params,
    /// `in_flight + queued` permits: a request that cannot take one is refused at once.
    admitted: Semaphore,
    /// `in_flight` permits: a request holds one while Argon2 runs.
    running: Semaphore,
    in_flight: usize,
    queued: usize,
    /// Argon2 calls running now, and the most ever seen at once (`/metrics`).
    active: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicU64,
    /// The last call's duration, in microseconds, to size Retry-After.
    last_micros: AtomicU64,
    /// A hash of a fixed password, verified against for unknown addresses.
    dummy: OnceCell<String>,
}

/// Figures for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct HashStats {
    pub active: usize,
    pub peak: usize,
    pub refused: u64,
    pub in_flight_limit: usize,
}

impl Passwords {
    pub fn new(params: Argon2Params, limits: HashLimits) -> Self {
        let in_flight = limits.in_flight.max(1);
        Passwords {
            params,
            admitted: Semaphore::new(in_flight + limits.queued),
            running: Semaphore::new(in_flight),
            in_flight,
            queued: limits.queued,
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            last_micros: AtomicU64::new(100_000),
            dummy: OnceCell::new(),
        }
    }

    pub async fn hash(&self, password: String) -> ApiResult<String> {
        let p = self.params;
        self.run(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2(p)?
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(ApiError::internal)
        })
        .await
    }

    /// Verifies with the parameters recorded in the hash itself, so raising the cost
    /// later does not invalidate existing hashes.
    pub async fn verify(&self, password: String, phc: String) -> ApiResult<bool> {
        self.run(move || {
            let parsed = PasswordHash::new(&phc).map_err(ApiError::internal)?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    /// Burns the same time as a real verification, for logins to unknown addresses:
    /// the response time must not reveal whether an account exists.
    pub async fn verify_dummy(&self, password: String) -> ApiResult<()> {
        let phc = self
            .dummy
            .get_or_try_init(|| self.hash("dummy-password-for-timing".into()))
            .await?
            .clone();
        self.verify(password, phc).await.map(|_| ())
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            active: self.active.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            in_flight_limit: self.in_flight,
        }
    }

    /// Occupies every worker slot, as `in_flight` running hashes would, until the guard
    /// is dropped: meanwhile hashes queue, and beyond the queue are refused. For tests
    /// that need a full queue without racing real hashes.
    pub async fn hold_all(&self) -> ApiResult<Held<'_>> {
        let n = u32::try_from(self.in_flight).map_err(ApiError::internal)?;
        let admitted = self
            .admitted
            .acquire_many(n)
            .await
            .map_err(ApiError::internal)?;
        let running = self
            .running
            .acquire_many(n)
            .await
            .map_err(ApiError::internal)?;
        Ok(Held {
            _admitted: admitted,
            _running: running,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let Ok(_admitted) = self.admitted.try_acquire() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let per_hash = Duration::from_micros(self.last_micros.load(Ordering::Relaxed));
            return Err(busy(retry_after(self.queued, self.in_flight, per_hash)));
        };
        let _running = self.running.acquire().await.map_err(ApiError::internal)?;
        let now = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(work).await;
        self.active.fetch_sub(1, Ordering::Relaxed);
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros.store(micros, Ordering::Relaxed);
        result.map_err(ApiError::internal)?
    }
}

/// Worker slots taken by `Passwords::hold_all`, given back on drop.
pub struct Held<'a> {
    _admitted: SemaphorePermit<'a>,
    _running: SemaphorePermit<'a>,
}

fn busy(retry_after: Duration) -> ApiError {
    ApiError::Denied {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "busy",
        message: "too many password checks are waiting; try again after Retry-After seconds".into(),
        retry_after: Some(retry_after),
    }
}

/// When a refused caller may find room: the time the queue ahead of it takes to drain,
/// `queued` hashes over `in_flight` workers at `per_hash` each, between 1 s and a minute.
pub fn retry_after(queued: usize, in_flight: usize, per_hash: Duration) -> Duration {
    let rounds = queued.div_ceil(in_flight.max(1)).max(1);
    per_hash
        .saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX))
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_the_queue_drain_time_within_bounds() {
        let ms = Duration::from_millis;
        // 64 queued over 2 workers at 50 ms: 32 rounds, 1.6 s.
        assert_eq!(retry_after(64, 2, ms(50)), ms(1600));
        // Rounds up: 3 queued over 2 workers is two rounds.
        assert_eq!(retry_after(3, 2, ms(600)), ms(1200));
        // Never under a second (a client must not spin), never over a minute.
        assert_eq!(retry_after(1, 4, ms(10)), ms(1000));
        assert_eq!(retry_after(0, 1, ms(10)), ms(1000));
        assert_eq!(retry_after(10_000, 1, ms(500)), Duration::from_secs(60));
        assert_eq!(retry_after(5, 0, ms(300)), ms(1500));
    }

    #[tokio::test]
    async fn hashes_verify_and_the_queue_refuses_beyond_its_length() {
        let cheap = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let p = std::sync::Arc::new(Passwords::new(
            cheap,
            HashLimits {
                in_flight: 1,
                queued: 1,
            },
        ));
        let phc = p.hash("Right-Pass1!".into()).await.unwrap();
        assert!(p.verify("Right-Pass1!".into(), phc.clone()).await.unwrap());
        assert!(!p.verify("wrong".into(), phc.clone()).await.unwrap());

        let held = p.hold_all().await.unwrap();
        let queued = tokio::spawn({
            let p = p.clone();
            let phc = phc.clone();
            async move { p.verify("Right-Pass1!".into(), phc).await }
        });
        // Wait until the queued call holds its admission permit.
        while p.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = p.verify("Right-Pass1!".into(), phc).await.unwrap_err();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.code(), "busy");
        drop(held);
        assert!(queued.await.unwrap().unwrap());
        let stats = p.stats();
        assert_eq!((stats.peak, stats.refused, stats.active), (1, 1, 0));
    }
}
