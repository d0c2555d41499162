//! `AggregatorDO`: metric shards (`aggregator:{n}`) and the root (`aggregator:root`).
//!
//! **Shard.** A batch of records is merged into the fine-bucket windows and the touched windows
//! are upserted in one synchronous block (a batch id already seen is acknowledged without being
//! counted again). `Collect` seals what has ended (minus a grace period) and returns the windows
//! from the root's cursor on. The shard's alarm seals, prunes and wakes the root.
//!
//! **Root.** Its alarm (every `ROLLUP_INTERVAL_MS`, forever once woken) collects every shard
//! concurrently, then merges each answer through `Series::apply` and persists the touched
//! buckets and the shard's cursor in one synchronous block: a retried or concurrent run merges
//! nothing twice, and a failed shard is simply collected next time. It then evaluates the alert
//! rules, delivers due webhook notifications within a time budget (failures retry with backoff),
//! and writes the daily report after each UTC midnight.

use std::cell::RefCell;
use std::time::Duration;

use futures::future::{join_all, select, Either};
use gateway_core::observe::alerts::{Engine, Outbox};
use gateway_core::observe::export::Prices;
use gateway_core::observe::report::daily_report;
use gateway_core::observe::series::{floor, Bucket, Lifetime, Series, Shard, HOUR_MS};
use gateway_core::observe::Agg;
use gateway_core::protocol::aggregator::{
    AlertsView, Request, Response as Reply, RunReport, Stats, Summary, Windows, ROOT,
};
use gateway_core::{GatewayError, UnixMillis};
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{
    durable_object, DurableObject, Env, Fetch, Headers, Method, Request as HttpRequest,
    RequestInit, Response, State,
};

use super::{col, decode_blob, encode_blob, int, migrations, now, Base, Db, Wake};

/// Batch ids are remembered this long (a retried delivery arrives well within it).
const BATCH_MEMORY_MS: i64 = 600_000;
const DAY_MS: i64 = 86_400_000;

/// A metric shard or the root.
#[durable_object(alarm)]
pub struct AggregatorDO {
    base: Base,
    shard: RefCell<Option<Shard>>,
    root: RefCell<Option<RootState>>,
}

/// The root's in-memory state (mirrors storage).
struct RootState {
    series: Series,
    engine: Engine,
    outbox: Outbox,
}

fn blob_get<T: DeserializeOwned>(db: &Db, name: &str) -> Option<T> {
    db.rows("SELECT value FROM blobs WHERE name = ?", vec![name.into()])
        .ok()?
        .first()
        .and_then(|r| col(r, 0).ok().and_then(|v| decode_blob(v).ok()))
}

fn blob_put<T: Serialize>(db: &Db, name: &str, value: &T) -> Result<(), GatewayError> {
    db.exec(
        "INSERT INTO blobs (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        vec![name.into(), encode_blob(value)?],
    )
}

fn buckets(db: &Db, table: &str) -> Result<Vec<(UnixMillis, Agg)>, GatewayError> {
    let mut out = Vec::new();
    for row in db.rows(&format!("SELECT bucket, agg FROM {table}"), vec![])? {
        // A bucket that no longer decodes is dropped rather than failing every request.
        if let Ok(agg) = decode_blob::<Agg>(col(&row, 1)?) {
            out.push((UnixMillis(int(col(&row, 0)?).unwrap_or(0)), agg));
        }
    }
    Ok(out)
}

impl AggregatorDO {
    fn cfg(&self) -> Result<std::rc::Rc<gateway_core::config::Config>, GatewayError> {
        self.base.cfg()
    }

    fn interval(&self) -> u64 {
        self.cfg().map(|c| c.rollup_interval_ms).unwrap_or(60_000)
    }

    fn role(db: &Db) -> Result<Option<String>, GatewayError> {
        db.meta_text("role")
    }

    fn set_role(db: &Db, role: &str) -> Result<(), GatewayError> {
        if Self::role(db)?.as_deref() != Some(role) {
            db.set_meta_text("role", role)?;
        }
        Ok(())
    }

    // ---- shard ----

