//! `CacheShardDO`: one shard (`cache:{n}`) of the LRU + TTL cache.
//!
//! SQLite holds every acknowledged entry; the in-memory `LruTtlCache` is an index rebuilt lazily
//! on first use (entries loaded least-recently-accessed first, which restores LRU order as of the
//! last write-back). Hits update recency in memory only; the alarm writes the access times back,
//! so LRU order survives a restart approximately (to within one sweep interval) without a write
//! per read. The alarm also removes entries no window uses any more, so storage stays bounded.
//!
//! Request coalescing: a caller that asks for a fill lease on a miss gets it when nobody holds
//! one; callers arriving while it is held wait (bounded) for the holder's `Put`, which releases
//! the lease and wakes them, instead of all going upstream. Waiting on a channel or timer opens
//! the object's input gate, so the holder's `Put` gets through.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::select;
use gateway_core::alarm::next_alarm;
use gateway_core::cache::lease::{LeaseOutcome, Leases};
use gateway_core::cache::{EntryMeta, EvictionCause, Lookup, LruTtlCache, PutOptions, Removed};
use gateway_core::config::Config;
use gateway_core::protocol::cache::{Cached, Request, Response as Reply, Stats};
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, Delay, DurableObject, Env, Request as HttpRequest, Response, State};

use super::{migrations, now, Base, Db, Lazy, Wake};

type Entry = (Vec<u8>, Option<String>);

/// What a synchronous lookup decided.
enum GetStep {
    Done(Reply),
    /// Another caller holds the fill lease until this instant: wait for its fill.
    Wait(UnixMillis),
}

/// A cache shard.
#[durable_object(alarm)]
pub struct CacheShardDO {
    base: Base,
    cache: Lazy<LruTtlCache<Entry>>,
    touched: RefCell<HashSet<String>>,
    leases: RefCell<Leases>,
    waiters: RefCell<HashMap<String, Vec<oneshot::Sender<()>>>>,
    leases_granted: Cell<u64>,
    coalesced: Cell<u64>,
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

impl CacheShardDO {
    fn cfg(&self) -> Result<std::rc::Rc<Config>, GatewayError> {
        self.base.cfg()
    }

    /// Loads the index from SQLite (on first use).
    fn load(&self, db: &Db, now: UnixMillis) -> Result<LruTtlCache<Entry>, GatewayError> {
        let cfg = self.cfg()?;
        let mut cache = LruTtlCache::new(cfg.cache_max_entries, cfg.cache_max_bytes);
        type Row = (
            String,
            Vec<u8>,
            Option<String>,
            i64,
            i64,
            u64,
            u64,
            bool,
            String,
        );
        let rows: Vec<Row> = db.all(
            "SELECT key, value, content_type, stored_at, expires_at, stale_while_revalidate_ms, \
             stale_if_error_ms, negative, tags FROM entries WHERE evict_at > ? ORDER BY last_access ASC",
            vec![now.0.into()],
        )?;
        let mut dropped = Vec::new();
        for (key, value, content_type, stored_at, expires_at, swr, sie, negative, tags) in rows {
            let meta = EntryMeta {
                stored_at: UnixMillis(stored_at),
                expires_at: UnixMillis(expires_at),
                stale_while_revalidate_ms: swr,
                stale_if_error_ms: sie,
                negative,
                tags: tags
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
            };
            let len = value.len() as u64;
            // Caps may have been lowered since the entries were written: evict to fit.
            match cache.insert_at(key.clone(), (value, content_type), len, meta) {
                Ok(removed) => dropped.extend(removed.into_iter().map(|r| r.key)),
                Err(_) => dropped.push(key),
            }
        }
        for key in dropped {
            db.exec("DELETE FROM entries WHERE key = ?", vec![key.into()])?;
        }
        Ok(cache)
    }

    /// The shard's SQLite and its loaded index, borrowed for one synchronous step.
    fn open(&self, now: UnixMillis) -> Result<(Db, RefMut<'_, LruTtlCache<Entry>>), GatewayError> {
        let db = self.base.db(migrations::CACHE_SHARD, now)?;
        let cache = self.cache.get(|| self.load(&db, now))?;
        Ok((db, cache))
    }

    fn delete_rows(&self, db: &Db, removed: &[Removed]) -> Result<u32, GatewayError> {
        let mut n = 0;
        let mut touched = self.touched.borrow_mut();
        for r in removed {
            if r.cause != EvictionCause::Replaced {
                n += 1;
                db.exec(
                    "DELETE FROM entries WHERE key = ?",
                    vec![r.key.as_str().into()],
                )?;
                touched.remove(&r.key);
            }
        }
        Ok(n)
    }

