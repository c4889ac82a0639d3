//! Per-user gateway limits: requests per minute and tokens per minute, as token buckets
//! that refill continuously (a full minute's budget is also the burst).
//!
//! Requests are counted when admitted. Tokens are only known when a request ends (from
//! its usage), so they are charged then, and the bucket may go below zero: a spent budget
//! refuses the *next* requests until it has refilled above zero.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Above this many users, full (idle) buckets are swept out before inserting.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct UserLimits {
    requests_per_minute: f64,
    tokens_per_minute: f64,
    buckets: Mutex<HashMap<Uuid, Buckets>>,
}

#[derive(Debug, Clone, Copy)]
struct Buckets {
    requests: f64,
    tokens: f64,
    updated: Instant,
}

/// Which limit refused a request, and how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    Requests(Duration),
    Tokens(Duration),
}

impl UserLimits {
    /// 0 disables a limit.
    pub fn new(requests_per_minute: u32, tokens_per_minute: u32) -> Self {
        UserLimits {
            requests_per_minute: f64::from(requests_per_minute),
            tokens_per_minute: f64::from(tokens_per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request of `user`, or says which limit refuses it.
    pub fn admit(&self, user: Uuid) -> Result<(), Refusal> {
        self.admit_at(user, Instant::now())
    }

    /// Charges the tokens a finished request used.
    pub fn charge(&self, user: Uuid, tokens: u64) {
        self.charge_at(user, tokens, Instant::now());
    }

    fn admit_at(&self, user: Uuid, now: Instant) -> Result<(), Refusal> {
        if self.requests_per_minute == 0.0 && self.tokens_per_minute == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = self.bucket(&mut buckets, user, now);
        if self.tokens_per_minute > 0.0 && b.tokens <= 0.0 {
            // Until the bucket holds at least one token again.
            let wait = (1.0 - b.tokens) / (self.tokens_per_minute / 60.0);
            return Err(Refusal::Tokens(Duration::from_secs_f64(wait)));
        }
        if self.requests_per_minute > 0.0 {
            if b.requests < 1.0 {
                let wait = (1.0 - b.requests) / (self.requests_per_minute / 60.0);
                return Err(Refusal::Requests(Duration::from_secs_f64(wait)));
            }
            b.requests -= 1.0;
        }
        Ok(())
    }

    fn charge_at(&self, user: Uuid, tokens: u64, now: Instant) {
        if self.tokens_per_minute == 0.0 || tokens == 0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.bucket(&mut buckets, user, now).tokens -= tokens as f64;
    }

    /// The user's buckets, refilled up to `now`.
    fn bucket<'a>(
        &self,
        buckets: &'a mut HashMap<Uuid, Buckets>,
        user: Uuid,
        now: Instant,
    ) -> &'a mut Buckets {
        if buckets.len() >= SWEEP_ABOVE && !buckets.contains_key(&user) {
            buckets.retain(|_, b| {
                let b = self.refill(*b, now);
                b.requests < self.requests_per_minute || b.tokens < self.tokens_per_minute
            });
        }
        let b = buckets.entry(user).or_insert(Buckets {
            requests: self.requests_per_minute,
            tokens: self.tokens_per_minute,
            updated: now,
        });
        *b = self.refill(*b, now);
        b
    }

    fn refill(&self, b: Buckets, now: Instant) -> Buckets {
        let minutes = now.saturating_duration_since(b.updated).as_secs_f64() / 60.0;
        Buckets {
            requests: (b.requests + minutes * self.requests_per_minute)
                .min(self.requests_per_minute),
            tokens: (b.tokens + minutes * self.tokens_per_minute).min(self.tokens_per_minute),
            updated: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_burst_then_refill() {
        let limits = UserLimits::new(3, 0);
        let (user, t0) = (Uuid::now_v7(), Instant::now());
        for _ in 0..3 {
            assert_eq!(limits.admit_at(user, t0), Ok(()));
        }
        let Err(Refusal::Requests(wait)) = limits.admit_at(user, t0) else {
            panic!("the 4th request must be refused");
        };
        assert_eq!(wait, Duration::from_secs(20));
        assert_eq!(limits.admit_at(Uuid::now_v7(), t0), Ok(()), "per user");
        assert_eq!(limits.admit_at(user, t0 + Duration::from_secs(20)), Ok(()));
    }

    #[test]
    fn spent_tokens_refuse_the_next_request() {
        let limits = UserLimits::new(0, 600);
        let (user, t0) = (Uuid::now_v7(), Instant::now());
        assert_eq!(limits.admit_at(user, t0), Ok(()));
        // One request may overdraw the budget; it is only known when it ends.
        limits.charge_at(user, 700, t0);
        let Err(Refusal::Tokens(wait)) = limits.admit_at(user, t0) else {
            panic!("an overdrawn budget must refuse");
        };
        // 101 tokens to refill at 10 per second.
        assert_eq!(wait, Duration::from_secs_f64(10.1));
        assert_eq!(limits.admit_at(user, t0 + Duration::from_secs(11)), Ok(()));
    }

    #[test]
    fn zero_is_unlimited() {
        let limits = UserLimits::new(0, 0);
        let user = Uuid::now_v7();
        limits.charge(user, u64::MAX);
        for _ in 0..1000 {
            assert_eq!(limits.admit(user), Ok(()));
        }
    }
}
