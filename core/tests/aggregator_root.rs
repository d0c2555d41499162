//! Scenario tests of the aggregator on simulated time, through the public core API only:
//! shards are [`Ingest`] machines, the root is a [`Root`], and "storage" is an in-memory struct
//! the returned writes are applied to, from which a fresh machine is re-loaded where a restart
//! (eviction, a lost or retried alarm) matters. The run loop below is what `AggregatorDO`'s
//! root does, minus the network.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use gateway_core::config::Config;
use gateway_core::observe::alerts::{Engine, Outbox, Phase, Status};
use gateway_core::observe::ingest::{self, Counter, Counters, Ingest, BATCH_MEMORY_MS};
use gateway_core::observe::root::{self, delivery_deadline, Root, Run, Table, DAY_MS};
use gateway_core::observe::series::{Lifetime, Period};
use gateway_core::observe::spend::{Spend, SpendRecord};
use gateway_core::observe::{Agg, CacheOutcome, Record};
use gateway_core::protocol::aggregator::{
    Collected, Request, Response as Reply, RunReport, SpendSummary, Summary, Windows,
};
use gateway_core::UnixMillis;

const FINE: i64 = 60_000;
const GRACE: i64 = 5_000;
const MIN: i64 = 60_000;
/// A UTC midnight (2024-10-04).
const DAY0: i64 = 20_000 * DAY_MS;

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap()
}

fn config(vars: &[(&str, &str)]) -> Config {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&move |k| vars.get(k).cloned()).unwrap()
}

fn rec(at: i64, status: u16, cache: CacheOutcome) -> Record {
    Record {
        at: UnixMillis(at),
        status,
        latency_ms: 20,
        cache,
        rate_limited: false,
        upstream_calls: u8::from(cache == CacheOutcome::Miss),
        key: "g/k".into(),
        provider: None,
        provider_latency_ms: 0,
        provider_error: false,
        cost_micro_usd: 0,
    }
}

/// `n` records at `at`, the first `errors` of them 502s; every third a cache hit.
fn batch(at: i64, n: usize, errors: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let cache = if i % 3 == 0 {
                CacheOutcome::Hit
            } else {
                CacheOutcome::Miss
            };
            rec(at + i as i64, if i < errors { 502 } else { 200 }, cache)
        })
        .collect()
}

// ---- a simulated shard object ----

#[derive(Default)]
struct ShardDisk {
    windows: BTreeMap<UnixMillis, Agg>,
    spend: BTreeMap<UnixMillis, Spend>,
    sealed_before: UnixMillis,
    batches: BTreeMap<String, UnixMillis>,
    counters: Counters,
}

impl ShardDisk {
    fn apply(&mut self, writes: Vec<ingest::Write>) {
        for w in writes {
            match w {
                ingest::Write::Window { at, agg } => {
                    self.windows.insert(at, agg);
                }
                ingest::Write::SpendWindow { at, spend } => {
                    self.spend.insert(at, spend);
                }
                ingest::Write::SealedBefore(t) => self.sealed_before = t,
                ingest::Write::Batch { id, at } => {
                    assert!(self.batches.insert(id, at).is_none(), "batch stored twice");
                }
                ingest::Write::Count(c, d) => match c {
                    Counter::Records => self.counters.records += d,
                    Counter::Late => self.counters.late += d,
                    Counter::DuplicateBatches => self.counters.duplicate_batches += d,
                },
                ingest::Write::PruneWindows(t) => {
                    self.windows = self.windows.split_off(&t);
                    self.spend = self.spend.split_off(&t);
                }
                ingest::Write::PruneBatches(t) => self.batches.retain(|_, at| *at >= t),
            }
        }
    }

    fn load(&self) -> Ingest {
        Ingest::load(
            FINE,
            GRACE,
            ingest::Stored {
                sealed_before: self.sealed_before,
                windows: self.windows.iter().map(|(t, a)| (*t, enc(a))).collect(),
                spend_windows: self.spend.iter().map(|(t, s)| (*t, enc(s))).collect(),
                counters: self.counters,
            },
        )
    }
}

struct ShardObj {
    disk: ShardDisk,
    mem: Ingest,
}

impl ShardObj {
    fn new() -> ShardObj {
        let disk = ShardDisk::default();
        let mem = disk.load();
        ShardObj { disk, mem }
    }

    fn call(&mut self, msg: Request, now: i64) -> Result<Reply, gateway_core::GatewayError> {
        let seen = Ingest::batch(&msg).is_some_and(|id| self.disk.batches.contains_key(id));
        let (reply, writes, _) = self.mem.handle(msg, seen, UnixMillis(now))?;
        self.disk.apply(writes);
        Ok(reply)
    }

    fn record(&mut self, id: &str, records: Vec<Record>, now: i64) -> Reply {
        let msg = Request::Record {
            batch: id.into(),
            records,
        };
        self.call(msg, now).unwrap()
    }

    fn collect(&mut self, since: UnixMillis, now: i64) -> Windows {
        match self.call(Request::Collect { since }, now).unwrap() {
            Reply::Windows(w) => w,
            other => panic!("{other:?}"),
        }
    }

