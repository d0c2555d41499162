//! One cache shard as `CacheShardDO` holds it: the LRU + TTL index, the fill leases, the keys
//! read since the last write-back, and the coalescing counters. Each method answers one message
//! and lists the rows to write ([`Write`]); waiting for another caller's fill (a timer and a
//! channel) is the adapter's only asynchronous part.

use std::collections::HashSet;

use super::lease::{LeaseOutcome, Leases};
use super::{EntryMeta, EvictionCause, Lookup, LruTtlCache, PutOptions, Removed};
use crate::protocol::cache::{Cached, PutSpec, Response, Stats};
use crate::protocol::ObjectStats;
use crate::{GatewayError, UnixMillis};

/// A stored value and its content type.
pub type Entry = (Vec<u8>, Option<String>);

/// A row as stored (`entries`), for loading.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Full key.
    pub key: String,
    /// Value.
    pub value: Vec<u8>,
    /// Content type.
    pub content_type: Option<String>,
    /// Freshness, stale windows, tags.
    pub meta: EntryMeta,
}

/// A change the shard must write before it answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Insert or replace an entry (`stored_at` and `last_access` are the row's time).
    Upsert(Box<Row>),
    /// Delete an entry.
    Delete(String),
    /// Record that these keys were read at `at` (the LRU write-back).
    Touch(Vec<String>, UnixMillis),
}

/// What a lookup decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The answer.
    Done(Response),
    /// Another caller holds the fill lease until this instant: wait for its fill, then look
    /// again with `may_wait = false`.
    Wait(UnixMillis),
}

/// The shard's in-memory state.
pub struct Shard {
    cache: LruTtlCache<Entry>,
    leases: Leases,
    touched: HashSet<String>,
    leases_granted: u64,
    coalesced: u64,
}

fn cached(value: &Entry, meta: &EntryMeta, age_ms: u64, ttl_left_ms: u64) -> Cached {
    Cached {
        value: value.0.clone(),
        content_type: value.1.clone(),
        age_ms,
        ttl_left_ms,
        negative: meta.negative,
    }
}

fn deletions(removed: &[Removed]) -> impl Iterator<Item = Write> + '_ {
    removed
        .iter()
        .filter(|r| r.cause != EvictionCause::Replaced)
        .map(|r| Write::Delete(r.key.clone()))
}

impl Shard {
    /// Rebuilds the index from stored rows, least recently accessed first (which restores LRU
    /// order as of the last write-back). Caps may have been lowered since the rows were
    /// written: what no longer fits is evicted, and its deletion is in the returned writes.
    pub fn load(max_entries: usize, max_bytes: u64, rows: Vec<Row>) -> (Shard, Vec<Write>) {
        let mut cache = LruTtlCache::new(max_entries, max_bytes);
        let mut writes = Vec::new();
        for r in rows {
            let len = r.value.len() as u64;
            match cache.insert_at(r.key.clone(), (r.value, r.content_type), len, r.meta) {
                Ok(removed) => writes.extend(removed.into_iter().map(|x| Write::Delete(x.key))),
                Err(_) => writes.push(Write::Delete(r.key)),
            }
        }
        let shard = Shard {
            cache,
            leases: Leases::default(),
            touched: HashSet::new(),
            leases_granted: 0,
            coalesced: 0,
        };
        (shard, writes)
    }

    fn lease(
        &mut self,
        key: &str,
        now: UnixMillis,
        lease_ms: Option<u64>,
    ) -> Option<Result<u64, UnixMillis>> {
        let ms = lease_ms?;
        Some(match self.leases.acquire(key, now, ms) {
            LeaseOutcome::Granted { token, .. } => {
                self.leases_granted += 1;
                Ok(token)
            }
            LeaseOutcome::Held { until } => Err(until),
        })
    }