    fn load_shard(&self, db: &Db) -> Result<(), GatewayError> {
        if self.shard.borrow().is_some() {
            return Ok(());
        }
        let fine = self.cfg()?.rollup_bucket_ms as i64;
        let mut s = Shard::new(fine, UnixMillis(db.meta("sealed_before")?));
        s.windows = buckets(db, "windows")?.into_iter().collect();
        *self.shard.borrow_mut() = Some(s);
        Ok(())
    }

    fn with_shard<T>(
        &self,
        db: &Db,
        f: impl FnOnce(&mut Shard) -> Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        self.load_shard(db)?;
        let mut guard = self.shard.borrow_mut();
        let s = guard
            .as_mut()
            .ok_or_else(|| GatewayError::Internal("shard not loaded".into()))?;
        f(s)
    }

    fn store_windows(db: &Db, s: &Shard, touched: &[UnixMillis]) -> Result<(), GatewayError> {
        for b in touched {
            if let Some(w) = s.windows.get(b) {
                db.exec(
                    "INSERT INTO windows (bucket, agg) VALUES (?, ?) \
                     ON CONFLICT (bucket) DO UPDATE SET agg = excluded.agg",
                    vec![b.0.into(), encode_blob(w)?],
                )?;
            }
        }
        Ok(())
    }

    fn seal(&self, db: &Db, s: &mut Shard, now: UnixMillis) -> Result<(), GatewayError> {
        let grace = self.cfg()?.rollup_seal_grace_ms as i64;
        let before = s.sealed_before;
        if s.seal(now, grace) != before {
            db.set_meta("sealed_before", s.sealed_before.0)?;
        }
        Ok(())
    }

    // ---- root ----

    fn load_root(&self, db: &Db) -> Result<(), GatewayError> {
        if self.root.borrow().is_some() {
            return Ok(());
        }
        let fine = self.cfg()?.rollup_bucket_ms as i64;
        let mut series = Series::new(fine);
        series.fine = buckets(db, "fine")?.into_iter().collect();
        series.hours = buckets(db, "hours")?.into_iter().collect();
        for row in db.rows("SELECT shard, sealed_before FROM cursors", vec![])? {
            let shard = u32::try_from(int(col(&row, 0)?).unwrap_or(0)).unwrap_or(0);
            series
                .cursors
                .insert(shard, UnixMillis(int(col(&row, 1)?).unwrap_or(0)));
        }
        series.lifetime = blob_get::<Lifetime>(db, "lifetime").unwrap_or_default();
        *self.root.borrow_mut() = Some(RootState {
            series,
            engine: blob_get(db, "engine").unwrap_or_default(),
            outbox: blob_get(db, "outbox").unwrap_or_default(),
        });
        Ok(())
    }

    fn with_root<T>(
        &self,
        db: &Db,
        f: impl FnOnce(&mut RootState) -> Result<T, GatewayError>,
    ) -> Result<T, GatewayError> {
        self.load_root(db)?;
        let mut guard = self.root.borrow_mut();
        let r = guard
            .as_mut()
            .ok_or_else(|| GatewayError::Internal("root not loaded".into()))?;
        f(r)
    }

    /// Merges one shard's answer and persists the change, synchronously.
    fn apply(
        &self,
        db: &Db,
        shard: u32,
        w: &Windows,
        report: &mut RunReport,
    ) -> Result<(), GatewayError> {
        self.with_root(db, |r| {
            let applied = r.series.apply(shard, &w.sealed, w.sealed_before);
            report.merged += applied.merged;
            report.skipped += applied.skipped;
            for b in &applied.touched {
                let (table, t, map) = match b {
                    Bucket::Fine(t) => ("fine", t, &r.series.fine),
                    Bucket::Hour(t) => ("hours", t, &r.series.hours),
                };
                if let Some(agg) = map.get(t) {
                    db.exec(
                        &format!(
                            "INSERT INTO {table} (bucket, agg) VALUES (?, ?) \
                             ON CONFLICT (bucket) DO UPDATE SET agg = excluded.agg"
                        ),
                        vec![t.0.into(), encode_blob(agg)?],
                    )?;
                }
            }
            if applied.advanced {
                db.exec(
                    "INSERT INTO cursors (shard, sealed_before) VALUES (?, ?) \
                     ON CONFLICT (shard) DO UPDATE SET sealed_before = excluded.sealed_before",
                    vec![i64::from(shard).into(), w.sealed_before.0.into()],
                )?;
                blob_put(db, "lifetime", &r.series.lifetime)?;
            }
            Ok(())
        })
    }

