//! Per-user cap on gateway requests in flight, from admission until the answer's body
//! has been sent (or dropped): a user cannot hold more than their share of request
//! bodies, replica slots and streams at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct UserConcurrency {
    in_flight: Arc<Mutex<HashMap<Uuid, u32>>>,
}

/// One admitted request; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    in_flight: Arc<Mutex<HashMap<Uuid, u32>>>,
    user: Uuid,
}

impl UserConcurrency {
    /// Admits one more request of `user` if fewer than `limit` are in flight (0:
    /// unlimited). The limit is the caller's, so that a per-user quota can replace the
    /// server-wide setting.
    pub fn admit(&self, user: Uuid, limit: u32) -> Option<Permit> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let count = in_flight.entry(user).or_default();
        if limit != 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(Permit {
            in_flight: Arc::clone(&self.in_flight),
            user,
        })
    }

    #[cfg(test)]
    fn users(&self) -> usize {
        self.in_flight.lock().unwrap().len()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = in_flight.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                // Only users with requests in flight are kept.
                in_flight.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_per_user_and_release_on_drop() {
        let limits = UserConcurrency::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = limits.admit(a, 2).unwrap();
        let second = limits.admit(a, 2).unwrap();
        assert!(limits.admit(a, 2).is_none(), "a third at once is refused");
        assert!(limits.admit(b, 2).is_some(), "per user");
        drop(first);
        let third = limits.admit(a, 2).expect("a place was freed");
        drop((second, third));
        assert_eq!(limits.users(), 0, "nothing kept for idle users");
        assert!(limits.admit(a, 0).is_some(), "0: unlimited");
        assert!(limits.admit(b, 0).is_some());
    }
}
