//! `AggregatorDO`: one metric shard (`aggregator:{n}`) of per-minute windows.
//!
//! Ingest merges a batch into the minute windows and upserts the touched windows in one
//! synchronous block. The alarm seals finished minutes (the cursor a root merge relies on) and
//! drops windows older than 7 days, so storage stays bounded.

use std::cell::RefCell;

use gateway_core::protocol::aggregator::{Request, Response as Reply, Stats};
use gateway_core::rollup::Rollup;
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, DurableObject, Env, Request as HttpRequest, Response, State};

use super::{col, decode_blob, encode_blob, int, migrations, now, Base, Db};

const RETENTION_MS: i64 = 7 * 86_400_000;

/// An aggregator shard.
#[durable_object(alarm)]
pub struct AggregatorDO {
    base: Base,
    env: Env,
    rollup: RefCell<Option<Rollup>>,
}

impl AggregatorDO {
    fn loaded(&self, db: &Db, now: UnixMillis) -> Result<(), GatewayError> {
        if self.rollup.borrow().is_some() {
            return Ok(());
        }
        let mut r = Rollup {
            sealed_before: UnixMillis(db.meta("sealed_before")?),
            ..Rollup::default()
        };
        let since = now.plus_ms(-RETENTION_MS).0;
        for row in db.rows(
            "SELECT minute, window FROM windows WHERE minute >= ?",
            vec![since.into()],
        )? {
            let minute = UnixMillis(int(col(&row, 0)?).unwrap_or(0));
            r.windows.insert(minute, decode_blob(col(&row, 1)?)?);
        }
        *self.rollup.borrow_mut() = Some(r);
        Ok(())
    }

    fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::AGGREGATOR, now)?;
        self.loaded(&db, now)?;
        let mut guard = self.rollup.borrow_mut();
        let r = guard
            .as_mut()
            .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
        match msg {
            Request::Ingest { events } => {
                for e in &events {
                    e.validate()?;
                }
                let (result, touched) = r.ingest(&events);
                for minute in touched {
                    if let Some(w) = r.windows.get(&minute) {
                        db.exec(
                            "INSERT INTO windows (minute, window) VALUES (?, ?) \
                             ON CONFLICT (minute) DO UPDATE SET window = excluded.window",
                            vec![minute.0.into(), encode_blob(w)?],
                        )?;
                    }
                }
                db.add_meta("events", i64::from(result.accepted))?;
                Ok((Reply::Ingested(result), true))
            }
            Request::Snapshot { since } => Ok((
                Reply::Snapshot {
                    windows: r.windows.range(since..).map(|(k, v)| (*k, *v)).collect(),
                },
                false,
            )),
            Request::Stats => Ok((
                Reply::Stats(Stats {
                    windows: r.windows.len() as u64,
                    sealed_before: r.sealed_before,
                    sealed_windows: u64::try_from(db.meta("sealed_windows")?).unwrap_or(0),
                    events: u64::try_from(db.meta("events")?).unwrap_or(0),
                    object: self.base.object_stats(&db)?,
                }),
                false,
            )),
        }
    }

    fn interval(&self) -> u64 {
        super::config(&self.env)
            .map(|c| c.rollup_interval_ms)
            .unwrap_or(60_000)
    }

    fn seal(&self, now: UnixMillis) -> Result<bool, GatewayError> {
        let db = self.base.db(migrations::AGGREGATOR, now)?;
        self.loaded(&db, now)?;
        let mut guard = self.rollup.borrow_mut();
        let r = guard
            .as_mut()
            .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
        let sealed = r.on_alarm(now);
        let cutoff = now.plus_ms(-RETENTION_MS);
        r.windows = r.windows.split_off(&cutoff);
        db.exec(
            "DELETE FROM windows WHERE minute < ?",
            vec![cutoff.0.into()],
        )?;
        db.set_meta("sealed_before", r.sealed_before.0)?;
        db.add_meta("sealed_windows", i64::from(sealed))?;
        self.base.record_alarm_run(&db, now)?;
        Ok(!r.windows.is_empty())
    }
}

impl DurableObject for AggregatorDO {
    fn new(state: State, env: Env) -> Self {
        AggregatorDO {
            base: Base::new(state),
            env,
            rollup: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: HttpRequest) -> worker::Result<Response> {
        self.base
            .serve(&mut req, self.interval(), |msg, now| self.handle(msg, now))
            .await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = now();
        self.base
            .finish_alarm(now, self.seal(now), self.interval())
            .await
    }
}
