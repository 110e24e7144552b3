//! The verified tokens remembered until they expire, so that a token seen before verifies
//! without cryptography.
//!
//! Keyed by the whole token (never a prefix: two tokens that share a header and claims but
//! differ in the signature are two keys). Each entry remembers the key that verified it; an
//! entry is served only while that very key is still published (see `KeyTable`), and never
//! past the token's `exp` plus the allowed skew. Sharded read-write locks: a hit takes one
//! shared lock. When a shard is full, expired entries go first, then an arbitrary one.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, RwLock};

use super::Principal;
use super::keys::VerifyKey;

const SHARDS: usize = 16;

type Shard = HashMap<Arc<str>, Entry, foldhash::fast::RandomState>;

pub(crate) struct Entry {
    pub(crate) principal: Principal,
    pub(crate) kid: Arc<str>,
    pub(crate) key: Arc<VerifyKey>,
}

pub(crate) struct Cache {
    shards: Vec<RwLock<Shard>>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        let shards = if capacity == 0 { 0 } else { SHARDS };
        Self {
            shards: (0..shards)
                .map(|_| RwLock::new(Shard::with_hasher(Default::default())))
                .collect(),
            per_shard,
            hasher: Default::default(),
        }
    }

    fn shard(&self, token: &str) -> Option<&RwLock<Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        let index = self.hasher.hash_one(token) as usize % self.shards.len();
        self.shards.get(index)
    }

    /// Runs `read` on the entry of `token`, if there is one.
    pub(crate) fn with<T>(&self, token: &str, read: impl FnOnce(&Entry) -> T) -> Option<T> {
        let shard = self.shard(token)?.read().unwrap_or_else(|e| e.into_inner());
        shard.get(token).map(read)
    }

    pub(crate) fn remove(&self, token: &str) {
        if let Some(shard) = self.shard(token) {
            shard
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(token);
        }
    }

    /// Remembers a verified token; `now` and `skew` (seconds) decide which entries are expired
    /// when the shard is full.
    pub(crate) fn insert(&self, entry: Entry, now: i64, skew: i64) {
        let Some(shard) = self.shard(&entry.principal.token) else {
            return;
        };
        let mut shard = shard.write().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&entry.principal.token) {
            shard.retain(|_, e| e.principal.expires_at.saturating_add(skew) >= now);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().cloned()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(entry.principal.token.clone(), entry);
    }
}
