//! `LruTtlCache`: an O(1) least-recently-used cache with per-entry TTL, stale windows, negative
//! entries and tags, bounded by entry count AND total bytes.
//!
//! Entries live in a slab (`Vec`) threaded by an intrusive doubly linked list (most recent at the
//! head) and indexed by a `hashbrown::HashTable` of slot numbers hashed by the slot's key (so each
//! key is stored once) with hashbrown's default, randomly seeded foldhash; a tag index maps each
//! tag to its entries. An entry's weight
//! is `key + value + tag bytes + ENTRY_OVERHEAD`.
//!
//! An entry is **fresh** until `expires_at`; then **stale** for `stale_while_revalidate_ms`
//! (served as STALE while one caller refreshes it), and usable for `stale_if_error_ms` only when
//! the caller says its origin failed. It is removed once past both windows: lazily on lookup, or
//! by the expiry sweep (`on_alarm`), which scans every entry (O(n), once per sweep interval, so
//! puts stay O(1) without a priority queue). `next_deadline()` may be early, never late.
//!
//! Every mutation returns what it removed and why, so the Durable Object deletes exactly those rows.

pub mod lease;
pub mod policy;
pub mod shard;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use serde::{Deserialize, Serialize};

use crate::{GatewayError, UnixMillis};

/// Bytes charged per entry on top of key, value and tags (metadata, index and list links).
pub const ENTRY_OVERHEAD: u64 = 64;

const NIL: usize = usize::MAX;

/// Why an entry left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictionCause {
    /// The entry cap was reached.
    Capacity,
    /// The byte cap was reached.
    Bytes,
    /// Its TTL and stale windows passed.
    Expired,
    /// It was replaced by a newer value for the same key.
    Replaced,
    /// It was deleted explicitly.
    Deleted,
    /// A purge by tag removed it.
    Purged,
}

/// A removed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The entry's key.
    pub key: String,
    /// Why it was removed.
    pub cause: EvictionCause,
}

/// An entry's metadata (persisted next to its value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// When it was stored.
    pub stored_at: UnixMillis,
    /// Fresh until this instant.
    pub expires_at: UnixMillis,
    /// Served stale (while one caller revalidates) this long after `expires_at`.
    pub stale_while_revalidate_ms: u64,
    /// Usable this long after `expires_at` when the origin fails.
    pub stale_if_error_ms: u64,
    /// A remembered "not found".
    pub negative: bool,
    /// Tags for purging.
    pub tags: Vec<String>,
}

impl EntryMeta {
    fn after(&self, ms: u64) -> UnixMillis {
        self.expires_at
            .plus_ms(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// End of the stale-while-revalidate window.
    pub fn stale_until(&self) -> UnixMillis {
        self.after(self.stale_while_revalidate_ms)
    }

    /// End of the stale-if-error window.
    pub fn error_until(&self) -> UnixMillis {
        self.after(self.stale_if_error_ms)
    }

    /// When the entry can be removed: no window uses it any more.
    pub fn evict_at(&self) -> UnixMillis {
        self.stale_until().max(self.error_until())
    }
}

/// How to store an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Time to live (fresh).
    pub ttl_ms: u64,
    /// Stale-while-revalidate window.
    pub stale_while_revalidate_ms: u64,
    /// Stale-if-error window.
    pub stale_if_error_ms: u64,
    /// A negative entry.
    pub negative: bool,
    /// Tags.
    pub tags: Vec<String>,
}

impl PutOptions {
    /// The metadata of an entry stored with these options at `now`.
    pub fn into_meta(self, now: UnixMillis) -> EntryMeta {
        EntryMeta {
            stored_at: now,
            expires_at: now.plus_ms(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX)),
            stale_while_revalidate_ms: self.stale_while_revalidate_ms,
            stale_if_error_ms: self.stale_if_error_ms,
            negative: self.negative,
            tags: self.tags,
        }
    }
}