    fn collect_all(&mut self, since: UnixMillis, now: i64) -> Collected {
        match self.call(Request::CollectAll { since }, now).unwrap() {
            Reply::Collected(c) => c,
            other => panic!("{other:?}"),
        }
    }
}

// ---- a simulated root object ----

#[derive(Default, Clone)]
struct RootDisk {
    fine: BTreeMap<UnixMillis, Agg>,
    hours: BTreeMap<UnixMillis, Agg>,
    spend_fine: BTreeMap<UnixMillis, Spend>,
    spend_hours: BTreeMap<UnixMillis, Spend>,
    cursors: BTreeMap<u32, UnixMillis>,
    lifetime: Option<Lifetime>,
    engine: Option<Engine>,
    outbox: Option<Outbox>,
    report: Option<String>,
    report_day: UnixMillis,
    reports_written: u32,
}

impl RootDisk {
    fn apply(&mut self, writes: Vec<root::Write>) {
        for w in writes {
            match w {
                root::Write::Bucket { table, at, agg } => {
                    match table {
                        Table::Fine => self.fine.insert(at, agg),
                        Table::Hour => self.hours.insert(at, agg),
                    };
                }
                root::Write::Spend { table, at, spend } => {
                    match table {
                        Table::Fine => self.spend_fine.insert(at, spend),
                        Table::Hour => self.spend_hours.insert(at, spend),
                    };
                }
                root::Write::Cursor {
                    shard,
                    sealed_before,
                } => {
                    self.cursors.insert(shard, sealed_before);
                }
                root::Write::Lifetime(l) => self.lifetime = Some(l),
                root::Write::Prune {
                    fine_before,
                    hour_before,
                } => {
                    self.fine = self.fine.split_off(&fine_before);
                    self.hours = self.hours.split_off(&hour_before);
                    self.spend_fine = self.spend_fine.split_off(&fine_before);
                    self.spend_hours = self.spend_hours.split_off(&hour_before);
                }
                root::Write::Engine(e) => self.engine = Some(e),
                root::Write::Outbox(o) => self.outbox = Some(o),
                root::Write::Report(r) => {
                    self.report = Some(r);
                    self.reports_written += 1;
                }
                root::Write::ReportDay(d) => self.report_day = d,
            }
        }
    }

    fn load(&self) -> Root {
        let rows = |m: &BTreeMap<UnixMillis, Agg>| m.iter().map(|(t, a)| (*t, enc(a))).collect();
        let spend = |m: &BTreeMap<UnixMillis, Spend>| m.iter().map(|(t, a)| (*t, enc(a))).collect();
        Root::load(
            root::Stored {
                fine: rows(&self.fine),
                hours: rows(&self.hours),
                spend_fine: spend(&self.spend_fine),
                spend_hours: spend(&self.spend_hours),
                cursors: self.cursors.iter().map(|(s, c)| (*s, *c)).collect(),
                lifetime: self.lifetime.as_ref().map(enc),
                engine: self.engine.as_ref().map(enc),
                outbox: self.outbox.as_ref().map(enc),
                report: self.report.as_ref().map(enc),
                report_day: self.report_day,
            },
            FINE,
        )
    }
}

struct RootObj {
    disk: RootDisk,
    mem: Root,
}

impl RootObj {
    fn new() -> RootObj {
        let disk = RootDisk::default();
        let mem = disk.load();
        RootObj { disk, mem }
    }

    /// An eviction: memory is rebuilt from storage.
    fn restart(&mut self) {
        self.mem = self.disk.load();
    }

    /// One run, as the adapter does it (`CollectAll`), without webhook delivery.
    fn run(&mut self, shards: &mut [ShardObj], now: i64, cfg: &Config) -> RunReport {
        self.run_with(shards, now, cfg, &[])
    }

    /// One run in which the shards in `refusing` refuse `CollectAll` (an older version).
    fn run_with(
        &mut self,
        shards: &mut [ShardObj],
        now: i64,
        cfg: &Config,
        refusing: &[u32],
    ) -> RunReport {
        let plan = self.mem.collect_plan(shards.len() as u32);
        let answers: Vec<Option<Collected>> = plan
            .iter()
            .map(|(i, since)| {
                (!refusing.contains(i)).then(|| shards[*i as usize].collect_all(*since, now))
            })
            .collect();
        let mut run = Run::default();
        let mut writes = Vec::new();
        for ((i, _), c) in plan.iter().zip(answers) {
            match c {
                Some(c) => writes.extend(self.mem.merge_collected(&mut run, *i, c)),
                None => run.shard_failed(),
            }
        }
        writes.extend(self.mem.finish_run(&mut run, UnixMillis(now), cfg));
        writes.extend(self.mem.daily(UnixMillis(now), &cfg.platform_prices));
        self.disk.apply(writes);
        run.report
    }

    fn view(&self, msg: Request, now: i64, cfg: &Config) -> Reply {
        self.mem.handle(msg, UnixMillis(now), cfg).unwrap().0
    }

