//! Branch API keys found live in the last second, so that a busy integration's requests do
//! not each look their key up in the database.
//!
//! Measured on PostgreSQL, the key's lookup was the one transaction every sale still paid
//! on its own once the pipeline's writes were batched. An integration signing tens of sales
//! a second through one key now looks it up about once a second.
//!
//! What a cached key means for revocation: a key revoked through this server's admin API
//! stops at once (the route forgets it here); one revoked by `ushuru admin key revoke` or
//! through another replica stops within [`KEY_CACHE_TTL`]. A lookup that was under way when
//! this server revoked a key puts nothing into the cache. Only keys found live are kept,
//! under the SHA-256 of what was presented (never the key itself), so unknown keys always
//! reach the database and the authentication throttle, and the cache holds at most one
//! entry per live key that was used.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use ushuru_store::ApiKey;

/// How long a key found live is taken as live without looking again.
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Past this many entries, the expired ones are dropped (and, if that is not enough, all).
const PRUNE_AT: usize = 10_000;

/// The cache. Time comes from the request clock, so tests drive expiry; a clock that went
/// back counts as expired.
pub struct KeyCache {
    ttl: chrono::Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// Moves on with every revocation: a lookup that began before one may not put what it
    /// found (the key it found live may be the one just revoked).
    revocations: u64,
}

/// When a lookup began, as [`KeyCache::put`] needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(u64);

struct Entry {
    key: ApiKey,
    found_at: DateTime<Utc>,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache::new(KEY_CACHE_TTL)
    }
}

impl KeyCache {
    pub fn new(ttl: std::time::Duration) -> Self {
        KeyCache {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero()),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Taken before looking a key up in the store, and given back to [`KeyCache::put`].
    pub fn generation(&self) -> Generation {
        Generation(self.lock().revocations)
    }

    fn digest(presented: &str) -> [u8; 32] {
        Sha256::digest(presented.as_bytes()).into()
    }

    fn fresh(&self, found_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        found_at <= now && now < found_at + self.ttl
    }

    /// The key `presented` is, if it was found live less than the TTL ago.
    pub fn get(&self, presented: &str, now: DateTime<Utc>) -> Option<ApiKey> {
        self.lock()
            .entries
            .get(&Self::digest(presented))
            .filter(|entry| self.fresh(entry.found_at, now))
            .map(|entry| entry.key.clone())
    }

    /// Remembers that `presented` is the live key `key`, as of `now`, unless a key was
    /// revoked since the lookup that found it began (`since`).
    pub fn put(&self, presented: &str, key: &ApiKey, now: DateTime<Utc>, since: Generation) {
        if self.ttl <= chrono::Duration::zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.revocations != since.0 {
            return;
        }
        let entries = &mut inner.entries;
        if entries.len() >= PRUNE_AT {
            entries.retain(|_, entry| self.fresh(entry.found_at, now));
            if entries.len() >= PRUNE_AT {
                entries.clear();
            }
        }
        entries.insert(
            Self::digest(presented),
            Entry {
                key: key.clone(),
                found_at: now,
            },
        );
    }

    /// Forgets the key with this id (it was just revoked), and keeps lookups that began
    /// before from putting it back.
    pub fn forget(&self, key_id: i64) {
        let mut inner = self.lock();
        inner.revocations = inner.revocations.wrapping_add(1);
        inner.entries.retain(|_, entry| entry.key.id != key_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ushuru_store::{BranchId, Scope, TenantId};

    fn key(id: i64) -> ApiKey {
        ApiKey {
            id,
            scope: Scope {
                tenant: TenantId(1),
                branch: BranchId(2),
            },
            prefix: "ush_abcdefgh".into(),
            name: "till".into(),
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + seconds, 0).unwrap_or_default()
    }

    #[test]
    fn a_key_is_kept_for_the_ttl_and_no_longer() {
        let cache = KeyCache::new(std::time::Duration::from_secs(1));
        assert_eq!(cache.get("ush_secret", at(0)), None);
        cache.put("ush_secret", &key(7), at(0), cache.generation());
        assert_eq!(cache.get("ush_secret", at(0)), Some(key(7)));
        assert_eq!(cache.get("ush_other", at(0)), None);
        assert_eq!(cache.get("ush_secret", at(1)), None, "expired");
        assert_eq!(cache.get("ush_secret", at(-1)), None, "the clock went back");
    }

    #[test]
    fn a_revoked_key_is_forgotten_at_once() {
        let cache = KeyCache::default();
        cache.put("ush_a", &key(7), at(0), cache.generation());
        cache.put("ush_b", &key(8), at(0), cache.generation());
        cache.forget(7);
        assert_eq!(cache.get("ush_a", at(0)), None);
        assert_eq!(cache.get("ush_b", at(0)), Some(key(8)));
    }

    #[test]
    fn a_lookup_that_began_before_a_revocation_puts_nothing() {
        let cache = KeyCache::default();
        let before = cache.generation();
        // The lookup finds key 7 live; meanwhile it is revoked and forgotten.
        cache.forget(7);
        cache.put("ush_a", &key(7), at(0), before);
        assert_eq!(cache.get("ush_a", at(0)), None);
        // A lookup that began after it may.
        cache.put("ush_a", &key(8), at(0), cache.generation());
        assert_eq!(cache.get("ush_a", at(0)), Some(key(8)));
    }

    #[test]
    fn a_zero_ttl_keeps_nothing_and_the_size_is_bounded() {
        let off = KeyCache::new(std::time::Duration::ZERO);
        off.put("ush_a", &key(7), at(0), off.generation());
        assert_eq!(off.get("ush_a", at(0)), None);
        let cache = KeyCache::default();
        for i in 0..PRUNE_AT {
            cache.put(&format!("ush_{i}"), &key(1), at(0), cache.generation());
        }
        cache.put("ush_last", &key(2), at(5), cache.generation());
        assert_eq!(cache.lock().entries.len(), 1, "the expired entries went");
    }
}