/// The result of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a, V> {
    /// A fresh entry.
    Fresh {
        /// The value.
        value: &'a V,
        /// Its metadata.
        meta: &'a EntryMeta,
        /// Milliseconds since it was stored.
        age_ms: u64,
        /// Milliseconds until it goes stale.
        ttl_left_ms: u64,
    },
    /// Past its TTL, inside its stale-while-revalidate window: serve it and refresh it.
    Stale {
        /// The value.
        value: &'a V,
        /// Its metadata.
        meta: &'a EntryMeta,
        /// Milliseconds since it was stored.
        age_ms: u64,
    },
    /// Past its TTL, inside its stale-if-error window (only when the caller allowed it).
    StaleIfError {
        /// The value.
        value: &'a V,
        /// Its metadata.
        meta: &'a EntryMeta,
        /// Milliseconds since it was stored.
        age_ms: u64,
    },
    /// No entry.
    Miss,
    /// There is an entry but nothing the caller may use now.
    Expired,
}

/// Counters since the cache was built (the adapter persists what must survive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounters {
    /// Fresh hits.
    pub hits: u64,
    /// Stale hits (stale-while-revalidate and stale-if-error).
    pub stale_hits: u64,
    /// Misses, including expired lookups.
    pub misses: u64,
    /// Evictions because of the entry cap.
    pub evicted_capacity: u64,
    /// Evictions because of the byte cap.
    pub evicted_bytes: u64,
    /// Entries removed because every window passed.
    pub expired: u64,
    /// Entries removed by purges.
    pub purged: u64,
}

struct Slot<V> {
    key: String,
    value: Option<V>,
    meta: EntryMeta,
    weight: u64,
    prev: usize,
    next: usize,
}

/// An LRU cache with TTL and stale windows, bounded by entries and bytes. See the module docs.
pub struct LruTtlCache<V> {
    index: HashTable<usize>,
    hasher: DefaultHashBuilder,
    slots: Vec<Slot<V>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    tags: HashMap<String, HashSet<usize>>,
    earliest_evict: Option<UnixMillis>,
    max_entries: usize,
    max_bytes: u64,
    bytes: u64,
    counters: CacheCounters,
}

fn ms_between(later: UnixMillis, earlier: UnixMillis) -> u64 {
    u64::try_from(later.since(earlier)).unwrap_or(0)
}

impl<V> LruTtlCache<V> {
    /// An empty cache holding at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        LruTtlCache {
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            tags: HashMap::new(),
            earliest_evict: None,
            max_entries: max_entries.max(1),
            max_bytes,
            bytes: 0,
            counters: CacheCounters::default(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Total weight of all entries in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The counters.
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// The weight of an entry.
    pub fn weight_of(key: &str, value_len: u64, tags: &[String]) -> u64 {
        key.len() as u64
            + value_len
            + tags.iter().map(|t| t.len() as u64 + 1).sum::<u64>()
            + ENTRY_OVERHEAD
    }

    /// Looks `key` up at `now`, refreshing its recency when something usable is returned.
    /// `allow_stale_if_error`: the caller's origin failed, so the stale-if-error window applies.
    pub fn get(&mut self, key: &str, now: UnixMillis, allow_stale_if_error: bool) -> Lookup<'_, V> {
        let Some(slot) = self.find(key) else {
            self.counters.misses += 1;
            return Lookup::Miss;
        };
        // Fast path: fresh.
        if now < self.slots[slot].meta.expires_at {
            self.counters.hits += 1;
            self.detach(slot);
            self.push_front(slot);
            let s = &self.slots[slot];
            return match &s.value {
                Some(value) => Lookup::Fresh {
                    value,
                    meta: &s.meta,
                    age_ms: ms_between(now, s.meta.stored_at),
                    ttl_left_ms: ms_between(s.meta.expires_at, now),
                },
                None => Lookup::Miss,
            };
        }
        let meta = &self.slots[slot].meta;
        enum State {
            Fresh,
            Stale,
            StaleIfError,
            Unusable,
            Gone,
        }
        let state = if now < meta.expires_at {
            State::Fresh
        } else if now < meta.stale_until() {
            State::Stale
        } else if allow_stale_if_error && now < meta.error_until() {
            State::StaleIfError
        } else if now < meta.evict_at() {
            State::Unusable
        } else {
            State::Gone
        };
        match state {
            State::Gone => {
                self.remove_slot(slot);
                self.counters.misses += 1;
                self.counters.expired += 1;
                return Lookup::Expired;
            }
            State::Unusable => {
                self.counters.misses += 1;
                return Lookup::Expired;
            }
            State::Fresh => self.counters.hits += 1,
            State::Stale | State::StaleIfError => self.counters.stale_hits += 1,
        }
        self.detach(slot);
        self.push_front(slot);
        let s = &self.slots[slot];
        let Some(value) = &s.value else {
            return Lookup::Miss;
        };
        let age_ms = ms_between(now, s.meta.stored_at);
        match state {
            State::Fresh => Lookup::Fresh {
                value,
                meta: &s.meta,
                age_ms,
                ttl_left_ms: ms_between(s.meta.expires_at, now),
            },
            State::Stale => Lookup::Stale {
                value,
                meta: &s.meta,
                age_ms,
            },
            _ => Lookup::StaleIfError {
                value,
                meta: &s.meta,
                age_ms,
            },
        }
    }

