//! `LruTtlCache`: an O(1) least-recently-used cache with per-entry TTL, bounded by entry count
//! AND total bytes.
//!
//! Entries live in a slab (`Vec`) threaded by an intrusive doubly linked list (most recent at the
//! head) and indexed by a `HashMap`. A `BTreeSet` of `(expires_at, slot)` gives the next expiry in
//! O(log n) for the alarm. An entry's weight is `key bytes + value bytes + ENTRY_OVERHEAD`.
//!
//! Every mutation returns what it removed and why, so the Durable Object can delete exactly those
//! rows from SQLite.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::{GatewayError, UnixMillis};

/// Bytes charged per entry on top of key and value (metadata, index and list links).
pub const ENTRY_OVERHEAD: u64 = 64;

const NIL: usize = usize::MAX;

/// Why an entry left the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvictionCause {
    /// The entry cap was reached.
    Capacity,
    /// The byte cap was reached.
    Bytes,
    /// Its TTL passed.
    Expired,
    /// It was replaced by a newer value for the same key.
    Replaced,
    /// It was deleted explicitly.
    Deleted,
}

/// A removed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The entry's key.
    pub key: String,
    /// Why it was removed.
    pub cause: EvictionCause,
}

/// The result of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a, V> {
    /// A fresh entry.
    Hit {
        /// The value.
        value: &'a V,
        /// Milliseconds since it was stored.
        age_ms: u64,
        /// Milliseconds until it expires.
        ttl_left_ms: u64,
    },
    /// No entry.
    Miss,
    /// There was an entry but its TTL had passed; it has been removed.
    Expired,
}

/// Counters since the cache was built (in-memory; the adapter persists what must survive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheCounters {
    /// Fresh hits.
    pub hits: u64,
    /// Misses, including expired lookups.
    pub misses: u64,
    /// Evictions because of the entry cap.
    pub evicted_capacity: u64,
    /// Evictions because of the byte cap.
    pub evicted_bytes: u64,
    /// Entries removed because their TTL passed.
    pub expired: u64,
}

struct Slot<V> {
    key: String,
    value: Option<V>,
    weight: u64,
    stored_at: UnixMillis,
    expires_at: UnixMillis,
    prev: usize,
    next: usize,
}

/// An LRU cache with TTL, bounded by entries and bytes. See the module docs.
pub struct LruTtlCache<V> {
    index: HashMap<String, usize>,
    slots: Vec<Slot<V>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
    expiries: BTreeSet<(UnixMillis, usize)>,
    max_entries: usize,
    max_bytes: u64,
    bytes: u64,
    counters: CacheCounters,
}

impl<V> LruTtlCache<V> {
    /// An empty cache holding at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        LruTtlCache {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            expiries: BTreeSet::new(),
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

    /// The weight an entry with this key and value size is charged.
    pub fn weight_of(key: &str, value_len: u64) -> u64 {
        key.len() as u64 + value_len + ENTRY_OVERHEAD
    }

