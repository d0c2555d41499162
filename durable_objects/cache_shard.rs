//! `CacheShardDO`: one shard (`cache:{n}`) of the LRU + TTL cache.
//!
//! SQLite holds every acknowledged entry; the in-memory `cache::shard::Shard` is an index
//! rebuilt lazily on first use (entries loaded least-recently-accessed first, which restores LRU
//! order as of the last write-back). Hits update recency in memory only; the alarm writes the
//! access times back, so LRU order survives a restart approximately (to within one sweep
//! interval) without a write per read. The alarm also removes entries no window uses any more,
//! so storage stays bounded.
//!
//! Request coalescing (the rules are in core): a caller that asks for a fill lease on a miss
//! gets it when nobody holds one; callers arriving while it is held wait (bounded) for the
//! holder's `Put`, which releases the lease and wakes them. Waiting on a channel or timer opens
//! the object's input gate, so the holder's `Put` gets through.

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::select;
use gateway_core::cache::shard::{Row, Shard, Step, Write};
use gateway_core::cache::EntryMeta;
use gateway_core::protocol::cache::{Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, Delay};

use super::{adapter, migrations, now, Adapter, Base, Db, Lazy, Wake};

/// A cache shard.
#[durable_object(alarm)]
pub struct CacheShardDO {
    base: Base,
    shard: Lazy<Shard>,
    /// Callers waiting for another caller's fill, by key.
    waiters: RefCell<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn persist(db: &Db, writes: Vec<Write>) -> Result<(), GatewayError> {
    for w in writes {
        match w {
            Write::Delete(key) => db.exec("DELETE FROM entries WHERE key = ?", vec![key.into()])?,
            Write::Touch(keys, at) => {
                for key in keys {
                    db.exec(
                        "UPDATE entries SET last_access = ? WHERE key = ?",
                        vec![at.0.into(), key.into()],
                    )?;
                }
            }
            Write::Upsert(row) => {
                let Row {
                    key,
                    value,
                    content_type,
                    meta,
                } = *row;
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
                        key.into(),
                        value.into(),
                        content_type.into(),
                        meta.stored_at.0.into(),
                        meta.expires_at.0.into(),
                        meta.stored_at.0.into(),
                        i(meta.stale_while_revalidate_ms).into(),
                        i(meta.stale_if_error_ms).into(),
                        i64::from(meta.negative).into(),
                        meta.tags.join(",").into(),
                        meta.evict_at().0.into(),
                    ],
                )?;
            }
        }
    }
    Ok(())
}

