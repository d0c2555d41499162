//! The shard side of `AggregatorDO`: loads [`Ingest`] from its rows, makes one core call per
//! request or alarm and persists the writes in the same synchronous block. The batch-seen flag
//! is read right before the call (the input gate keeps the read and the write atomic, so a
//! retried batch is counted once).

use std::cell::RefMut;

use gateway_core::observe::ingest::{Counter, Counters, Stored, Write};
use gateway_core::observe::Ingest;
use gateway_core::protocol::aggregator::{Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};

use super::AggregatorDO;
use crate::clients::Aggregator;
use crate::durable_objects::{encode_blob, Db};

/// Reads every row the shard is built from.
fn load(db: &Db, fine_ms: u64, grace_ms: u64) -> Result<Ingest, GatewayError> {
    let rows = |table: &str| -> Result<Vec<(UnixMillis, Vec<u8>)>, GatewayError> {
        let rows = db.all::<(i64, Vec<u8>)>(&format!("SELECT bucket, agg FROM {table}"), vec![])?;
        Ok(rows
            .into_iter()
            .map(|(at, agg)| (UnixMillis(at), agg))
            .collect())
    };
    let count = |key| db.meta_as::<u64>(key).map(Option::unwrap_or_default);
    let stored = Stored {
        sealed_before: UnixMillis(db.meta_as::<i64>("sealed_before")?.unwrap_or(0)),
        windows: rows("windows")?,
        spend_windows: rows("spend_windows")?,
        counters: Counters {
            records: count("records")?,
            late: count("late")?,
            duplicate_batches: count("duplicate_batches")?,
        },
    };
    let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    Ok(Ingest::load(ms(fine_ms), ms(grace_ms), stored))
}

/// Persists what the shard changed, in order.
fn persist(db: &Db, writes: &[Write]) -> Result<(), GatewayError> {
    for w in writes {
        match w {
            Write::Window { at, agg } => db.exec(
                "INSERT INTO windows (bucket, agg) VALUES (?, ?) \
                 ON CONFLICT (bucket) DO UPDATE SET agg = excluded.agg",
                vec![at.0.into(), encode_blob(agg)?],
            )?,
            Write::SpendWindow { at, spend } => db.exec(
                "INSERT INTO spend_windows (bucket, agg) VALUES (?, ?) \
                 ON CONFLICT (bucket) DO UPDATE SET agg = excluded.agg",
                vec![at.0.into(), encode_blob(spend)?],
            )?,
            Write::SealedBefore(at) => db.set_meta("sealed_before", at.0)?,
            Write::Batch { id, at } => db.exec(
                "INSERT INTO batches (id, at) VALUES (?, ?)",
                vec![id.as_str().into(), at.0.into()],
            )?,
            Write::Count(counter, delta) => {
                let key = match counter {
                    Counter::Records => "records",
                    Counter::Late => "late",
                    Counter::DuplicateBatches => "duplicate_batches",
                };
                db.add_meta(key, i64::try_from(*delta).unwrap_or(i64::MAX))?;
            }
            Write::PruneWindows(before) => {
                for table in ["windows", "spend_windows"] {
                    db.exec(
                        &format!("DELETE FROM {table} WHERE bucket < ?"),
                        vec![before.0.into()],
                    )?;
                }
            }
            Write::PruneBatches(before) => {
                db.exec("DELETE FROM batches WHERE at < ?", vec![before.0.into()])?
            }
        }
    }
    Ok(())
}

impl AggregatorDO {
    /// The loaded shard, borrowed for one synchronous step.
    fn ingest(&self, db: &Db) -> Result<RefMut<'_, Ingest>, GatewayError> {
        self.ingest.get(|| {
            let cfg = self.base.cfg()?;
            load(db, cfg.rollup_bucket_ms, cfg.rollup_seal_grace_ms)
        })
    }

    /// `Record`, `Ingest`, `Collect`, `CollectAll` or a shard's `Stats`: read the batch-seen flag → one core call →
    /// persist. Returns the reply and whether the alarm must be armed.
    pub(super) fn shard_request(
        &self,
        db: &Db,
        msg: Request,
        now: UnixMillis,
    ) -> Result<(Reply, bool), GatewayError> {
        let seen = match Ingest::batch(&msg) {
            Some(id) => db
                .one::<(i64,)>("SELECT 1 FROM batches WHERE id = ?", vec![id.into()])?
                .is_some(),
            None => false,
        };
        let (reply, writes, wake) = self.ingest(db)?.handle(msg, seen, now)?;
        // Memory ran ahead of storage: a failed write reloads on the next request.
        self.ingest.write(|| persist(db, &writes))?;
        Ok((reply, wake))
    }

    /// A shard's alarm: its writes and the run's bookkeeping in one synchronous block, then the
    /// root is woken. Returns whether the alarm should run again.
    pub(super) async fn shard_alarm(&self, db: &Db, now: UnixMillis) -> Result<bool, GatewayError> {
        let effects = self.ingest(db)?.on_alarm(now);
        self.ingest.write(|| {
            persist(db, &effects.writes)?;
            self.base.record_alarm_run(db, now)
        })?;
        if effects.wake_root {
            let cfg = self.base.cfg()?;
            // Waking is idempotent and retried by the next alarm: a failure is not the shard's.
            let _ = Aggregator::of(&self.base.env, &cfg).wake().await;
        }
        Ok(effects.rearm)
    }
}
