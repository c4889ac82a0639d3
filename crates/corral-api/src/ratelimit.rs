//! In-memory token-bucket rate limiter keyed by a string (client IP, account e-mail).
//! Each key may burst up to `capacity` requests and refills at `capacity` per minute.
//! Memory is bounded: idle, full buckets are dropped when the map grows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many keys, full (idle) buckets are swept out before inserting.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn per_minute(capacity: u32) -> Self {
        let capacity = f64::from(capacity.max(1));
        RateLimiter {
            capacity,
            per_second: capacity / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `Err(wait)` says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// How long until `key` has a token again, if it has none now; takes nothing.
    pub fn exhausted(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = refill(*buckets.get(key)?, now, self.capacity, self.per_second);
        (bucket.tokens < 1.0)
            .then(|| Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_ABOVE && !buckets.contains_key(key) {
            let (capacity, rate) = (self.capacity, self.per_second);
            buckets.retain(|_, b| refill(*b, now, capacity, rate).tokens < capacity);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.capacity,
            updated: now,
        });
        *bucket = refill(*bucket, now, self.capacity, self.per_second);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

fn refill(b: Bucket, now: Instant, capacity: f64, per_second: f64) -> Bucket {
    let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
    Bucket {
        tokens: (b.tokens + elapsed * per_second).min(capacity),
        updated: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_refill() {
        let limiter = RateLimiter::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("ip", t0).is_ok());
        }
        let wait = limiter.check_at("ip", t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            limiter.check_at("other", t0).is_ok(),
            "keys are independent"
        );
        assert!(limiter.check_at("ip", t0 + Duration::from_secs(20)).is_ok());
        assert!(limiter.exhausted("ip").is_some());
        assert!(limiter.exhausted("other").is_none());
        assert!(limiter.exhausted("never seen").is_none());
    }
}