    /// A lookup. Fresh: a hit. Within stale-while-revalidate: the stale copy, with the fill
    /// lease when it is free (that caller refreshes). Within stale-if-error (when allowed): the
    /// stale copy. Otherwise a miss, with the fill lease when asked and free; when it is held
    /// by another caller and `may_wait`, [`Step::Wait`] until it is released or expires.
    pub fn get(
        &mut self,
        key: &str,
        allow_stale_if_error: bool,
        lease_ms: Option<u64>,
        may_wait: bool,
        now: UnixMillis,
    ) -> (Step, Vec<Write>) {
        let mut writes = Vec::new();
        let expired = match self.cache.get(key, now, allow_stale_if_error) {
            Lookup::Fresh {
                value,
                meta,
                age_ms,
                ttl_left_ms,
            } => {
                let c = cached(value, meta, age_ms, ttl_left_ms);
                self.touched.insert(key.to_string());
                return (Step::Done(Response::Hit(c)), writes);
            }
            Lookup::Stale {
                value,
                meta,
                age_ms,
            } => {
                let c = cached(value, meta, age_ms, 0);
                self.touched.insert(key.to_string());
                let lease = self.lease(key, now, lease_ms).and_then(Result::ok);
                let reply = Response::Stale {
                    cached: c,
                    if_error: false,
                    lease,
                };
                return (Step::Done(reply), writes);
            }
            Lookup::StaleIfError {
                value,
                meta,
                age_ms,
            } => {
                let reply = Response::Stale {
                    cached: cached(value, meta, age_ms, 0),
                    if_error: true,
                    lease: None,
                };
                return (Step::Done(reply), writes);
            }
            Lookup::Miss => false,
            Lookup::Expired => {
                if !self.cache.contains(key) {
                    writes.push(Write::Delete(key.to_string()));
                }
                true
            }
        };
        let step = match self.lease(key, now, lease_ms) {
            Some(Ok(token)) => Step::Done(Response::Miss {
                expired,
                lease: Some(token),
                waited: false,
            }),
            Some(Err(until)) if may_wait => {
                self.coalesced += 1;
                Step::Wait(until)
            }
            _ => Step::Done(Response::Miss {
                expired,
                lease: None,
                waited: !may_wait,
            }),
        };
        (step, writes)
    }

