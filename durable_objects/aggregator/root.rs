//! The root side of `AggregatorDO`: loads [`Root`] from its rows and persists what it returns.
//! A run collects every shard concurrently (`CollectAll`: windows and spend windows), then feeds all answers to the machine and persists
//! the merges, retention, alert state and outbox in one synchronous block (a retried or
//! concurrent run merges nothing twice: the cursors travel with the buckets). Webhooks are
//! POSTed one by one within `3 × timeout`; each outcome is fed back and persisted before the
//! next. The daily report and the run's bookkeeping close the run.

use std::cell::RefMut;
use std::time::Duration;

use futures::future::{join_all, select, Either};
use gateway_core::observe::root::{delivery_deadline, Run, Stored, Table, Write};
use gateway_core::observe::Root;
use gateway_core::protocol::aggregator::{Request, Response as Reply, RunReport};
use gateway_core::{GatewayError, UnixMillis};
use serde::Serialize;
use worker::{Fetch, Headers, Method, Request as HttpRequest, RequestInit};

use super::AggregatorDO;
use crate::clients::Aggregator;
use crate::durable_objects::{encode_blob, now as clock, Db};

/// Reads every row the root is built from.
fn load(db: &Db, fine_ms: u64) -> Result<Root, GatewayError> {
    let buckets = |table: &str| -> Result<Vec<(UnixMillis, Vec<u8>)>, GatewayError> {
        let rows = db.all::<(i64, Vec<u8>)>(&format!("SELECT bucket, agg FROM {table}"), vec![])?;
        Ok(rows.into_iter().map(|(t, a)| (UnixMillis(t), a)).collect())
    };
    let blob = |name: &str| -> Result<Option<Vec<u8>>, GatewayError> {
        let row =
            db.one::<(Vec<u8>,)>("SELECT value FROM blobs WHERE name = ?", vec![name.into()])?;
        Ok(row.map(|(b,)| b))
    };
    let cursors = db
        .all::<(u32, i64)>("SELECT shard, sealed_before FROM cursors", vec![])?
        .into_iter()
        .map(|(shard, at)| (shard, UnixMillis(at)))
        .collect();
    let stored = Stored {
        fine: buckets("fine")?,
        hours: buckets("hours")?,
        spend_fine: buckets("spend_fine")?,
        spend_hours: buckets("spend_hours")?,
        cursors,
        lifetime: blob("lifetime")?,
        engine: blob("engine")?,
        outbox: blob("outbox")?,
        report: blob("report")?,
        report_day: UnixMillis(db.meta_as::<i64>("report_day")?.unwrap_or(0)),
    };
    Ok(Root::load(
        stored,
        i64::try_from(fine_ms).unwrap_or(i64::MAX),
    ))
}

fn blob_put<T: Serialize>(db: &Db, name: &str, value: &T) -> Result<(), GatewayError> {
    db.exec(
        "INSERT INTO blobs (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        vec![name.into(), encode_blob(value)?],
    )
}

/// Inserts or replaces one bucket row of `table` (`fine`, `hours`, `spend_fine`, `spend_hours`).
fn upsert_bucket(
    db: &Db,
    table: &str,
    at: gateway_core::UnixMillis,
    blob: worker::SqlStorageValue,
) -> Result<(), GatewayError> {
    db.exec(
        &format!(
            "INSERT INTO {table} (bucket, agg) VALUES (?, ?) \
             ON CONFLICT (bucket) DO UPDATE SET agg = excluded.agg"
        ),
        vec![at.0.into(), blob],
    )
}

/// Persists what the root changed, in order.
fn persist(db: &Db, writes: &[Write]) -> Result<(), GatewayError> {
    for w in writes {
        match w {
            Write::Bucket { table, at, agg } => {
                let name = match table {
                    Table::Fine => "fine",
                    Table::Hour => "hours",
                };
                upsert_bucket(db, name, *at, encode_blob(agg)?)?;
            }
            Write::Spend { table, at, spend } => {
                let name = match table {
                    Table::Fine => "spend_fine",
                    Table::Hour => "spend_hours",
                };
                upsert_bucket(db, name, *at, encode_blob(spend)?)?;
            }
            Write::Cursor {
                shard,
                sealed_before,
            } => db.exec(
                "INSERT INTO cursors (shard, sealed_before) VALUES (?, ?) \
                 ON CONFLICT (shard) DO UPDATE SET sealed_before = excluded.sealed_before",
                vec![i64::from(*shard).into(), sealed_before.0.into()],
            )?,
            Write::Lifetime(l) => blob_put(db, "lifetime", l)?,
            Write::Prune {
                fine_before,
                hour_before,
            } => {
                for (table, before) in [
                    ("fine", fine_before),
                    ("hours", hour_before),
                    ("spend_fine", fine_before),
                    ("spend_hours", hour_before),
                ] {
                    db.exec(
                        &format!("DELETE FROM {table} WHERE bucket < ?"),
                        vec![before.0.into()],
                    )?;
                }
            }
            Write::Engine(e) => blob_put(db, "engine", e)?,
            Write::Outbox(o) => blob_put(db, "outbox", o)?,
            Write::Report(doc) => blob_put(db, "report", doc)?,
            Write::ReportDay(day) => db.set_meta("report_day", day.0)?,
        }
    }
    Ok(())
}

