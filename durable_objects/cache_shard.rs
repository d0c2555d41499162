//! `CacheShardDO`: one shard (`cache:{n}`) of the LRU + TTL cache.
//!
//! SQLite holds every acknowledged entry; the in-memory `LruTtlCache` is an index rebuilt lazily
//! on first use (entries loaded least-recently-accessed first, which restores LRU order as of the
//! last write-back). Hits update recency in memory only; the alarm writes the access times back,
//! so LRU order survives a restart approximately (to within one sweep interval) without a write
//! per read. The alarm also sweeps expired entries, so storage stays bounded.

use std::cell::RefCell;
use std::collections::HashSet;

use gateway_core::alarm::next_alarm;
use gateway_core::cache::{EvictionCause, Lookup, LruTtlCache};
use gateway_core::config::Config;
use gateway_core::protocol::cache::{Request, Response as Reply, Stats};
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, DurableObject, Env, Request as HttpRequest, Response, State};

use super::{blob, col, int, migrations, now, respond, text, Base, Db};

type Entry = (Vec<u8>, Option<String>);

/// A cache shard.
#[durable_object(alarm)]
pub struct CacheShardDO {
    base: Base,
    env: Env,
    cache: RefCell<Option<LruTtlCache<Entry>>>,
    touched: RefCell<HashSet<String>>,
}

impl CacheShardDO {
    fn cfg(&self) -> Result<std::rc::Rc<Config>, GatewayError> {
        super::config(&self.env)
    }

    /// Loads the index from SQLite on first use.
    fn loaded(&self, db: &Db, now: UnixMillis) -> Result<(), GatewayError> {
        if self.cache.borrow().is_some() {
            return Ok(());
        }
        let cfg = self.cfg()?;
        let mut cache = LruTtlCache::new(cfg.cache_max_entries, cfg.cache_max_bytes);
        let rows = db.rows(
            "SELECT key, value, content_type, stored_at, expires_at FROM entries \
             WHERE expires_at > ? ORDER BY last_access ASC",
            vec![now.0.into()],
        )?;
        let mut dropped = Vec::new();
        for row in rows {
            let key =
                text(col(&row, 0)?).ok_or_else(|| GatewayError::Internal("bad key".into()))?;
            let value = blob(col(&row, 1)?).map(<[u8]>::to_vec).unwrap_or_default();
            let content_type = text(col(&row, 2)?);
            let stored_at = UnixMillis(int(col(&row, 3)?).unwrap_or(now.0));
            let expires_at = UnixMillis(int(col(&row, 4)?).unwrap_or(now.0));
            let len = value.len() as u64;
            // Caps may have been lowered since the entries were written: evict to fit.
            match cache.insert_at(
                key.clone(),
                (value, content_type),
                len,
                stored_at,
                expires_at,
            ) {
                Ok(removed) => dropped.extend(removed.into_iter().map(|r| r.key)),
                Err(_) => dropped.push(key),
            }
        }
        for key in dropped {
            db.exec("DELETE FROM entries WHERE key = ?", vec![key.into()])?;
        }
        *self.cache.borrow_mut() = Some(cache);
        Ok(())
    }

    fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::CACHE_SHARD, now)?;
        self.loaded(&db, now)?;
        let mut guard = self.cache.borrow_mut();
        let cache = guard
            .as_mut()
            .ok_or_else(|| GatewayError::Internal("cache index not loaded".into()))?;
        match msg {
            Request::Get { key } => match cache.get(&key, now) {
                Lookup::Hit {
                    value,
                    age_ms,
                    ttl_left_ms,
                } => {
                    let reply = Reply::Hit {
                        value: value.0.clone(),
                        content_type: value.1.clone(),
                        age_ms,
                        ttl_left_ms,
                    };
                    self.touched.borrow_mut().insert(key);
                    Ok((reply, false))
                }
                Lookup::Miss => Ok((Reply::Miss, false)),
                Lookup::Expired => {
                    db.exec("DELETE FROM entries WHERE key = ?", vec![key.into()])?;
                    Ok((Reply::Expired, false))
                }
            },
            Request::Put {
                key,
                value,
                content_type,
                ttl_ms,
            } => {
                let len = value.len() as u64;
                let removed = cache.put(
                    key.clone(),
                    (value.clone(), content_type.clone()),
                    len,
                    ttl_ms,
                    now,
                )?;
                let mut evicted = 0u32;
                for r in &removed {
                    if r.cause != EvictionCause::Replaced {
                        evicted += 1;
                        db.exec(
                            "DELETE FROM entries WHERE key = ?",
                            vec![r.key.as_str().into()],
                        )?;
                        self.touched.borrow_mut().remove(&r.key);
                    }
                }
                let expires_at = now.plus_ms(i64::try_from(ttl_ms).unwrap_or(i64::MAX));
                db.exec(
                    "INSERT INTO entries (key, value, content_type, stored_at, expires_at, last_access) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     content_type = excluded.content_type, stored_at = excluded.stored_at, \
                     expires_at = excluded.expires_at, last_access = excluded.last_access",
                    vec![
                        key.into(),
                        value.into(),
                        content_type.into(),
                        now.0.into(),
                        expires_at.0.into(),
                        now.0.into(),
                    ],
                )?;
                Ok((Reply::Stored { evicted }, true))
            }
            Request::Delete { key } => {
                let existed = cache.delete(&key);
                db.exec("DELETE FROM entries WHERE key = ?", vec![key.into()])?;
                Ok((Reply::Deleted { existed }, false))
            }
            Request::Stats => {
                let cfg = self.cfg()?;
                Ok((
                    Reply::Stats(Stats {
                        entries: cache.len() as u64,
                        bytes: cache.bytes(),
                        max_entries: cfg.cache_max_entries as u64,
                        max_bytes: cfg.cache_max_bytes,
                        counters: cache.counters(),
                        swept: u64::try_from(db.meta("swept")?).unwrap_or(0),
                        object: self.base.object_stats(&db)?,
                    }),
                    false,
                ))
            }
        }
    }

    fn interval(&self) -> u64 {
        self.cfg()
            .map(|c| c.cache_sweep_interval_ms)
            .unwrap_or(60_000)
    }

    /// The expiry sweep and access-time write-back; returns when to wake next.
    fn sweep(&self, now: UnixMillis) -> Result<Option<UnixMillis>, GatewayError> {
        let db = self.base.db(migrations::CACHE_SHARD, now)?;
        self.loaded(&db, now)?;
        let mut guard = self.cache.borrow_mut();
        let cache = guard
            .as_mut()
            .ok_or_else(|| GatewayError::Internal("cache index not loaded".into()))?;
        let removed = cache.on_alarm(now);
        // Also catches rows the index never held (e.g. written by an older instance).
        let swept = db.exec_count(
            "DELETE FROM entries WHERE expires_at <= ?",
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
            base: Base::new(state),
            env,
            cache: RefCell::new(None),
            touched: RefCell::new(HashSet::new()),
        }
    }

    async fn fetch(&self, mut req: HttpRequest) -> worker::Result<Response> {
        let bytes = req.bytes().await?;
        let now = now();
        let result = super::decode_request(&bytes).and_then(|msg| self.handle(msg, now));
        if let Ok((_, true)) = &result {
            let deadline = self
                .cache
                .borrow()
                .as_ref()
                .and_then(LruTtlCache::next_deadline);
            self.base
                .ensure_alarm(next_alarm(now, self.interval(), deadline))
                .await?;
        }
        respond(result.map(|(r, _)| r))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = now();
        let next = self.sweep(now).map_err(|e| e.to_string())?;
        self.base.rearm(next).await?;
        Response::ok("ok")
    }
}