    /// Stores `value` (of `value_len` bytes) under `key` at `now`, evicting least recently used
    /// entries until both caps hold. An entry heavier than the byte cap is refused (413).
    pub fn put(
        &mut self,
        key: String,
        value: V,
        value_len: u64,
        opts: PutOptions,
        now: UnixMillis,
    ) -> Result<Vec<Removed>, GatewayError> {
        self.insert_at(key, value, value_len, opts.into_meta(now))
    }

    /// Inserts an entry with explicit metadata (used to rebuild from storage: insert in
    /// least-recent-first order and the recency order is restored).
    pub fn insert_at(
        &mut self,
        key: String,
        value: V,
        value_len: u64,
        meta: EntryMeta,
    ) -> Result<Vec<Removed>, GatewayError> {
        let weight = Self::weight_of(&key, value_len, &meta.tags);
        if weight > self.max_bytes {
            return Err(GatewayError::PayloadTooLarge {
                limit: usize::try_from(
                    self.max_bytes
                        .saturating_sub(ENTRY_OVERHEAD + key.len() as u64),
                )
                .unwrap_or(usize::MAX),
            });
        }
        let mut removed = Vec::new();
        let hash = self.hasher.hash_one(key.as_str());
        if let Some(old) = self.find_hashed(hash, &key) {
            self.remove_slot(old);
            removed.push(Removed {
                key: key.clone(),
                cause: EvictionCause::Replaced,
            });
        }
        while self.index.len() >= self.max_entries || self.bytes + weight > self.max_bytes {
            let victim = self.tail;
            if victim == NIL {
                break;
            }
            let cause = if self.index.len() >= self.max_entries {
                self.counters.evicted_capacity += 1;
                EvictionCause::Capacity
            } else {
                self.counters.evicted_bytes += 1;
                EvictionCause::Bytes
            };
            let key = self.remove_slot(victim);
            removed.push(Removed { key, cause });
        }
        let evict_at = meta.evict_at();
        self.earliest_evict = Some(self.earliest_evict.map_or(evict_at, |e| e.min(evict_at)));
        let tags = meta.tags.clone();
        let slot = Slot {
            key,
            value: Some(value),
            meta,
            weight,
            prev: NIL,
            next: NIL,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.push_front(idx);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, idx, |&i| hasher.hash_one(slots[i].key.as_str()));
        for t in tags {
            self.tags.entry(t).or_default().insert(idx);
        }
        self.bytes += weight;
        Ok(removed)
    }

    /// Whether an entry (usable or not) is held for `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Removes `key`. Returns whether it was present.
    pub fn delete(&mut self, key: &str) -> bool {
        match self.find(key) {
            Some(slot) => {
                self.remove_slot(slot);
                true
            }
            None => false,
        }
    }