    /// Looks `key` up at `now`, refreshing its recency on a hit.
    pub fn get(&mut self, key: &str, now: UnixMillis) -> Lookup<'_, V> {
        let Some(&slot) = self.index.get(key) else {
            self.counters.misses += 1;
            return Lookup::Miss;
        };
        if self.slots[slot].expires_at <= now {
            self.remove_slot(slot);
            self.counters.misses += 1;
            self.counters.expired += 1;
            return Lookup::Expired;
        }
        self.detach(slot);
        self.push_front(slot);
        self.counters.hits += 1;
        let s = &self.slots[slot];
        match &s.value {
            Some(value) => Lookup::Hit {
                value,
                age_ms: u64::try_from(now.since(s.stored_at)).unwrap_or(0),
                ttl_left_ms: u64::try_from(s.expires_at.since(now)).unwrap_or(0),
            },
            None => Lookup::Miss,
        }
    }

    /// Whether `key` is present and fresh, without touching recency or counters.
    pub fn contains_fresh(&self, key: &str, now: UnixMillis) -> bool {
        self.index
            .get(key)
            .is_some_and(|&s| self.slots[s].expires_at > now)
    }

    /// Stores `value` (of `value_len` bytes) under `key` for `ttl_ms`, evicting least recently
    /// used entries until both caps hold. An entry heavier than the byte cap is refused.
    pub fn put(
        &mut self,
        key: String,
        value: V,
        value_len: u64,
        ttl_ms: u64,
        now: UnixMillis,
    ) -> Result<Vec<Removed>, GatewayError> {
        let expires_at = now.plus_ms(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
        self.insert_at(key, value, value_len, now, expires_at)
    }

    /// Inserts an entry with explicit timestamps (used to rebuild from storage: insert in
    /// least-recent-first order and the recency order is restored).
    pub fn insert_at(
        &mut self,
        key: String,
        value: V,
        value_len: u64,
        stored_at: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<Vec<Removed>, GatewayError> {
        let weight = Self::weight_of(&key, value_len);
        if weight > self.max_bytes {
            return Err(GatewayError::PayloadTooLarge {
                limit: usize::try_from(self.max_bytes.saturating_sub(ENTRY_OVERHEAD))
                    .unwrap_or(usize::MAX),
            });
        }
        let mut removed = Vec::new();
        if let Some(&old) = self.index.get(&key) {
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
        let slot = Slot {
            key: key.clone(),
            value: Some(value),
            weight,
            stored_at,
            expires_at,
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
        self.index.insert(key, idx);
        self.expiries.insert((expires_at, idx));
        self.bytes += weight;
        Ok(removed)
    }

    /// Removes `key`. Returns whether it was present.
    pub fn delete(&mut self, key: &str) -> bool {
        match self.index.get(key) {
            Some(&slot) => {
                self.remove_slot(slot);
                true
            }
            None => false,
        }
    }

    /// The earliest expiry among the entries: when the expiry sweep should next run.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Removes every entry whose TTL has passed at `now`; returns their keys.
    pub fn on_alarm(&mut self, now: UnixMillis) -> Vec<Removed> {
        let mut removed = Vec::new();
        while let Some(&(t, slot)) = self.expiries.first() {
            if t > now {
                break;
            }
            let key = self.remove_slot(slot);
            self.counters.expired += 1;
            removed.push(Removed {
                key,
                cause: EvictionCause::Expired,
            });
        }
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
        self.bytes -= s.weight;
        self.expiries.remove(&(s.expires_at, slot));
        self.index.remove(&key);
        self.free.push(slot);
        key
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> UnixMillis {
        UnixMillis(ms)
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut c = LruTtlCache::new(2, 1 << 20);
        c.put("a".into(), 1, 1, 1000, t(0)).unwrap();
        c.put("b".into(), 2, 1, 1000, t(0)).unwrap();
        assert!(matches!(c.get("a", t(1)), Lookup::Hit { value: 1, .. }));
        let removed = c.put("c".into(), 3, 1, 1000, t(2)).unwrap();
        assert_eq!(
            removed,
            vec![Removed {
                key: "b".into(),
                cause: EvictionCause::Capacity
            }]
        );
        assert_eq!(c.keys_lru_first(), vec!["a", "c"]);
    }

    #[test]
    fn byte_cap_holds_and_oversize_entries_are_refused() {
        let cap = 3 * LruTtlCache::<()>::weight_of("k0", 10);
        let mut c = LruTtlCache::new(100, cap);
        for i in 0..10 {
            c.put(format!("k{i}"), (), 10, 1000, t(0)).unwrap();
            assert!(c.bytes() <= cap);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.counters().evicted_bytes, 7);
        assert!(c.put("big".into(), (), cap, 1000, t(0)).is_err());
        assert_eq!(c.len(), 3, "a refused put evicts nothing");
    }

    #[test]
    fn expires_at_ttl_and_alarm_sweeps() {
        let mut c = LruTtlCache::new(10, 1 << 20);
        c.put("a".into(), 1, 1, 100, t(0)).unwrap();
        c.put("b".into(), 2, 1, 200, t(0)).unwrap();
        assert_eq!(c.next_deadline(), Some(t(100)));
        assert!(matches!(
            c.get("a", t(99)),
            Lookup::Hit {
                age_ms: 99,
                ttl_left_ms: 1,
                ..
            }
        ));
        assert_eq!(c.get("a", t(100)), Lookup::Expired);
        let swept = c.on_alarm(t(200));
        assert_eq!(
            swept,
            vec![Removed {
                key: "b".into(),
                cause: EvictionCause::Expired
            }]
        );
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn replacing_a_key_keeps_one_entry() {
        let mut c = LruTtlCache::new(10, 1 << 20);
        c.put("a".into(), 1, 5, 100, t(0)).unwrap();
        let r = c.put("a".into(), 2, 7, 100, t(1)).unwrap();
        assert_eq!(r[0].cause, EvictionCause::Replaced);
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), LruTtlCache::<u8>::weight_of("a", 7));
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

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn max_age_is_read_and_validated() {
        assert_eq!(parse_max_age("public, max-age=60").unwrap(), Some(60));
        assert_eq!(parse_max_age("MAX-AGE=\"5\"").unwrap(), Some(5));
        assert_eq!(parse_max_age("no-cache").unwrap(), None);
        assert!(parse_max_age("max-age=0").is_err());
        assert!(parse_max_age("max-age=-1").is_err());
        assert!(parse_max_age("max-age=abc").is_err());
        assert!(parse_max_age("max-age=99999999999999999999").is_err());
    }
}