    fn summary(&self, period: Period, now: i64, cfg: &Config) -> Summary {
        match self.view(Request::Summary { period }, now, cfg) {
            Reply::Summary(s) => *s,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn rollup_merges_two_shards_and_the_summary_totals_are_exact() {
    let cfg = config(&[]);
    let mut shards = [ShardObj::new(), ShardObj::new()];
    let t = DAY0 + 10 * MIN;
    shards[0].record("a1", batch(t + 1_000, 30, 10), t + 2_000);
    shards[0].record("a2", batch(t + MIN + 1_000, 12, 0), t + MIN + 2_000);
    shards[1].record("b1", batch(t + 2 * MIN + 1_000, 20, 3), t + 2 * MIN + 2_000);
    let mut root = RootObj::new();
    let now = t + 3 * MIN + 10_000;
    let report = root.run(&mut shards, now, &cfg);
    assert_eq!(
        (
            report.merged,
            report.skipped,
            report.shards_ok,
            report.shards_failed
        ),
        (3, 0, 2, 0)
    );
    let s = root.summary(Period::Hour, now, &cfg);
    assert_eq!(s.agg.requests, 62);
    assert_eq!(s.agg.errors, 13);
    // Hits: every third record of each batch (30 → 10, 12 → 4, 20 → 7).
    assert_eq!(s.agg.cache_hits, 21);
    assert_eq!(s.lifetime.requests, 62);
    assert_eq!(s.earliest, Some(UnixMillis(t)));
    assert_eq!(
        s.cursors,
        vec![(0, UnixMillis(t + 3 * MIN)), (1, UnixMillis(t + 3 * MIN))]
    );
    // What was persisted is what memory says: a restarted root answers the same.
    root.restart();
    assert_eq!(root.summary(Period::Hour, now, &cfg), s);
    assert_eq!(root.disk.hours[&UnixMillis(DAY0)].requests, 62);
    match root.view(Request::Stats, now, &cfg) {
        Reply::Stats(st) => assert_eq!((st.role.as_str(), st.records, st.windows), ("root", 62, 3)),
        other => panic!("{other:?}"),
    }
    // A shard's counters.
    match shards[0].call(Request::Stats, now).unwrap() {
        Reply::Stats(st) => {
            assert_eq!((st.role.as_str(), st.records, st.windows), ("shard", 42, 2));
            assert_eq!(st.sealed_before, UnixMillis(t + 3 * MIN));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_same_windows_applied_twice_or_a_retried_alarm_merge_nothing_twice() {
    let cfg = config(&[]);
    let mut shard = ShardObj::new();
    let t = DAY0 + HOUR;
    shard.record("x", batch(t, 40, 4), t + 1);
    let now = t + MIN + 10_000;
    let w = shard.collect(UnixMillis(0), now);
    assert_eq!(w.sealed.len(), 1);
    let mut root = RootObj::new();
    let mut run = Run::default();
    let first = root.mem.merge(&mut run, 0, w.clone());
    assert_eq!(
        first.len(),
        4,
        "fine + hour bucket, cursor, lifetime: {first:?}"
    );
    root.disk.apply(first);
    let again = root.mem.merge(&mut run, 0, w.clone());
    assert!(again.is_empty(), "nothing to write: {again:?}");
    assert_eq!((run.report.merged, run.report.skipped), (1, 1));
    // A retried alarm after an eviction reloads the cursor with the buckets.
    root.restart();
    let mut retry = Run::default();
    assert!(root.mem.merge(&mut retry, 0, w.clone()).is_empty());
    assert_eq!(retry.report.merged, 0);
    // A run whose writes were lost (the alarm failed before they landed) is redone once.
    let lost = root.disk.clone();
    root.run(std::slice::from_mut(&mut shard), now, &cfg);
    root.disk = lost;
    root.restart();
    let redo = root.run(std::slice::from_mut(&mut shard), now, &cfg);
    assert_eq!(redo.merged, 0, "the cursor was stored with the buckets");
    assert_eq!(root.summary(Period::Hour, now, &cfg).agg.requests, 40);
    assert_eq!(root.summary(Period::Hour, now, &cfg).lifetime.requests, 40);
    // Two full runs in a row at the same time.
    let second = root.run(std::slice::from_mut(&mut shard), now, &cfg);
    assert_eq!((second.merged, second.skipped), (0, 0));
    assert_eq!(root.summary(Period::Day, now, &cfg).agg.requests, 40);
}

const HOUR: i64 = 3_600_000;

#[test]
fn a_missed_alarm_is_caught_up_exactly_by_one_run() {
    let cfg = config(&[]);
    let mut shards = [ShardObj::new(), ShardObj::new()];
    let mut root = RootObj::new();
    let t = DAY0 + 5 * HOUR;
    // One early run, then nothing for 12 intervals while traffic keeps arriving.
    shards[0].record("early", batch(t, 5, 0), t + 1);
    root.run(&mut shards, t + MIN + 10_000, &cfg);
    let mut expected = 5;
    for k in 1..=12 {
        let at = t + k * MIN + 500;
        shards[(k % 2) as usize].record(&format!("b{k}"), batch(at, k as usize, 1), at + 100);
        expected += k as u64;
    }
    // Traffic in the minute still open at the catch-up run is live, not merged.
    let now = t + 13 * MIN + 10_000;
    shards[0].record(
        "open",
        batch(t + 13 * MIN + 1_000, 7, 0),
        t + 13 * MIN + 2_000,
    );
    let report = root.run(&mut shards, now, &cfg);
    assert_eq!(report.merged, 12, "every sealed window, once");
    let s = root.summary(Period::Hour, now, &cfg);
    assert_eq!(s.agg.requests, expected);
    assert_eq!(s.agg.errors, 12);
    assert_eq!(root.disk.cursors[&0], UnixMillis(t + 13 * MIN));
    // The next run merges the window that was open, and only it.
    let later = t + 14 * MIN + 10_000;
    assert_eq!(root.run(&mut shards, later, &cfg).merged, 1);
    assert_eq!(
        root.summary(Period::Hour, later, &cfg).agg.requests,
        expected + 7
    );
}

fn alert_cfg(webhook: bool) -> Config {
    let rules = r#"[{"name":"errors","severity":"critical","metric":"error_rate","op":"above",
        "threshold":5,"for_ms":120000,"keep_firing_ms":60000,"window_ms":300000,"min_requests":5}]"#;
    let mut vars = vec![("ALERT_RULES", rules)];
    if webhook {
        vars.push(("ALERT_WEBHOOK_URL", "https://hooks.example/alerts"));
    }
    config(&vars)
}

fn phase(root: &RootObj) -> Phase {
    root.mem.engine().states[0].phase
}

#[test]
fn an_alert_goes_pending_firing_resolved_across_runs() {
    let cfg = alert_cfg(true);
    let mut shards = [ShardObj::new()];
    let mut root = RootObj::new();
    let t = DAY0 + 2 * HOUR;
    // Minute k's traffic is merged by the run at k + 1 min + 10 s. Minutes 0..=2: 50 % errors;
    // minutes 3 and 4: 1000 clean requests each.
    let mut step = |root: &mut RootObj, k: i64, n: usize, errors: usize| {
        let at = t + k * MIN + 1_000;
        shards[0].record(&format!("m{k}"), batch(at, n, errors), at + 10);
        root.run(&mut shards, t + (k + 1) * MIN + 10_000, &cfg)
    };
    assert_eq!(step(&mut root, 0, 20, 10).notifications, 0);
    assert_eq!(
        phase(&root),
        Phase::Pending {
            since: UnixMillis(t + MIN + 10_000)
        }
    );
    // The pending timer is stored: an eviction does not restart it.
    root.restart();
    assert_eq!(step(&mut root, 1, 20, 10).notifications, 0);
    assert!(
        matches!(phase(&root), Phase::Pending { since } if since == UnixMillis(t + MIN + 10_000))
    );
    let fired = step(&mut root, 2, 20, 10);
    assert_eq!(fired.notifications, 1, "held for for_ms (120 s): fires");
    assert!(matches!(phase(&root), Phase::Firing { .. }));
    let now = t + 3 * MIN + 10_000;
    let issues = root.summary(Period::Hour, now, &cfg).issues;
    assert_eq!(issues.len(), 1);
    assert_eq!(
        issues[0].message,
        "alert errors: error_rate > 5 (now 50.00)"
    );
    // Clean traffic: the condition clears, keep-firing holds it for 60 s, then it resolves.
    assert_eq!(step(&mut root, 3, 1000, 0).notifications, 0);
    assert!(matches!(
        phase(&root),
        Phase::Firing {
            clear_since: Some(_),
            ..
        }
    ));
    assert_eq!(step(&mut root, 4, 1000, 0).notifications, 1);
    assert_eq!(phase(&root), Phase::Inactive);
    let history: Vec<Status> = root.mem.engine().history.iter().map(|n| n.status).collect();
    assert_eq!(history, vec![Status::Firing, Status::Resolved]);
    // Both notifications were queued for the webhook, and stored.
    root.restart();
    assert_eq!(root.mem.outbox().queue.len(), 2);
    assert!(root
        .summary(Period::Hour, t + 5 * MIN + 10_000, &cfg)
        .issues
        .is_empty());
}

#[test]
fn webhook_failures_retry_with_backoff_and_are_acked_once_delivered() {
    let rules = r#"[{"name":"errors","severity":"critical","metric":"error_rate","op":"above",
        "threshold":5,"for_ms":0,"min_requests":5}]"#;
    let cfg = config(&[
        ("ALERT_RULES", rules),
        ("ALERT_WEBHOOK_URL", "https://hooks.example/alerts"),
    ]);
    let mut shards = [ShardObj::new()];
    let mut root = RootObj::new();
    let t = DAY0 + 3 * HOUR;
    shards[0].record("bad", batch(t + 1_000, 20, 20), t + 2_000);
    let now = t + MIN + 10_000;
    assert_eq!(root.run(&mut shards, now, &cfg).notifications, 1);
    assert_eq!(
        delivery_deadline(UnixMillis(now), cfg.alert_webhook_timeout_ms),
        UnixMillis(now + 6_000),
        "3 × the 2 s default timeout"
    );
    let due = root.mem.due(UnixMillis(now));
    assert_eq!(due.len(), 1);
    let id = due[0];
    let payload: serde_json::Value = serde_json::from_str(&root.mem.payload(id).unwrap()).unwrap();
    assert_eq!(payload["status"], "firing");
    assert_eq!(payload["alert"]["name"], "errors");
    // First failure: retried after 2 s.
    let mut run = Run::default();
    let w = root.mem.failed(&mut run, id, UnixMillis(now));
    root.disk.apply(w);
    assert!(
        root.mem.due(UnixMillis(now + 1_999)).is_empty(),
        "not before the backoff"
    );
    assert_eq!(root.mem.due(UnixMillis(now + 2_000)), vec![id]);
    // The backoff is stored: a restarted root keeps it. Second failure: 4 s.
    root.restart();
    let second = now + 2_000;
    let w = root.mem.failed(&mut run, id, UnixMillis(second));
    root.disk.apply(w);
    assert!(root.mem.due(UnixMillis(second + 3_999)).is_empty());
    assert_eq!(root.mem.due(UnixMillis(second + 4_000)), vec![id]);
    // Delivered: acknowledged once, never due again.
    let w = root.mem.delivered(&mut run, id);
    root.disk.apply(w);
    assert_eq!((run.report.failed, run.report.delivered), (2, 1));
    root.restart();
    assert!(root.mem.due(UnixMillis(second + DAY_MS)).is_empty());
    match root.view(Request::Alerts, second + 5_000, &cfg) {
        Reply::Alerts(v) => {
            assert_eq!(
                (v.pending, v.delivered, v.dropped, v.webhook),
                (0, 1, 0, true)
            );
            assert_eq!(v.history.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // Without a webhook nothing is queued.
    let mut quiet = RootObj::new();
    let mut shards = [ShardObj::new()];
    shards[0].record("bad", batch(t + 1_000, 20, 20), t + 2_000);
    let no_hook = config(&[("ALERT_RULES", rules)]);
    assert_eq!(quiet.run(&mut shards, now, &no_hook).notifications, 1);
    assert!(quiet.mem.due(UnixMillis(now)).is_empty());
}

#[test]
fn the_daily_report_is_written_once_after_midnight() {
    let cfg = config(&[]);
    let mut shards = [ShardObj::new()];
    let mut root = RootObj::new();
    let evening = DAY0 + 23 * HOUR;
    shards[0].record("late-day", batch(evening + 1_000, 90, 9), evening + 2_000);
    // Before midnight: the previous day had no traffic, so no report, but the day is done.
    root.run(&mut shards, evening + 50 * MIN, &cfg);
    assert_eq!(root.disk.reports_written, 0);
    assert_eq!(root.disk.report_day, UnixMillis(DAY0));
    // Just after midnight: yesterday's report, complete.
    let after = DAY0 + DAY_MS + 30_000;
    root.run(&mut shards, after, &cfg);
    assert_eq!(root.disk.reports_written, 1);
    let doc: serde_json::Value =
        serde_json::from_str(root.disk.report.as_deref().unwrap()).unwrap();
    let day = UnixMillis(DAY0).to_rfc3339();
    assert_eq!(doc["day"], day[..10]);
    assert_eq!(doc["complete"], true);
    assert_eq!(doc["volume"]["totalRequests"], 90);
    assert_eq!(doc["volume"]["errors"], 9);
    // Later the same day, and after a restart: no new report.
    root.run(&mut shards, after + 5 * HOUR, &cfg);
    root.restart();
    assert!(root
        .mem
        .daily(UnixMillis(after + 10 * HOUR), &cfg.platform_prices)
        .is_empty());
    root.run(&mut shards, after + 20 * HOUR, &cfg);
    assert_eq!(root.disk.reports_written, 1);
    match root.view(Request::Report, after + 20 * HOUR, &cfg) {
        Reply::Report(text) => assert_eq!(Some(text.as_str()), root.disk.report.as_deref()),
        other => panic!("{other:?}"),
    }
    // The next midnight after a day without traffic: the day is recorded, the report kept.
    let next = DAY0 + 2 * DAY_MS + 60_000;
    let w = root.mem.daily(UnixMillis(next), &cfg.platform_prices);
    assert_eq!(
        w,
        vec![root::Write::ReportDay(UnixMillis(DAY0 + 2 * DAY_MS))]
    );
}

#[test]
fn shards_dedupe_batches_validate_ids_and_their_alarm_prunes_and_wakes_the_root() {
    let mut shard = ShardObj::new();
    let t = DAY0 + 7 * HOUR;
    assert!(matches!(
        shard.record("dup", batch(t, 10, 0), t + 1),
        Reply::Ingested {
            accepted: 10,
            duplicate: false,
            ..
        }
    ));
    // A retried delivery, also after an eviction.
    shard.mem = shard.disk.load();
    assert!(matches!(
        shard.record("dup", batch(t, 10, 0), t + 2),
        Reply::Ingested {
            accepted: 0,
            duplicate: true,
            ..
        }
    ));
    assert_eq!(shard.disk.counters.records, 10);
    assert_eq!(shard.disk.counters.duplicate_batches, 1);
    for bad in [String::new(), "x".repeat(129)] {
        let msg = Request::Record {
            batch: bad,
            records: batch(t, 1, 0),
        };
        assert_eq!(Ingest::batch(&msg), None, "an invalid id is not looked up");
        let err = shard.call(msg, t + 3).unwrap_err();
        assert_eq!((err.status(), err.slug()), (400, "invalid-event"));
    }
    assert!(Ingest::batch(&Request::Record {
        batch: "y".repeat(128),
        records: vec![]
    })
    .is_some());
    // A late record (its bucket sealed) counts in the first open bucket.
    shard.collect(UnixMillis(0), t + MIN + 10_000);
    assert!(matches!(
        shard.record("late", batch(t + 5, 1, 0), t + MIN + 20_000),
        Reply::Ingested {
            accepted: 1,
            late: 1,
            ..
        }
    ));
    // The alarm: seal, keep windows within retention, forget batch ids after 10 minutes.
    // `dup` was received at t + 1: forgotten once 10 minutes have passed since.
    let fx = shard.mem.on_alarm(UnixMillis(t + 1 + BATCH_MEMORY_MS));
    assert!(fx.wake_root && fx.rearm);
    shard.disk.apply(fx.writes);
    assert_eq!(shard.disk.batches.len(), 2, "kept for exactly 10 minutes");
    let fx = shard.mem.on_alarm(UnixMillis(t + 2 + BATCH_MEMORY_MS));
    assert!(fx.wake_root && fx.rearm);
    shard.disk.apply(fx.writes);
    assert_eq!(
        shard.disk.batches.len(),
        1,
        "only `late` (received at t + 80 s) is kept"
    );
    let fx = shard.mem.on_alarm(UnixMillis(t + 2 * DAY_MS));
    shard.disk.apply(fx.writes);
    assert!(!fx.rearm, "no windows left: the alarm stops");
    assert!(shard.disk.windows.is_empty() && shard.disk.batches.is_empty());
}

#[test]
fn roles_and_wake_flags_match_the_protocol() {
    use gateway_core::observe::ingest::Role;
    let cfg = config(&[]);
    let root = RootObj::new();
    let now = DAY0 + HOUR;
    let wake = |msg: Request| root.mem.handle(msg, UnixMillis(now), &cfg).unwrap().1;
    // Requests that make the object the root arm its (forever) alarm; reads do not.
    assert!(wake(Request::Wake));
    assert!(wake(Request::Summary {
        period: Period::Hour
    }));
    assert!(wake(Request::Points {
        period: Period::Day
    }));
    assert!(!wake(Request::Alerts));
    assert!(!wake(Request::Report));
    assert!(!wake(Request::Stats));
    assert!(root.mem.rearms());
    assert!(root
        .mem
        .handle(Request::Run, UnixMillis(now), &cfg)
        .is_err());
    assert!(root
        .mem
        .handle(
            Request::Collect {
                since: UnixMillis(0)
            },
            UnixMillis(now),
            &cfg
        )
        .is_err());
    assert_eq!(Role::claimed_by(&Request::Run), Some(Role::Root));
    assert_eq!(Role::claimed_by(&Request::Alerts), None);
    let record = Request::Record {
        batch: "b".into(),
        records: vec![],
    };
    assert_eq!(Role::claimed_by(&record), Some(Role::Shard));
    assert_eq!(Role::parse(None).answering(&Request::Stats), Role::Shard);
    assert_eq!(
        Role::parse(Some("root")).answering(&Request::Stats),
        Role::Root
    );
    assert_eq!(Role::parse(Some("root")).answering(&record), Role::Shard);
    assert_eq!(
        Role::parse(Some("shard")).answering(&Request::Report),
        Role::Root
    );
    // A shard arms its alarm for a counted batch only (a duplicate changes nothing).
    let mut shard = ShardObj::new();
    let msg = |id: &str| Request::Record {
        batch: id.into(),
        records: batch(now, 2, 0),
    };
    let (_, _, armed) = shard.mem.handle(msg("z"), false, UnixMillis(now)).unwrap();
    let (_, writes, dup_armed) = shard.mem.handle(msg("z"), true, UnixMillis(now)).unwrap();
    assert!(armed && !dup_armed);
    assert_eq!(
        writes,
        vec![ingest::Write::Count(Counter::DuplicateBatches, 1)]
    );
}

// ---- spend per key and per model ----

fn spend_rec(at: i64, key: &str, model: &str, cost: u64) -> SpendRecord {
    SpendRecord {
        at: UnixMillis(at),
        key: key.into(),
        model: model.into(),
        input_tokens: 3,
        output_tokens: 16,
        cost_micro_usd: cost,
        budget_day_micro_usd: Some(1_000),
        budget_month_micro_usd: Some(20_000),
    }
}

impl ShardObj {
    fn ingest(
        &mut self,
        id: &str,
        records: Vec<Record>,
        spend: Vec<SpendRecord>,
        now: i64,
    ) -> Reply {
        let msg = Request::Ingest {
            batch: id.into(),
            records,
            spend,
        };
        self.call(msg, now).unwrap()
    }
}

impl RootObj {
    /// `/metrics`' view: the root's summary and spend, plus every shard's live spend after
    /// its cursor.
    fn spend_view(
        &self,
        shards: &mut [ShardObj],
        period: Period,
        now: i64,
        cfg: &Config,
    ) -> SpendSummary {
        let mut s = match self.view(Request::SpendSummary { period }, now, cfg) {
            Reply::SpendSummary(s) => *s,
            other => panic!("{other:?}"),
        };
        let mut live = Vec::new();
        for (i, since) in s.summary.cursors.clone() {
            let c = shards[i as usize].collect_all(since, now);
            live.extend(c.spend_sealed);
            live.extend(c.spend_open);
        }
        // Shards the root never merged are read from 0.
        for (i, sh) in shards.iter_mut().enumerate() {
            if !s.summary.cursors.iter().any(|(c, _)| *c == i as u32) {
                let c = sh.collect_all(UnixMillis(0), now);
                live.extend(c.spend_sealed);
                live.extend(c.spend_open);
            }
        }
        s.add_live(period, UnixMillis(now), FINE, &live);
        s
    }
}

#[test]
fn spend_per_key_is_the_sum_of_record_costs_across_two_shards_and_retried_runs() {
    let cfg = config(&[]);
    let mut shards = [ShardObj::new(), ShardObj::new()];
    let t = DAY0 + 2 * HOUR;
    let a = |at, c| spend_rec(at, "key_a", "gpt-4o", c);
    let b = |at, c| spend_rec(at, "key_b", "mini", c);
    let r = shards[0].ingest(
        "s0",
        batch(t, 3, 0),
        vec![a(t, 116), a(t + 5, 116), b(t, 7)],
        t + 10,
    );
    assert!(
        matches!(
            r,
            Reply::Ingested {
                accepted: 3,
                duplicate: false,
                ..
            }
        ),
        "{r:?}"
    );
    // The retried delivery of the same batch counts nothing.
    let dup = shards[0].ingest("s0", batch(t, 3, 0), vec![a(t, 116)], t + 20);
    assert!(
        matches!(
            dup,
            Reply::Ingested {
                duplicate: true,
                ..
            }
        ),
        "{dup:?}"
    );
    shards[1].ingest(
        "s1",
        vec![],
        vec![a(t + MIN, 116), a(t + MIN + 1, 116)],
        t + MIN + 10,
    );
    // A bad spend record refuses the whole batch.
    let bad = Request::Ingest {
        batch: "s2".into(),
        records: batch(t, 1, 0),
        spend: vec![spend_rec(t, "", "m", 1)],
    };
    assert!(shards[1].call(bad, t + MIN + 20).is_err());

    let mut root = RootObj::new();
    let now = t + 3 * MIN;
    // Shard 1 is of an older version and refuses `CollectAll`: nothing of it is merged and its
    // cursor does not move.
    let first = root.run_with(&mut shards, now, &cfg, &[1]);
    assert_eq!((first.shards_ok, first.shards_failed), (1, 1));
    assert_eq!(root.mem.series().cursor(1), UnixMillis(0));
    let v = root.spend_view(&mut shards, Period::Hour, now, &cfg);
    assert_eq!(
        v.spend.keys["key_a"].usage.cost_micro_usd,
        4 * 116,
        "merged + live"
    );
    // Updated, it is merged on the next run; runs repeated at the same instant (an alarm retry,
    // an admin run racing it) and a restart merge nothing twice.
    root.run(&mut shards, now, &cfg);
    root.run(&mut shards, now, &cfg);
    root.restart();
    root.run(&mut shards, now + 1, &cfg);
    let merged = root.mem.spend().total(Period::Hour, UnixMillis(now), FINE);
    let ka = merged.keys["key_a"];
    assert_eq!((ka.usage.requests, ka.usage.cost_micro_usd), (4, 4 * 116));
    assert_eq!((ka.usage.input_tokens, ka.usage.output_tokens), (12, 64));
    assert_eq!(ka.budget.day_micro_usd, Some(1_000));
    assert_eq!(merged.keys["key_b"].usage.cost_micro_usd, 7);
    assert_eq!(merged.models["gpt-4o"].requests, 4);
    assert_eq!(merged.models["mini"].cost_micro_usd, 7);
    assert_eq!(
        root.disk.spend_hours[&UnixMillis(DAY0 + 2 * HOUR)]
            .total()
            .cost_micro_usd,
        4 * 116 + 7
    );
    // A record arriving now is live in its shard: the view counts it once, before and after
    // the run that merges it.
    shards[0].ingest("s3", vec![], vec![b(now, 50)], now + 1);
    let before = root.spend_view(&mut shards, Period::Hour, now + 2, &cfg);
    assert_eq!(before.spend.keys["key_b"].usage.cost_micro_usd, 57);
    assert_eq!(before.today.keys["key_b"].usage.cost_micro_usd, 57);
    root.run(&mut shards, now + 2 * MIN, &cfg);
    let after = root.spend_view(&mut shards, Period::Hour, now + 2 * MIN, &cfg);
    assert_eq!(after.spend.keys["key_b"].usage.cost_micro_usd, 57);
    assert_eq!(after.spend.total().cost_micro_usd, 4 * 116 + 57);
    // Retention: a day later the fine spend buckets are gone, the hour ones remain (7 days).
    root.run(&mut shards, now + DAY_MS + HOUR, &cfg);
    assert!(root.disk.spend_fine.is_empty());
    assert_eq!(root.disk.spend_hours.len(), 1);
    // The daily report lists the day's spend by key and by model.
    let report: serde_json::Value =
        serde_json::from_str(root.disk.report.as_ref().unwrap()).unwrap();
    assert_eq!(report["spend"]["keys"][0]["key"], "key_a");
    assert_eq!(report["spend"]["keys"][0]["cost_micro_usd"], 4 * 116);
    assert_eq!(report["spend"]["models"][1]["model"], "mini");
}

#[test]
fn a_budget_rule_fires_per_key_over_todays_spend_and_resolves_the_next_day() {
    let rules = r#"[{"name":"budget","severity":"warning","metric":"key_budget_used_pct",
        "op":"above","threshold":80,"for_ms":60000,"keep_firing_ms":0,"min_requests":1}]"#;
    let cfg = config(&[("ALERT_RULES", rules)]);
    let mut shards = [ShardObj::new()];
    let mut root = RootObj::new();
    let t = DAY0 + 5 * HOUR;
    // key_a: 900 of 1000 (90 %), key_b: 100 of 1000.
    let spend = vec![
        spend_rec(t, "key_a", "m", 900),
        spend_rec(t, "key_b", "m", 100),
    ];
    shards[0].ingest("b", vec![], spend, t + 1);
    // Still in the open window: the rule sees it through the shard's open spend.
    root.run(&mut shards, t + 2, &cfg);
    let states = &root.mem.engine().states;
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(
        matches!(states[0].phase, Phase::Pending { .. }),
        "{states:?}"
    );
    assert_eq!(
        (states[0].rule.as_str(), states[0].value),
        ("budget:key_a", Some(90.0))
    );
    assert_eq!(states[1].phase, Phase::Inactive);
    root.run(&mut shards, t + 2 * MIN, &cfg);
    let fired: Vec<_> = root
        .mem
        .engine()
        .history
        .iter()
        .map(|n| (n.rule.clone(), n.status))
        .collect();
    assert_eq!(fired, vec![("budget:key_a".to_string(), Status::Firing)]);
    let s = root.summary(Period::Hour, t + 2 * MIN, &cfg);
    assert!(
        s.issues[0]
            .message
            .starts_with("alert budget:key_a: key_budget_used_pct > 80"),
        "{:?}",
        s.issues
    );
    match root.view(Request::Alerts, t + 2 * MIN, &cfg) {
        Reply::Alerts(v) => assert!(v.rules.iter().any(|r| r.name == "budget:key_a")),
        other => panic!("{other:?}"),
    }
    // The next UTC day starts with no spend: the alert resolves.
    root.run(&mut shards, DAY0 + DAY_MS + MIN, &cfg);
    let last = root.mem.engine().history.back().unwrap();
    assert_eq!(
        (last.rule.as_str(), last.status),
        ("budget:key_a", Status::Resolved)
    );
}

#[test]
fn the_same_collected_answer_applied_twice_merges_its_spend_once() {
    let mut shard = ShardObj::new();
    let t = DAY0 + HOUR;
    shard.ingest(
        "x",
        batch(t, 2, 0),
        vec![spend_rec(t, "key_a", "m", 116)],
        t + 1,
    );
    let c = shard.collect_all(UnixMillis(0), t + MIN + 10_000);
    assert_eq!(c.spend_sealed.len(), 1);
    let mut root = RootObj::new();
    let mut run = Run::default();
    let first = root.mem.merge_collected(&mut run, 0, c.clone());
    let spend_writes = |w: &[root::Write]| {
        w.iter()
            .filter(|w| matches!(w, root::Write::Spend { .. }))
            .count()
    };
    assert_eq!(
        spend_writes(&first),
        2,
        "fine and hour spend bucket: {first:?}"
    );
    let again = root.mem.merge_collected(&mut run, 0, c);
    assert!(again.is_empty(), "{again:?}");
    let total = root.mem.spend().since(UnixMillis(0)).total();
    assert_eq!((total.requests, total.cost_micro_usd), (1, 116));
}