impl AggregatorDO {
    /// The loaded root, borrowed for one synchronous step (never across an `.await`).
    fn root(&self, db: &Db) -> Result<RefMut<'_, Root>, GatewayError> {
        self.root
            .get(|| load(db, self.base.cfg()?.rollup_bucket_ms))
    }

    /// Runs one synchronous step on the root and persists its writes.
    fn step(&self, db: &Db, f: impl FnOnce(&mut Root) -> Vec<Write>) -> Result<(), GatewayError> {
        let writes = {
            let mut root = self.root(db)?;
            f(&mut root)
        };
        // Memory ran ahead of storage: a failed write reloads on the next request.
        self.root.write(|| persist(db, &writes))
    }

    /// The read-only views and `Wake`: one core call. Returns the reply and whether the alarm
    /// must be armed.
    pub(super) fn root_request(
        &self,
        db: &Db,
        msg: Request,
        now: UnixMillis,
    ) -> Result<(Reply, bool), GatewayError> {
        let cfg = self.base.cfg()?;
        self.root(db)?.handle(msg, now, &cfg)
    }

    /// The root's alarm work: collect, merge, retention, alerts, webhooks, daily report.
    pub(super) async fn run(&self, db: &Db, now: UnixMillis) -> Result<RunReport, GatewayError> {
        let cfg = self.base.cfg()?;
        let plan = self.root(db)?.collect_plan(cfg.aggregator_shards);
        let shards = Aggregator::of(&self.base.env, &cfg);
        let answers = join_all(plan.iter().map(|(i, since)| shards.collect_all(*i, *since))).await;
        let mut run = Run::default();
        self.step(db, |root| {
            let mut writes = Vec::new();
            for ((shard, _), answer) in plan.iter().zip(answers) {
                match answer {
                    Ok(c) => writes.extend(root.merge_collected(&mut run, *shard, c)),
                    // Collected from the same cursor next run: nothing is lost (a shard of an
                    // older version refuses `CollectAll` until it is updated).
                    Err(_) => run.shard_failed(),
                }
            }
            writes.extend(root.finish_run(&mut run, now, &cfg));
            writes
        })?;
        if let Some(url) = cfg.alert_webhook_url.as_deref() {
            let timeout_ms = cfg.alert_webhook_timeout_ms;
            let end = delivery_deadline(now, timeout_ms);
            let due = self.root(db)?.due(now);
            for id in due {
                if clock() >= end {
                    break;
                }
                let payload = self.root(db)?.payload(id);
                let Some(payload) = payload else { continue };
                let delivered = post_json(url, &payload, timeout_ms).await;
                self.step(db, |root| {
                    if delivered {
                        root.delivered(&mut run, id)
                    } else {
                        root.failed(&mut run, id, clock())
                    }
                })?;
            }
        }
        let writes = self.root(db)?.daily(now, &cfg.platform_prices);
        self.root.write(|| {
            persist(db, &writes)?;
            self.base.record_alarm_run(db, now)
        })?;
        Ok(run.report)
    }
}

/// POSTs a JSON payload; true on a 2xx within `timeout_ms`.
async fn post_json(url: &str, payload: &str, timeout_ms: u64) -> bool {
    let headers = Headers::new();
    if headers.set("Content-Type", "application/json").is_err() {
        return false;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(payload.into()));
    let Ok(req) = HttpRequest::new_with_init(url, &init) else {
        return false;
    };
    let send = Box::pin(async move { Fetch::Request(req).send().await });
    match select(send, worker::Delay::from(Duration::from_millis(timeout_ms))).await {
        Either::Left((Ok(resp), _)) => (200..300).contains(&resp.status_code()),
        _ => false,
    }
}