    /// Stores a value: the entry's row, the rows of what it evicted, and the release of the
    /// key's fill lease (the adapter then wakes the callers waiting for this fill).
    pub fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
        content_type: Option<String>,
        spec: PutSpec,
        now: UnixMillis,
    ) -> Result<(Response, Vec<Write>), GatewayError> {
        for t in &spec.tags {
            crate::validate::name("tag", t)?;
        }
        let meta = PutOptions {
            ttl_ms: spec.ttl_ms,
            stale_while_revalidate_ms: spec.stale_while_revalidate_ms,
            stale_if_error_ms: spec.stale_if_error_ms,
            negative: spec.negative,
            tags: spec.tags,
        }
        .into_meta(now);
        let len = value.len() as u64;
        let removed = self.cache.insert_at(
            key.clone(),
            (value.clone(), content_type.clone()),
            len,
            meta.clone(),
        )?;
        let mut writes: Vec<Write> = deletions(&removed).collect();
        for w in &writes {
            if let Write::Delete(k) = w {
                self.touched.remove(k);
            }
        }
        let evicted = writes.len() as u32;
        writes.push(Write::Upsert(Box::new(Row {
            key: key.clone(),
            value,
            content_type,
            meta,
        })));
        self.leases.release(&key);
        Ok((Response::Stored { evicted }, writes))
    }

    /// Deletes an entry.
    pub fn delete(&mut self, key: String) -> (Response, Vec<Write>) {
        let existed = self.cache.delete(&key);
        self.touched.remove(&key);
        (Response::Deleted { existed }, vec![Write::Delete(key)])
    }

    /// Removes every entry carrying one of `tags`.
    pub fn purge(&mut self, tags: &[String]) -> (Response, Vec<Write>) {
        let removed = self.cache.purge_tags(tags);
        let writes: Vec<Write> = deletions(&removed).collect();
        for w in &writes {
            if let Write::Delete(k) = w {
                self.touched.remove(k);
            }
        }
        let n = writes.len() as u32;
        (Response::Purged { removed: n }, writes)
    }

    /// The shard's statistics (`swept` and `object` come from storage).
    pub fn stats(
        &self,
        max_entries: usize,
        max_bytes: u64,
        swept: u64,
        object: ObjectStats,
    ) -> Stats {
        Stats {
            entries: self.cache.len() as u64,
            bytes: self.cache.bytes(),
            max_entries: max_entries as u64,
            max_bytes,
            counters: self.cache.counters(),
            swept,
            leases_granted: self.leases_granted,
            coalesced: self.coalesced,
            object,
        }
    }

    /// The alarm: drops what no window uses any more, writes the access times back, forgets
    /// expired leases. Returns the writes and how many entries it removed (the adapter also
    /// deletes rows past their eviction time that the index never held).
    pub fn on_alarm(&mut self, now: UnixMillis) -> (Vec<Write>, u64) {
        let removed = self.cache.on_alarm(now);
        for r in &removed {
            self.touched.remove(&r.key);
        }
        let mut writes: Vec<Write> = Vec::new();
        let touched: Vec<String> = self.touched.drain().collect();
        if !touched.is_empty() {
            writes.push(Write::Touch(touched, now));
        }
        self.leases.prune(now);
        (writes, removed.len() as u64)
    }

    /// When the alarm must run for the index's own sake (the next expiry), if ever.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.cache.next_deadline()
    }

    /// Whether the shard holds no entry.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ttl_ms: u64, swr_ms: u64) -> PutSpec {
        PutSpec {
            ttl_ms,
            stale_while_revalidate_ms: swr_ms,
            stale_if_error_ms: 0,
            negative: false,
            tags: vec!["t".into()],
        }
    }

    fn shard() -> Shard {
        Shard::load(100, 1 << 20, vec![]).0
    }

    #[test]
    fn a_miss_with_a_free_lease_gets_it_and_the_next_caller_waits_for_the_fill() {
        let mut s = shard();
        let (first, _) = s.get("k", false, Some(5_000), true, UnixMillis(1_000));
        assert!(matches!(
            first,
            Step::Done(Response::Miss { lease: Some(_), .. })
        ));
        let (second, _) = s.get("k", false, Some(5_000), true, UnixMillis(1_001));
        assert_eq!(second, Step::Wait(UnixMillis(6_000)));
        let (third, _) = s.get("k", false, Some(5_000), false, UnixMillis(1_002));
        assert!(matches!(
            third,
            Step::Done(Response::Miss {
                lease: None,
                waited: true,
                ..
            })
        ));
        let (_, writes) = s
            .put(
                "k".into(),
                b"v".to_vec(),
                None,
                spec(60_000, 0),
                UnixMillis(1_500),
            )
            .unwrap();
        assert!(matches!(writes.last(), Some(Write::Upsert(r)) if r.key == "k"));
        let (after, _) = s.get("k", false, Some(5_000), true, UnixMillis(1_600));
        assert!(matches!(after, Step::Done(Response::Hit(_))));
        let stats = s.stats(100, 1 << 20, 0, ObjectStats::default());
        assert_eq!((stats.leases_granted, stats.coalesced), (1, 1));
    }

    #[test]
    fn within_stale_while_revalidate_one_caller_gets_the_lease_and_reads_are_written_back() {
        let mut s = shard();
        s.put(
            "k".into(),
            b"v".to_vec(),
            None,
            spec(1_000, 10_000),
            UnixMillis(0),
        )
        .unwrap();
        let (a, _) = s.get("k", false, Some(5_000), false, UnixMillis(2_000));
        let (b, _) = s.get("k", false, Some(5_000), false, UnixMillis(2_001));
        assert!(matches!(
            a,
            Step::Done(Response::Stale {
                lease: Some(_),
                if_error: false,
                ..
            })
        ));
        assert!(matches!(b, Step::Done(Response::Stale { lease: None, .. })));
        let (writes, removed) = s.on_alarm(UnixMillis(3_000));
        assert_eq!(removed, 0);
        assert_eq!(
            writes,
            vec![Write::Touch(vec!["k".into()], UnixMillis(3_000))]
        );
        let (again, _) = s.on_alarm(UnixMillis(3_001));
        assert!(again.is_empty(), "touched keys are written back once");
    }

    #[test]
    fn evictions_and_purges_delete_rows_but_a_replacement_does_not() {
        let mut s = Shard::load(1, 1 << 20, vec![]).0;
        s.put(
            "a".into(),
            b"1".to_vec(),
            None,
            spec(60_000, 0),
            UnixMillis(0),
        )
        .unwrap();
        let (_, replaced) = s
            .put(
                "a".into(),
                b"2".to_vec(),
                None,
                spec(60_000, 0),
                UnixMillis(1),
            )
            .unwrap();
        assert_eq!(replaced.len(), 1, "only the upsert");
        let (r, evicting) = s
            .put(
                "b".into(),
                b"3".to_vec(),
                None,
                spec(60_000, 0),
                UnixMillis(2),
            )
            .unwrap();
        assert_eq!(r, Response::Stored { evicted: 1 });
        assert_eq!(evicting[0], Write::Delete("a".into()));
        let (p, writes) = s.purge(&["t".into()]);
        assert_eq!(p, Response::Purged { removed: 1 });
        assert_eq!(writes, vec![Write::Delete("b".into())]);
    }

    #[test]
    fn loading_more_rows_than_the_caps_allow_deletes_the_excess() {
        let row = |k: &str| Row {
            key: k.into(),
            value: vec![0; 10],
            content_type: None,
            meta: PutOptions {
                ttl_ms: 60_000,
                stale_while_revalidate_ms: 0,
                stale_if_error_ms: 0,
                negative: false,
                tags: vec![],
            }
            .into_meta(UnixMillis(0)),
        };
        let (s, writes) = Shard::load(2, 1 << 20, vec![row("a"), row("b"), row("c")]);
        assert_eq!(s.stats(2, 1 << 20, 0, ObjectStats::default()).entries, 2);
        assert_eq!(
            writes,
            vec![Write::Delete("a".into())],
            "least recently used goes"
        );
    }

    #[test]
    fn a_bad_tag_is_refused_and_changes_nothing() {
        let mut s = shard();
        let mut bad = spec(60_000, 0);
        bad.tags = vec!["no spaces".into()];
        assert!(s.put("k".into(), vec![], None, bad, UnixMillis(0)).is_err());
        assert!(s.is_empty());
    }
}