    /// Removes every entry carrying any of `tags`.
    pub fn purge_tags(&mut self, tags: &[String]) -> Vec<Removed> {
        let mut slots: Vec<usize> = tags
            .iter()
            .filter_map(|t| self.tags.get(t))
            .flat_map(|s| s.iter().copied())
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let removed: Vec<Removed> = slots
            .into_iter()
            .map(|s| Removed {
                key: self.remove_slot(s),
                cause: EvictionCause::Purged,
            })
            .collect();
        self.counters.purged += removed.len() as u64;
        removed
    }

    /// When the expiry sweep should next run (may be early, never late).
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.earliest_evict
    }

    /// Removes every entry no window uses any more at `now`; returns their keys.
    pub fn on_alarm(&mut self, now: UnixMillis) -> Vec<Removed> {
        let expired: Vec<usize> = self
            .index
            .iter()
            .copied()
            .filter(|&s| self.slots[s].meta.evict_at() <= now)
            .collect();
        let removed: Vec<Removed> = expired
            .into_iter()
            .map(|s| Removed {
                key: self.remove_slot(s),
                cause: EvictionCause::Expired,
            })
            .collect();
        self.counters.expired += removed.len() as u64;
        self.earliest_evict = self
            .index
            .iter()
            .map(|&s| self.slots[s].meta.evict_at())
            .min();
        removed
    }

    /// Keys from least to most recently used (for persisting recency).
    pub fn keys_lru_first(&self) -> Vec<&str> {
        let mut out = Vec::with_capacity(self.index.len());
        let mut cur = self.tail;
        while cur != NIL {
            out.push(self.slots[cur].key.as_str());
            cur = self.slots[cur].prev;
        }
        out
    }

    fn remove_slot(&mut self, slot: usize) -> String {
        self.detach(slot);
        let s = &mut self.slots[slot];
        let key = std::mem::take(&mut s.key);
        s.value = None;
        let tags = std::mem::take(&mut s.meta.tags);
        self.bytes -= s.weight;
        for t in tags {
            if let Some(set) = self.tags.get_mut(&t) {
                set.remove(&slot);
                if set.is_empty() {
                    self.tags.remove(&t);
                }
            }
        }
        let hash = self.hasher.hash_one(key.as_str());
        if let Ok(entry) = self.index.find_entry(hash, |&i| i == slot) {
            entry.remove();
        }
        self.free.push(slot);
        key
    }

    fn find(&self, key: &str) -> Option<usize> {
        self.find_hashed(self.hasher.hash_one(key), key)
    }

    fn find_hashed(&self, hash: u64, key: &str) -> Option<usize> {
        self.index
            .find(hash, |&i| self.slots[i].key == key)
            .copied()
    }

    fn detach(&mut self, slot: usize) {
        let (prev, next) = (self.slots[slot].prev, self.slots[slot].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next].prev = prev;
        }
        self.slots[slot].prev = NIL;
        self.slots[slot].next = NIL;
    }

    fn push_front(&mut self, slot: usize) {
        self.slots[slot].next = self.head;
        self.slots[slot].prev = NIL;
        if self.head != NIL {
            self.slots[self.head].prev = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }
}

/// Longest accepted TTL: one year.
pub const MAX_TTL_S: u64 = 31_536_000;

/// Reads `max-age` from a `Cache-Control` header value (directives are case-insensitive;
/// other directives are ignored). `Ok(None)` when absent; an invalid or out-of-range value
/// (0 or above [`MAX_TTL_S`]) is a 400.
pub fn parse_max_age(cache_control: &str) -> Result<Option<u64>, GatewayError> {
    for directive in cache_control.split(',') {
        let directive = directive.trim();
        let Some((name, value)) = directive.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("max-age") {
            continue;
        }
        let value = value.trim().trim_matches('"');
        return match value.parse::<u64>() {
            Ok(v) if (1..=MAX_TTL_S).contains(&v) => Ok(Some(v)),
            _ => Err(GatewayError::bad_request(
                "invalid-ttl",
                format!("Cache-Control max-age must be an integer in 1..={MAX_TTL_S}"),
            )),
        };
    }
    Ok(None)
}
