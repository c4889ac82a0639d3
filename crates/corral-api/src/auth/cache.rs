//! The credential cache: API key (by hash) → its owner, and user id → user row, held for
//! a few seconds so that a burst of gateway calls costs no store round trip per request.
//!
//! Freshness rests on one assumption: every change that can make a cached answer wrong
//! (a key revoked, a user disabled, locked, deleted, given another role or another
//! password) is made through the management API of this same server process, by a
//! non-GET request under `/api/`. `invalidate_on_change` clears the whole cache after
//! every such request that was not refused (a 4xx changes nothing), before its answer
//! reaches the client, so a revoked key is refused on the very next request. Changes
//! made elsewhere (another `corral serve` on the same store, or SQL by hand) take effect
//! after at most `TTL`: one second, so that with several servers a logout, a revoked
//! key or a locked user is refused everywhere within about a second. (This is the TTL
//! design, not invalidation: a change feed between servers could later clear the
//! caches at once and allow a longer TTL.)
//!
//! A lookup that raced with a change cannot put the old answer back: entries are only
//! stored if no invalidation happened since the lookup began (`generation`).
//!
//! Unknown API keys are remembered too (by hash, for `UNKNOWN_TTL`), so that a client
//! repeating a bogus `crl_` key costs no store read per call. A key created later has
//! another hash (keys are random), and its creation clears the cache anyway.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use corral_core::User;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::state::AppState;

/// How long an entry is trusted without asking the store again: the delay for changes
/// made outside this process.
pub const TTL: Duration = Duration::from_secs(1);

/// How long an API key the store does not know is answered 401 without asking again.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(5);

/// Entries beyond this are not kept (the cache starts over), so that a flood of distinct
/// users cannot grow it without bound.
const MAX_ENTRIES: usize = 10_000;

/// What the cache knows of an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedKey {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Entries {
    /// Bumped by every invalidation.
    generation: u64,
    keys: HashMap<String, (CachedKey, Instant)>,
    users: HashMap<Uuid, (User, Instant)>,
    /// Hashes of API keys the store did not have.
    unknown: HashMap<String, Instant>,
    /// Logins (session families) and whether they were live.
    sessions: HashMap<Uuid, (bool, Instant)>,
}

impl Entries {
    fn clear(&mut self) {
        self.keys.clear();
        self.users.clear();
        self.unknown.clear();
        self.sessions.clear();
    }
}

#[derive(Default)]
pub struct AuthCache {
    entries: RwLock<Entries>,
}

impl AuthCache {
    /// Taken before a store lookup and handed to `put_*`, which then store nothing if
    /// the cache was invalidated in between.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    pub fn key(&self, key_hash: &str) -> Option<CachedKey> {
        let entries = self.read();
        let (key, at) = entries.keys.get(key_hash)?;
        (at.elapsed() < TTL).then_some(*key)
    }

    /// Whether `key_hash` was recently looked up and not found.
    pub fn unknown_key(&self, key_hash: &str) -> bool {
        let entries = self.read();
        entries
            .unknown
            .get(key_hash)
            .is_some_and(|at| at.elapsed() < UNKNOWN_TTL)
    }

    pub fn put_unknown_key(&self, generation: u64, key_hash: &str) {
        self.put(generation, |e| {
            e.unknown.insert(key_hash.to_string(), Instant::now());
        });
    }

    pub fn user(&self, id: Uuid) -> Option<User> {
        let entries = self.read();
        let (user, at) = entries.users.get(&id)?;
        (at.elapsed() < TTL).then(|| user.clone())
    }

    /// Whether the login `family` was live when last read.
    pub fn session(&self, family: Uuid) -> Option<bool> {
        let entries = self.read();
        let (live, at) = entries.sessions.get(&family)?;
        (at.elapsed() < TTL).then_some(*live)
    }

    pub fn put_session(&self, generation: u64, family: Uuid, live: bool) {
        self.put(generation, |e| {
            e.sessions.insert(family, (live, Instant::now()));
        });
    }

    pub fn put_key(&self, generation: u64, key_hash: &str, key: CachedKey) {
        self.put(generation, |e| {
            e.keys.insert(key_hash.to_string(), (key, Instant::now()));
        });
    }

    pub fn put_user(&self, generation: u64, user: &User) {
        self.put(generation, |e| {
            e.users.insert(user.id, (user.clone(), Instant::now()));
        });
    }

    fn put(&self, generation: u64, insert: impl FnOnce(&mut Entries)) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.generation != generation {
            return;
        }
        let held = entries.keys.len() + entries.users.len() + entries.unknown.len();
        if held + entries.sessions.len() >= MAX_ENTRIES {
            entries.clear();
        }
        insert(&mut entries);
    }

    /// Forgets everything.
    pub fn invalidate(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.generation += 1;
        entries.clear();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Clears the credential cache after every request that may have changed a user or a key
/// (any method but GET, HEAD and OPTIONS under `/api/`, unless refused with a 4xx: a
/// refused request changes nothing, and unauthenticated floods must not empty the
/// cache): changes are rare next to gateway calls, so forgetting everything is cheaper
/// than knowing which handler changed what, and a handler added later cannot forget to
/// do it. A 5xx may have changed something before failing, so it clears too.
pub async fn invalidate_on_change(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) && request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    if changes && !response.status().is_client_error() {
        state.auth_cache.invalidate();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::Role;

    fn key() -> CachedKey {
        CachedKey {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            expires_at: None,
        }
    }

    #[test]
    fn invalidation_clears_and_refuses_stale_inserts() {
        let cache = AuthCache::default();
        let k = key();
        let user = User::new("a@example.com", "x".into(), Role::User, Utc::now());
        let generation = cache.generation();
        cache.put_key(generation, "h1", k);
        cache.put_user(generation, &user);
        assert_eq!(cache.key("h1"), Some(k));
        assert_eq!(cache.user(user.id).map(|u| u.id), Some(user.id));

        // A lookup begins, a change lands, then the lookup tries to store its answer.
        let before_change = cache.generation();
        cache.invalidate();
        assert_eq!(cache.key("h1"), None);
        assert!(cache.user(user.id).is_none());
        cache.put_key(before_change, "h1", k);
        assert_eq!(cache.key("h1"), None, "a stale answer is not stored");
        cache.put_key(cache.generation(), "h1", k);
        assert_eq!(cache.key("h1"), Some(k));
    }

    #[test]
    fn unknown_keys_are_remembered_until_a_change() {
        let cache = AuthCache::default();
        let before = cache.generation();
        cache.put_unknown_key(before, "bogus");
        assert!(cache.unknown_key("bogus"));
        assert!(!cache.unknown_key("other"));
        cache.invalidate();
        assert!(
            !cache.unknown_key("bogus"),
            "a change (a key created) clears it"
        );
        cache.put_unknown_key(before, "bogus");
        assert!(
            !cache.unknown_key("bogus"),
            "a lookup older than the change is not kept"
        );
    }

    #[test]
    fn bounded() {
        let cache = AuthCache::default();
        let generation = cache.generation();
        for i in 0..MAX_ENTRIES + 5 {
            cache.put_key(generation, &i.to_string(), key());
        }
        assert!(cache.read().keys.len() <= MAX_ENTRIES);
        assert!(cache.key(&(MAX_ENTRIES + 4).to_string()).is_some());
    }
}