    /// The root's alarm work: collect, merge, prune, alerts, webhooks, daily report.
    async fn run_root(&self, now: UnixMillis) -> Result<RunReport, GatewayError> {
        let db = self.base.db(migrations::AGGREGATOR, now)?;
        Self::set_role(&db, "root")?;
        let cfg = self.cfg()?;
        self.load_root(&db)?;
        let cursors: Vec<(u32, UnixMillis)> = self.with_root(&db, |r| {
            Ok((0..cfg.aggregator_shards)
                .map(|i| (i, r.series.cursor(i)))
                .collect())
        })?;
        let answers = join_all(cursors.iter().map(|(i, since)| {
            let msg = Request::Collect { since: *since };
            let name = format!("aggregator:{i}");
            async move {
                crate::stub::call::<_, Reply>(
                    &self.base.env,
                    crate::stub::binding::AGGREGATOR,
                    &name,
                    &msg,
                )
                .await
            }
        }))
        .await;
        let mut report = RunReport::default();
        let mut open: Vec<(UnixMillis, Agg)> = Vec::new();
        for ((shard, _), answer) in cursors.iter().zip(answers) {
            match answer {
                Ok(Reply::Windows(w)) => {
                    self.apply(&db, *shard, &w, &mut report)?;
                    report.shards_ok += 1;
                    open.extend(w.open);
                }
                _ => report.shards_failed += 1,
            }
        }
        // Retention, alerts (over merged buckets plus the shards' open windows).
        let notes = self.with_root(&db, |r| {
            let (fine_cut, hour_cut) = r.series.prune(now);
            db.exec("DELETE FROM fine WHERE bucket < ?", vec![fine_cut.0.into()])?;
            db.exec(
                "DELETE FROM hours WHERE bucket < ?",
                vec![hour_cut.0.into()],
            )?;
            let series = &r.series;
            let notes = r.engine.evaluate(
                now,
                &cfg.alert_rules,
                cfg.alert_repeat_interval_ms as i64,
                |rule| {
                    let mut a = series.recent(now, rule.window_ms);
                    let since =
                        floor(now.plus_ms(-rule.window_ms), series.fine_ms).plus_ms(series.fine_ms);
                    for (t, w) in &open {
                        if *t >= since {
                            a.merge(w);
                        }
                    }
                    rule.metric.value(&a).map(|v| (v, a.requests))
                },
            );
            if cfg.alert_webhook_url.is_some() {
                r.outbox.push(now, notes.clone());
            }
            blob_put(&db, "engine", &r.engine)?;
            blob_put(&db, "outbox", &r.outbox)?;
            Ok(notes)
        })?;
        report.notifications = notes.len() as u32;
        if let Some(url) = cfg.alert_webhook_url.as_deref() {
            let (delivered, failed) = self
                .deliver(&db, url, cfg.alert_webhook_timeout_ms, now)
                .await?;
            report.delivered = delivered;
            report.failed = failed;
        }
        self.daily(&db, now, &cfg.platform_prices)?;
        self.base.record_alarm_run(&db, now)?;
        Ok(report)
    }

    /// Delivers due notifications, oldest first, within `3 × timeout` in total.
    async fn deliver(
        &self,
        db: &Db,
        url: &str,
        timeout_ms: u64,
        now: UnixMillis,
    ) -> Result<(u32, u32), GatewayError> {
        let due = self.with_root(db, |r| Ok(r.outbox.due(now)))?;
        let budget_end = now.plus_ms(3 * timeout_ms as i64);
        let (mut ok, mut failed) = (0, 0);
        for id in due {
            if super::now() >= budget_end {
                break;
            }
            let Some(payload) = self.with_root(db, |r| {
                Ok(r.outbox
                    .get(id)
                    .map(|q| q.notification.payload().to_string()))
            })?
            else {
                continue;
            };
            let delivered = post_json(url, &payload, timeout_ms).await;
            self.with_root(db, |r| {
                if delivered {
                    r.outbox.ack(id);
                } else {
                    r.outbox.fail(id, super::now());
                }
                blob_put(db, "outbox", &r.outbox)
            })?;
            if delivered {
                ok += 1;
            } else {
                failed += 1;
            }
        }
        Ok((ok, failed))
    }