impl CacheShardDO {
    /// Loads the index from SQLite (on first use).
    fn load(&self, db: &Db, now: UnixMillis) -> Result<Shard, GatewayError> {
        let cfg = self.base.cfg()?;
        type Stored = (
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
        let rows: Vec<Stored> = db.all(
            "SELECT key, value, content_type, stored_at, expires_at, stale_while_revalidate_ms, \
             stale_if_error_ms, negative, tags FROM entries WHERE evict_at > ? ORDER BY last_access ASC",
            vec![now.0.into()],
        )?;
        let rows = rows
            .into_iter()
            .map(
                |(key, value, content_type, stored_at, expires_at, swr, sie, negative, tags)| Row {
                    key,
                    value,
                    content_type,
                    meta: EntryMeta {
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
                    },
                },
            )
            .collect();
        let (shard, writes) = Shard::load(cfg.cache_max_entries, cfg.cache_max_bytes, rows);
        persist(db, writes)?;
        Ok(shard)
    }

    /// The shard's SQLite and its loaded index, borrowed for one synchronous step.
    fn open(&self, now: UnixMillis) -> Result<(Db, RefMut<'_, Shard>), GatewayError> {
        let db = self.base.db(migrations::CACHE_SHARD, now)?;
        let shard = self.shard.get(|| self.load(&db, now))?;
        Ok((db, shard))
    }

    /// One synchronous step: the core call and its writes.
    fn step<R>(
        &self,
        now: UnixMillis,
        f: impl FnOnce(&mut Shard) -> Result<(R, Vec<Write>), GatewayError>,
    ) -> Result<R, GatewayError> {
        let (db, mut shard) = self.open(now)?;
        let (out, writes) = f(&mut shard)?;
        drop(shard);
        self.shard.write(|| persist(&db, writes))?;
        Ok(out)
    }

    async fn get(
        &self,
        key: String,
        allow_sie: bool,
        lease_ms: Option<u64>,
        wait_ms: u64,
        start: UnixMillis,
    ) -> Result<Reply, GatewayError> {
        let look = |may_wait: bool, at: UnixMillis| {
            self.step(at, |s| Ok(s.get(&key, allow_sie, lease_ms, may_wait, at)))
        };
        match look(wait_ms > 0, start)? {
            Step::Done(r) => Ok(r),
            Step::Wait(until) => {
                let (tx, rx) = oneshot::channel();
                self.waiters
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .push(tx);
                let budget = u64::try_from(until.since(start)).unwrap_or(0).min(wait_ms);
                let _ = select(rx, Delay::from(Duration::from_millis(budget))).await;
                // Look again (a new clock reading: time has passed), without waiting twice.
                match look(false, now())? {
                    Step::Done(r) => Ok(r),
                    Step::Wait(_) => Ok(Reply::Miss {
                        expired: false,
                        lease: None,
                        waited: true,
                    }),
                }
            }
        }
    }

    async fn dispatch(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        let reply = match msg {
            Request::Get {
                key,
                allow_stale_if_error,
                lease_ms,
                wait_ms,
            } => {
                let r = self
                    .get(key, allow_stale_if_error, lease_ms, wait_ms, now)
                    .await?;
                return Ok((r, Wake::Idle));
            }
            Request::Put {
                key,
                value,
                content_type,
                spec,
            } => {
                let wake = key.clone();
                let r = self.step(now, |s| s.put(key, value, content_type, spec, now))?;
                // The fill arrived: wake everyone waiting for it.
                for w in self.waiters.borrow_mut().remove(&wake).unwrap_or_default() {
                    let _ = w.send(());
                }
                let deadline = self.shard.peek(Shard::next_deadline).flatten();
                return Ok((r, Wake::By(deadline)));
            }
            Request::Delete { key } => self.step(now, |s| Ok(s.delete(key)))?,
            Request::Purge { tags } => self.step(now, |s| Ok(s.purge(&tags)))?,
            Request::Stats => {
                let (db, shard) = self.open(now)?;
                let cfg = self.base.cfg()?;
                let swept = u64::try_from(db.meta("swept")?).unwrap_or(0);
                let object = self.base.object_stats(&db)?;
                Reply::Stats(shard.stats(cfg.cache_max_entries, cfg.cache_max_bytes, swept, object))
            }
        };
        Ok((reply, Wake::Idle))
    }

    /// The expiry sweep and access-time write-back; returns when to wake next.
    fn sweep(&self, now: UnixMillis) -> Result<Wake, GatewayError> {
        let (db, mut shard) = self.open(now)?;
        let (writes, removed) = shard.on_alarm(now);
        // Also catches rows the index never held (e.g. written by an older instance).
        let swept = db.exec_count(
            "DELETE FROM entries WHERE evict_at <= ?",
            vec![now.0.into()],
        )?;
        persist(&db, writes)?;
        db.add_meta("swept", i(swept.max(removed)))?;
        self.base.record_alarm_run(&db, now)?;
        Ok(if shard.is_empty() {
            Wake::Idle
        } else {
            Wake::By(shard.next_deadline())
        })
    }
}

adapter!(CacheShardDO { shard, waiters }, interval: cache_sweep_interval_ms);

impl Adapter for CacheShardDO {
    type Msg = Request;
    type Reply = Reply;

    async fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        self.dispatch(msg, now).await
    }

    async fn on_alarm(&self, now: UnixMillis) -> Result<Wake, GatewayError> {
        self.sweep(now)
    }
}