    fn lease(
        &self,
        key: &str,
        now: UnixMillis,
        lease_ms: Option<u64>,
    ) -> Option<Result<u64, UnixMillis>> {
        let ms = lease_ms?;
        Some(match self.leases.borrow_mut().acquire(key, now, ms) {
            LeaseOutcome::Granted { token, .. } => {
                self.leases_granted.set(self.leases_granted.get() + 1);
                Ok(token)
            }
            LeaseOutcome::Held { until } => Err(until),
        })
    }

    fn get_step(
        &self,
        key: &str,
        allow_sie: bool,
        lease_ms: Option<u64>,
        may_wait: bool,
        now: UnixMillis,
    ) -> Result<GetStep, GatewayError> {
        let (db, mut cache) = self.open(now)?;
        let expired = match cache.get(key, now, allow_sie) {
            Lookup::Fresh {
                value,
                meta,
                age_ms,
                ttl_left_ms,
            } => {
                self.touched.borrow_mut().insert(key.to_string());
                return Ok(GetStep::Done(Reply::Hit(cached(
                    value,
                    meta,
                    age_ms,
                    ttl_left_ms,
                ))));
            }
            Lookup::Stale {
                value,
                meta,
                age_ms,
            } => {
                let c = cached(value, meta, age_ms, 0);
                self.touched.borrow_mut().insert(key.to_string());
                let lease = self.lease(key, now, lease_ms).and_then(Result::ok);
                return Ok(GetStep::Done(Reply::Stale {
                    cached: c,
                    if_error: false,
                    lease,
                }));
            }
            Lookup::StaleIfError {
                value,
                meta,
                age_ms,
            } => {
                let c = cached(value, meta, age_ms, 0);
                return Ok(GetStep::Done(Reply::Stale {
                    cached: c,
                    if_error: true,
                    lease: None,
                }));
            }
            Lookup::Miss => false,
            Lookup::Expired => {
                if !cache.contains(key) {
                    db.exec("DELETE FROM entries WHERE key = ?", vec![key.into()])?;
                }
                true
            }
        };
        match self.lease(key, now, lease_ms) {
            Some(Ok(token)) => Ok(GetStep::Done(Reply::Miss {
                expired,
                lease: Some(token),
                waited: false,
            })),
            Some(Err(until)) if may_wait => Ok(GetStep::Wait(until)),
            _ => Ok(GetStep::Done(Reply::Miss {
                expired,
                lease: None,
                waited: !may_wait,
            })),
        }
    }

    fn put(
        &self,
        key: String,
        value: Vec<u8>,
        content_type: Option<String>,
        spec: gateway_core::protocol::cache::PutSpec,
        now: UnixMillis,
    ) -> Result<Reply, GatewayError> {
        for t in &spec.tags {
            gateway_core::validate::name("tag", t)?;
        }
        let (db, mut cache) = self.open(now)?;
        let meta = PutOptions {
            ttl_ms: spec.ttl_ms,
            stale_while_revalidate_ms: spec.stale_while_revalidate_ms,
            stale_if_error_ms: spec.stale_if_error_ms,
            negative: spec.negative,
            tags: spec.tags,
        }
        .into_meta(now);
        let len = value.len() as u64;
        let removed = cache.insert_at(
            key.clone(),
            (value.clone(), content_type.clone()),
            len,
            meta.clone(),
        )?;
        drop(cache);
        let evicted = self.delete_rows(&db, &removed)?;
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        db.exec(
            "INSERT INTO entries (key, value, content_type, stored_at, expires_at, last_access, \
             stale_while_revalidate_ms, stale_if_error_ms, negative, tags, evict_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET \
             value = excluded.value, content_type = excluded.content_type, stored_at = excluded.stored_at, \
             expires_at = excluded.expires_at, last_access = excluded.last_access, \
             stale_while_revalidate_ms = excluded.stale_while_revalidate_ms, \
             stale_if_error_ms = excluded.stale_if_error_ms, negative = excluded.negative, \
             tags = excluded.tags, evict_at = excluded.evict_at",
            vec![
                key.as_str().into(),
                value.into(),
                content_type.into(),
                now.0.into(),
                meta.expires_at.0.into(),
                now.0.into(),
                i(meta.stale_while_revalidate_ms).into(),
                i(meta.stale_if_error_ms).into(),
                i64::from(meta.negative).into(),
                meta.tags.join(",").into(),
                meta.evict_at().0.into(),
            ],
        )?;
        // The fill arrived: release the lease and wake everyone waiting for it.
        self.leases.borrow_mut().release(&key);
        for w in self.waiters.borrow_mut().remove(&key).unwrap_or_default() {
            let _ = w.send(());
        }
        Ok(Reply::Stored { evicted })
    }

