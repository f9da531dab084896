//! The validator's token cache: a bounded map from token hash to what is
//! known about the token, each entry with its own lifetime.
//!
//! Built for a small footprint — one hash-table slot per token (half its
//! hash, its expiry and the value, an `Arc` of the token's facts) and nothing
//! else: no per-entry bookkeeping nodes, no queue (moka, used before, kept
//! about 400 bytes of its own per entry). Reads take one shard's mutex for
//! a hash-table probe. Bounds:
//! - an entry is never returned past its lifetime (it is dropped when
//!   found expired);
//! - a shard that is full first drops its expired entries, then, if still
//!   three quarters full, the quarter expiring soonest (estimated from a
//!   sample of its entries: the table's order is random, its hasher being
//!   keyed per process), so the cost of making room is spread over the
//!   quarter of inserts that follow it.

use std::{
    collections::HashMap,
    hash::RandomState,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use crate::domain::records::TokenHash;

/// Shards of a cache big enough to be worth splitting.
const SHARDS: usize = 16;
/// Entries sampled to estimate which quarter of a shard expires soonest.
const SAMPLE: usize = 64;

/// A bounded, sharded map from token hash to `V` with a lifetime per entry.
pub(super) struct TokenCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    /// Most entries of one shard.
    shard_capacity: usize,
    /// The origin of expiry times.
    started: Instant,
}

struct Shard<V> {
    map: HashMap<Key, Slot<V>, RandomState>,
}

/// The first 128 bits of a token's SHA-256: 16 bytes a slot, not 32. Two
/// tokens whose hashes share them are as hard to find as a 128-bit
/// second preimage of SHA-256 (the database lookup still compares the
/// whole hash).
type Key = [u8; 16];

fn key_of(hash: &TokenHash) -> Key {
    let mut key = [0_u8; 16];
    key.copy_from_slice(&hash.0[..16]);
    key
}

struct Slot<V> {
    /// Milliseconds after `started` when the entry expires.
    expires: u64,
    value: V,
}

impl<V: Clone> TokenCache<V> {
    /// A cache of at most about `capacity` entries (0: it keeps nothing).
    pub(super) fn new(capacity: u64) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        let shards = if capacity >= 64 * SHARDS { SHARDS } else { 1 };
        let shard_capacity = capacity.div_ceil(shards);
        let random = RandomState::new();
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard { map: HashMap::with_hasher(random.clone()) }))
                .collect(),
            shard_capacity,
            started: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard<V>> {
        // A token hash is a SHA-256 output: its first byte is as good a
        // shard index as any (and uneven shards only evict sooner).
        let index = usize::from(key[0]) % self.shards.len();
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key`, unless absent or expired.
    pub(super) fn get(&self, hash: &TokenHash) -> Option<V> {
        let key = key_of(hash);
        let now = self.now();
        let mut shard = self.shard(&key);
        let slot = shard.map.get(&key)?;
        if slot.expires > now {
            return Some(slot.value.clone());
        }
        shard.map.remove(&key);
        None
    }

    /// Keeps `value` for `key` during `ttl`, making room when full.
    pub(super) fn insert(&self, hash: TokenHash, value: V, ttl: Duration) {
        let key = key_of(&hash);
        if self.shard_capacity == 0 {
            return;
        }
        let now = self.now();
        let expires = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut shard = self.shard(&key);
        if shard.map.len() >= self.shard_capacity && !shard.map.contains_key(&key) {
            shard.make_room(now, self.shard_capacity);
        }
        shard.map.insert(key, Slot { expires, value });
    }

    /// Drops the entry of `key`.
    pub(super) fn remove(&self, hash: &TokenHash) {
        let key = key_of(hash);
        self.shard(&key).map.remove(&key);
    }

    /// Drops every entry whose value `forget` says so of.
    pub(super) fn forget_if(&self, forget: impl Fn(&V) -> bool) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.map.retain(|_, slot| !forget(&slot.value));
        }
    }

    /// Drops everything.
    pub(super) fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(PoisonError::into_inner).map.clear();
        }
    }

    /// Entries held, expired ones not yet dropped included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len()).sum()
    }
}

impl<V> Shard<V> {
    /// Frees at least one place (see the module docs).
    fn make_room(&mut self, now: u64, capacity: usize) {
        self.map.retain(|_, slot| slot.expires > now);
        if self.map.len() * 4 <= capacity * 3 {
            return;
        }
        let mut sample: Vec<u64> = self.map.values().take(SAMPLE).map(|slot| slot.expires).collect();
        sample.sort_unstable();
        let threshold = sample[sample.len() / 4];
        self.map.retain(|_, slot| slot.expires > threshold);
        // Every sampled expiry may be the same: drop arbitrary entries.
        let excess = (self.map.len() + 1).saturating_sub(capacity);
        if excess > 0 {
            let doomed: Vec<Key> = self.map.keys().take(excess).copied().collect();
            for key in doomed {
                self.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> TokenHash {
        let mut hash = [0_u8; 32];
        hash[..4].copy_from_slice(&i.to_le_bytes());
        hash[4] = u8::try_from(i % 251).unwrap();
        TokenHash(hash)
    }

    #[test]
    fn entries_live_their_lifetime_only() {
        let cache = TokenCache::new(10);
        cache.insert(key(1), 1, Duration::from_mins(1));
        cache.insert(key(2), 2, Duration::ZERO);
        assert_eq!(cache.get(&key(1)), Some(1));
        assert_eq!(cache.get(&key(2)), None);
        assert_eq!(cache.get(&key(3)), None);
        assert_eq!(cache.len(), 1, "an expired entry found is dropped");
    }

    #[test]
    fn the_capacity_bounds_the_entries_and_expired_ones_go_first() {
        for capacity in [1_u32, 7, 100, 5000] {
            let cache = TokenCache::new(u64::from(capacity));
            for i in 0..capacity * 3 {
                cache.insert(key(i), i, Duration::from_secs(u64::from(i) + 1));
                assert!(cache.len() <= usize::try_from(capacity).unwrap().next_multiple_of(SHARDS));
            }
            let last = capacity * 3 - 1;
            assert_eq!(cache.get(&key(last)), Some(last), "the newest entry is kept");
        }
        let cache = TokenCache::new(4);
        for i in 0..3 {
            cache.insert(key(i), i, Duration::from_mins(1));
        }
        cache.insert(key(3), 3, Duration::ZERO);
        cache.insert(key(4), 4, Duration::from_mins(1));
        for i in 0..3 {
            assert_eq!(cache.get(&key(i)), Some(i), "an expired entry makes room first");
        }
    }

    #[test]
    fn nothing_is_kept_at_capacity_zero_and_forgetting_works() {
        let cache = TokenCache::new(0);
        cache.insert(key(1), 1, Duration::from_mins(1));
        assert_eq!(cache.get(&key(1)), None);
        let cache = TokenCache::new(100_000);
        for i in 0..1000 {
            cache.insert(key(i), i, Duration::from_mins(1));
        }
        cache.forget_if(|value| value % 2 == 0);
        assert_eq!(cache.get(&key(2)), None);
        assert_eq!(cache.get(&key(3)), Some(3));
        assert_eq!(cache.len(), 500);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