    /// After each UTC midnight, the previous day's report from its hour buckets (once).
    fn daily(&self, db: &Db, now: UnixMillis, prices: &Prices) -> Result<(), GatewayError> {
        let today = floor(now, DAY_MS);
        let last = UnixMillis(db.meta("report_day")?);
        if last >= today {
            return Ok(());
        }
        let yesterday = today.plus_ms(-DAY_MS);
        let doc = self.with_root(db, |r| {
            let mut day = Agg::default();
            for a in r.series.hours.range(yesterday..today).map(|(_, a)| a) {
                day.merge(a);
            }
            Ok((day.requests > 0).then(|| daily_report(yesterday, &day, now, true, prices)))
        })?;
        if let Some(doc) = doc {
            blob_put(db, "report", &doc.to_string())?;
        }
        db.set_meta("report_day", today.0)
    }

    fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::AGGREGATOR, now)?;
        match msg {
            Request::Record { batch, records } => {
                Self::set_role(&db, "shard")?;
                if batch.is_empty() || batch.len() > 128 {
                    return Err(GatewayError::bad_request("invalid-event", "bad batch id"));
                }
                for r in &records {
                    r.validate()?;
                }
                let seen = !db
                    .rows(
                        "SELECT 1 FROM batches WHERE id = ?",
                        vec![batch.as_str().into()],
                    )?
                    .is_empty();
                if seen {
                    db.add_meta("duplicate_batches", 1)?;
                    return Ok((
                        Reply::Ingested {
                            accepted: 0,
                            late: 0,
                            duplicate: true,
                        },
                        false,
                    ));
                }
                let late = self.with_shard(&db, |s| {
                    let (touched, late) = s.ingest(&records);
                    Self::store_windows(&db, s, &touched)?;
                    Ok(late)
                })?;
                db.exec(
                    "INSERT INTO batches (id, at) VALUES (?, ?)",
                    vec![batch.into(), now.0.into()],
                )?;
                db.add_meta("records", records.len() as i64)?;
                db.add_meta("late", i64::from(late))?;
                Ok((
                    Reply::Ingested {
                        accepted: records.len() as u32,
                        late,
                        duplicate: false,
                    },
                    true,
                ))
            }
            Request::Collect { since } => {
                let w = self.with_shard(&db, |s| {
                    self.seal(&db, s, now)?;
                    let sealed = s.sealed_since(since);
                    let open = s.live_since(s.sealed_before.max(since));
                    Ok(Windows {
                        sealed,
                        open,
                        sealed_before: s.sealed_before,
                    })
                })?;
                Ok((Reply::Windows(w), false))
            }
            Request::Stats => {
                let role = Self::role(&db)?.unwrap_or_else(|| "shard".into());
                let mut stats = Stats {
                    role: role.clone(),
                    object: self.base.object_stats(&db)?,
                    duplicate_batches: u64::try_from(db.meta("duplicate_batches")?).unwrap_or(0),
                    late: u64::try_from(db.meta("late")?).unwrap_or(0),
                    ..Stats::default()
                };
                if role == "root" {
                    self.with_root(&db, |r| {
                        stats.windows = r.series.fine.len() as u64;
                        stats.records = r.series.lifetime.requests;
                        stats.cursors = r.series.cursors.iter().map(|(k, v)| (*k, *v)).collect();
                        Ok(())
                    })?;
                } else {
                    self.with_shard(&db, |s| {
                        stats.windows = s.windows.len() as u64;
                        stats.sealed_before = s.sealed_before;
                        Ok(())
                    })?;
                    stats.records = u64::try_from(db.meta("records")?).unwrap_or(0);
                }
                Ok((Reply::Stats(stats), false))
            }
            Request::Wake => {
                Self::set_role(&db, "root")?;
                Ok((Reply::Awake, true))
            }
            Request::Run => Err(GatewayError::Internal(
                "Run is handled asynchronously".into(),
            )),
            Request::Summary { period } => {
                Self::set_role(&db, "root")?;
                self.with_root(&db, |r| {
                    let earliest = r.series.earliest(period, now);
                    let issues = r.engine.issues(&self.cfg()?.alert_rules);
                    Ok((
                        Reply::Summary(Box::new(Summary {
                            now,
                            agg: r.series.total(period, now),
                            lifetime: r.series.lifetime.clone(),
                            cursors: r.series.cursors.iter().map(|(k, v)| (*k, *v)).collect(),
                            earliest,
                            issues,
                        })),
                        true,
                    ))
                })
            }
            Request::Points { period } => {
                Self::set_role(&db, "root")?;
                self.with_root(&db, |r| {
                    let (step_ms, points) = r.series.points(period, now, &[]);
                    Ok((
                        Reply::Points {
                            step_ms,
                            points,
                            cursors: r.series.cursors.iter().map(|(k, v)| (*k, *v)).collect(),
                        },
                        true,
                    ))
                })
            }
            Request::Alerts => {
                let cfg = self.cfg()?;
                self.with_root(&db, |r| {
                    Ok((
                        Reply::Alerts(Box::new(AlertsView {
                            rules: cfg.alert_rules.clone(),
                            states: r.engine.states.clone(),
                            history: r.engine.history.iter().cloned().collect(),
                            webhook: cfg.alert_webhook_url.is_some(),
                            pending: r.outbox.queue.len() as u32,
                            delivered: r.outbox.delivered,
                            dropped: r.outbox.dropped,
                        })),
                        false,
                    ))
                })
            }
            Request::Report => {
                if let Some(doc) = blob_get::<String>(&db, "report") {
                    return Ok((Reply::Report(doc), false));
                }
                let prices = self.cfg()?.platform_prices;
                self.with_root(&db, |r| {
                    let mut day = Agg::default();
                    let since = floor(now.plus_ms(-DAY_MS), HOUR_MS);
                    for a in r.series.hours.range(since..).map(|(_, a)| a) {
                        day.merge(a);
                    }
                    let doc = daily_report(floor(now, DAY_MS), &day, now, false, &prices);
                    Ok((Reply::Report(doc.to_string()), false))
                })
            }
        }
    }

    /// A shard's alarm: seal, prune windows and old batch ids, wake the root.
    async fn shard_alarm(&self, now: UnixMillis) -> Result<bool, GatewayError> {
        let db = self.base.db(migrations::AGGREGATOR, now)?;
        let busy = self.with_shard(&db, |s| {
            self.seal(&db, s, now)?;
            let cut = s.prune(now);
            db.exec("DELETE FROM windows WHERE bucket < ?", vec![cut.0.into()])?;
            Ok(!s.windows.is_empty())
        })?;
        db.exec(
            "DELETE FROM batches WHERE at < ?",
            vec![now.plus_ms(-BATCH_MEMORY_MS).0.into()],
        )?;
        self.base.record_alarm_run(&db, now)?;
        // The root's alarm runs forever once woken; waking it is idempotent.
        let _ = crate::stub::call::<_, Reply>(
            &self.base.env,
            crate::stub::binding::AGGREGATOR,
            ROOT,
            &Request::Wake,
        )
        .await;
        Ok(busy)
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

impl DurableObject for AggregatorDO {
    fn new(state: State, env: Env) -> Self {
        AggregatorDO {
            base: Base::new(state, env),
            shard: RefCell::new(None),
            root: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: HttpRequest) -> worker::Result<Response> {
        self.base
            .serve(&mut req, self.interval(), |msg, now| async move {
                let result = match msg {
                    // `Run` awaits other objects and webhooks.
                    Request::Run => self.run_root(now).await.map(|r| (Reply::Ran(r), true)),
                    msg => self.handle(msg, now),
                };
                result.map(|(r, changed)| (r, Wake::from(changed)))
            })
            .await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = now();
        let db = match self.base.db(migrations::AGGREGATOR, now) {
            Ok(db) => db,
            Err(e) => return Err(worker::Error::RustError(e.to_string())),
        };
        let role = Self::role(&db).ok().flatten();
        let outcome = if role.as_deref() == Some("root") {
            // The root always re-arms: it tunes and alerts unattended.
            self.run_root(now).await.map(|_| true)
        } else {
            self.shard_alarm(now).await
        };
        self.base.finish_alarm(now, outcome, self.interval()).await
    }
}