    async fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        match msg {
            Request::Get {
                key,
                allow_stale_if_error,
                lease_ms,
                wait_ms,
            } => Ok((
                self.get(key, allow_stale_if_error, lease_ms, wait_ms)
                    .await?,
                Wake::Idle,
            )),
            Request::Put {
                key,
                value,
                content_type,
                spec,
            } => {
                let reply = self.put(key, value, content_type, spec, now)?;
                let deadline = self.cache.peek(LruTtlCache::next_deadline).flatten();
                Ok((reply, Wake::By(deadline)))
            }
            Request::Delete { key } => {
                let (db, mut cache) = self.open(now)?;
                let existed = cache.delete(&key);
                db.exec("DELETE FROM entries WHERE key = ?", vec![key.into()])?;
                Ok((Reply::Deleted { existed }, Wake::Idle))
            }
            Request::Purge { tags } => {
                let (db, mut cache) = self.open(now)?;
                let removed = cache.purge_tags(&tags);
                drop(cache);
                let n = self.delete_rows(&db, &removed)?;
                Ok((Reply::Purged { removed: n }, Wake::Idle))
            }
            Request::Stats => {
                let (db, cache) = self.open(now)?;
                let cfg = self.cfg()?;
                Ok((
                    Reply::Stats(Stats {
                        entries: cache.len() as u64,
                        bytes: cache.bytes(),
                        max_entries: cfg.cache_max_entries as u64,
                        max_bytes: cfg.cache_max_bytes,
                        counters: cache.counters(),
                        swept: u64::try_from(db.meta("swept")?).unwrap_or(0),
                        leases_granted: self.leases_granted.get(),
                        coalesced: self.coalesced.get(),
                        object: self.base.object_stats(&db)?,
                    }),
                    Wake::Idle,
                ))
            }
        }
    }

    async fn get(
        &self,
        key: String,
        allow_sie: bool,
        lease_ms: Option<u64>,
        wait_ms: u64,
    ) -> Result<Reply, GatewayError> {
        let start = now();
        match self.get_step(&key, allow_sie, lease_ms, wait_ms > 0, start)? {
            GetStep::Done(r) => Ok(r),
            GetStep::Wait(until) => {
                self.coalesced.set(self.coalesced.get() + 1);
                let (tx, rx) = oneshot::channel();
                self.waiters
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .push(tx);
                let budget = u64::try_from(until.since(start)).unwrap_or(0).min(wait_ms);
                let _ = select(rx, Delay::from(Duration::from_millis(budget))).await;
                // Look again (a new clock reading: time has passed), without waiting twice.
                match self.get_step(&key, allow_sie, lease_ms, false, now())? {
                    GetStep::Done(r) => Ok(r),
                    GetStep::Wait(_) => Ok(Reply::Miss {
                        expired: false,
                        lease: None,
                        waited: true,
                    }),
                }
            }
        }
    }

    fn interval(&self) -> u64 {
        self.base.interval(|c| c.cache_sweep_interval_ms)
    }

    /// The expiry sweep and access-time write-back; returns when to wake next.
    fn sweep(&self, now: UnixMillis) -> Result<Option<UnixMillis>, GatewayError> {
        let (db, mut cache) = self.open(now)?;
        let removed = cache.on_alarm(now);
        // Also catches rows the index never held (e.g. written by an older instance).
        let swept = db.exec_count(
            "DELETE FROM entries WHERE evict_at <= ?",
            vec![now.0.into()],
        )?;
        let mut touched = self.touched.borrow_mut();
        for r in &removed {
            touched.remove(&r.key);
        }
        for key in touched.drain() {
            db.exec(
                "UPDATE entries SET last_access = ? WHERE key = ?",
                vec![now.0.into(), key.into()],
            )?;
        }
        self.leases.borrow_mut().prune(now);
        db.add_meta(
            "swept",
            i64::try_from(swept.max(removed.len() as u64)).unwrap_or(0),
        )?;
        self.base.record_alarm_run(&db, now)?;
        Ok((!cache.is_empty()).then(|| next_alarm(now, self.interval(), cache.next_deadline())))
    }
}

impl DurableObject for CacheShardDO {
    fn new(state: State, env: Env) -> Self {
        CacheShardDO {
            base: Base::new(state, env),
            cache: Lazy::default(),
            touched: RefCell::new(HashSet::new()),
            leases: RefCell::new(Leases::default()),
            waiters: RefCell::new(HashMap::new()),
            leases_granted: Cell::new(0),
            coalesced: Cell::new(0),
        }
    }

    async fn fetch(&self, mut req: HttpRequest) -> worker::Result<Response> {
        self.base
            .serve(&mut req, self.interval(), |msg, now| self.handle(msg, now))
            .await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = now();
        let next = self.sweep(now).map_err(|e| e.to_string())?;
        self.base.rearm(next).await?;
        Response::ok("ok")
    }
}
