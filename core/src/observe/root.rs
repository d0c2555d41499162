//! [`Root`]: the root aggregator (`aggregator:root`) as a state machine, every rule its Durable
//! Object applies, free of storage and network. It owns the merged [`Series`], the alert
//! [`Engine`], the webhook [`Outbox`] and the daily-report bookkeeping.
//!
//! The adapter loads the stored rows once ([`Stored`] → [`Root::load`]) and persists every
//! returned [`Write`] in order, in the same synchronous block as the call that produced it. It
//! keeps only the I/O: asking the shards for their windows and POSTing webhooks.
//!
//! **A run** (the root's alarm, every `ROLLUP_INTERVAL_MS`, forever once woken — see
//! [`Root::rearms`]):
//! 1. [`Root::collect_plan`]: each shard's cursor; the adapter collects every shard
//!    concurrently from its cursor on.
//! 2. [`Root::merge`] per answer (through [`Series::apply`]): the touched fine and hour buckets,
//!    the shard's cursor and the lifetime counters, written together. A window before the
//!    cursor is skipped, so a retried or concurrent run merges nothing twice, and a shard that
//!    failed ([`Run::shard_failed`]) is simply collected from the same cursor next time; a run
//!    that missed several intervals catches up every sealed window at once.
//! 3. [`Root::finish_run`]: retention (fine buckets 24 h, hours 7 d), then the alert rules over
//!    the merged buckets plus the shards' open windows; with a webhook configured, the
//!    notifications are queued in the outbox.
//! 4. Delivery: [`Root::due`] oldest first within [`delivery_deadline`] (`3 × timeout`);
//!    [`Root::delivered`] acknowledges, [`Root::failed`] retries with exponential backoff.
//! 5. [`Root::daily`]: after each UTC midnight, the previous day's report from its hour buckets,
//!    once (the day is recorded even when it had no traffic).
//!
//! **Spend.** [`Root::merge_collected`] merges a shard's `CollectAll` answer: the metric windows
//! through [`Root::merge`], and the sealed spend windows in `[cursor before, new seal)` into the
//! spend buckets ([`SpendSeries`]), with their writes in the same list as the cursor's (one
//! synchronous block), so spend is merged exactly once too: an answer applied twice finds the
//! cursor already at its seal and merges nothing. Spend buckets are pruned with the metric
//! buckets' cut-offs; the `key_budget_used_pct` rules ([`super::budget`]) are evaluated per key
//! over today's spend.
//!
//! The read-only views (`Summary`, `Points`, `Alerts`, `Report`, `Stats`) are [`Root::handle`].

use super::alerts::{Engine, Metric, Outbox};
use super::budget;
use super::export::Prices;
use super::ingest::Role;
use super::report::daily_report;
use super::series::{floor, Bucket, Lifetime, Series, HOUR_MS};
use super::spend::{Spend, SpendSeries};
use super::Agg;
use crate::config::Config;
use crate::protocol::aggregator::{
    AlertsView, Collected, Request, Response as Reply, RunReport, SpendSummary, Stats, Summary,
    Windows,
};
use crate::{GatewayError, UnixMillis};

pub use super::series::DAY_MS;

/// Which bucket table a [`Write::Bucket`] goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Fine buckets (`ROLLUP_BUCKET_MS` wide).
    Fine,
    /// Hour buckets.
    Hour,
}

/// What the root has stored. Blobs are postcard bytes, decoded by [`Root::load`].
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Fine buckets by start.
    pub fine: Vec<(UnixMillis, Vec<u8>)>,
    /// Hour buckets by start.
    pub hours: Vec<(UnixMillis, Vec<u8>)>,
    /// Fine spend buckets by start.
    pub spend_fine: Vec<(UnixMillis, Vec<u8>)>,
    /// Hour spend buckets by start.
    pub spend_hours: Vec<(UnixMillis, Vec<u8>)>,
    /// Per-shard cursors.
    pub cursors: Vec<(u32, UnixMillis)>,
    /// Lifetime counters.
    pub lifetime: Option<Vec<u8>>,
    /// The alert engine.
    pub engine: Option<Vec<u8>>,
    /// The webhook outbox.
    pub outbox: Option<Vec<u8>>,
    /// The latest daily report (JSON text).
    pub report: Option<Vec<u8>>,
    /// UTC midnight of the last day the report was considered (0: never).
    pub report_day: UnixMillis,
}

/// A storage change, applied by the adapter in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Upsert a bucket.
    Bucket {
        /// Its table.
        table: Table,
        /// Bucket start.
        at: UnixMillis,
        /// Its aggregate.
        agg: Agg,
    },
    /// Upsert a spend bucket.
    Spend {
        /// Its table (`spend_fine` or `spend_hours`).
        table: Table,
        /// Bucket start.
        at: UnixMillis,
        /// Its spend.
        spend: Spend,
    },
    /// Upsert a shard's cursor.
    Cursor {
        /// Shard.
        shard: u32,
        /// Everything before this is merged.
        sealed_before: UnixMillis,
    },
    /// Store the lifetime counters.
    Lifetime(Lifetime),
    /// Delete buckets and spend buckets past retention.
    Prune {
        /// Fine buckets starting before this.
        fine_before: UnixMillis,
        /// Hour buckets starting before this.
        hour_before: UnixMillis,
    },
    /// Store the alert engine.
    Engine(Engine),
    /// Store the outbox.
    Outbox(Outbox),
    /// Store the daily report (JSON text).
    Report(String),
    /// Store the day the report was last considered.
    ReportDay(UnixMillis),
}

/// One run in progress: what it did so far and the shards' open windows (for alerts only).
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The run's report.
    pub report: RunReport,
    open: Vec<(UnixMillis, Agg)>,
    open_spend: Vec<(UnixMillis, Spend)>,
}

impl Run {
    /// A shard did not answer (it is collected from the same cursor next run).
    pub fn shard_failed(&mut self) {
        self.report.shards_failed += 1;
    }
}

/// When a run's webhook deliveries must stop: `3 × timeout` after it started.
pub fn delivery_deadline(now: UnixMillis, timeout_ms: u64) -> UnixMillis {
    now.plus_ms(i64::try_from(timeout_ms.saturating_mul(3)).unwrap_or(i64::MAX))
}

/// The root aggregator.
#[derive(Debug, Clone)]
pub struct Root {
    series: Series,
    spend: SpendSeries,
    engine: Engine,
    outbox: Outbox,
    report: Option<String>,
    report_day: UnixMillis,
}

fn decode<T: serde::de::DeserializeOwned>(bytes: Option<&[u8]>) -> Option<T> {
    bytes.and_then(|b| postcard::from_bytes(b).ok())
}

fn buckets<T: serde::de::DeserializeOwned>(
    rows: Vec<(UnixMillis, Vec<u8>)>,
) -> std::collections::BTreeMap<UnixMillis, T> {
    rows.into_iter()
        .filter_map(|(at, b)| decode::<T>(Some(&b)).map(|a| (at, a)))
        .collect()
}

impl Root {
    /// Builds the root from storage with fine buckets of `fine_ms`. A bucket or blob that no
    /// longer decodes (an older layout) is dropped, or starts afresh, rather than failing every
    /// request.
    pub fn load(stored: Stored, fine_ms: i64) -> Root {
        let mut series = Series::new(fine_ms);
        series.fine = buckets(stored.fine);
        series.hours = buckets(stored.hours);
        series.cursors = stored.cursors.into_iter().collect();
        series.lifetime = decode(stored.lifetime.as_deref()).unwrap_or_default();
        let spend = SpendSeries {
            fine: buckets(stored.spend_fine),
            hours: buckets(stored.spend_hours),
        };
        Root {
            series,
            spend,
            engine: decode(stored.engine.as_deref()).unwrap_or_default(),
            outbox: decode(stored.outbox.as_deref()).unwrap_or_default(),
            report: decode(stored.report.as_deref()),
            report_day: stored.report_day,
        }
    }

    /// The merged series.
    pub fn series(&self) -> &Series {
        &self.series
    }

    /// The merged spend buckets.
    pub fn spend(&self) -> &SpendSeries {
        &self.spend
    }

    /// The alert engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The webhook outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Whether the alarm runs again after a run: always, the root tunes and alerts unattended.
    pub fn rearms(&self) -> bool {
        true
    }

    /// Each of `shards` shards with the cursor to collect it from.
    pub fn collect_plan(&self, shards: u32) -> Vec<(u32, UnixMillis)> {
        (0..shards).map(|i| (i, self.series.cursor(i))).collect()
    }

    /// Merges one shard's answer (see the module docs).
    pub fn merge(&mut self, run: &mut Run, shard: u32, w: Windows) -> Vec<Write> {
        let applied = self.series.apply(shard, &w.sealed, w.sealed_before);
        run.report.merged += applied.merged;
        run.report.skipped += applied.skipped;
        run.report.shards_ok += 1;
        run.open.extend(w.open);
        let mut writes = Vec::new();
        for b in &applied.touched {
            let (table, at, map) = match b {
                Bucket::Fine(t) => (Table::Fine, *t, &self.series.fine),
                Bucket::Hour(t) => (Table::Hour, *t, &self.series.hours),
            };
            if let Some(agg) = map.get(&at) {
                writes.push(Write::Bucket {
                    table,
                    at,
                    agg: agg.clone(),
                });
            }
        }
        if applied.advanced {
            writes.push(Write::Cursor {
                shard,
                sealed_before: w.sealed_before,
            });
            writes.push(Write::Lifetime(self.series.lifetime.clone()));
        }
        writes
    }

    /// Merges one shard's `CollectAll` answer: its windows as [`Root::merge`] does and its
    /// sealed spend windows from the old cursor to the new seal (see the module docs).
    pub fn merge_collected(&mut self, run: &mut Run, shard: u32, c: Collected) -> Vec<Write> {
        let before = self.series.cursor(shard);
        let seal = c.windows.sealed_before;
        let mut writes = self.merge(run, shard, c.windows);
        if self.series.cursor(shard) > before {
            let touched = self
                .spend
                .apply(&c.spend_sealed, before, seal, self.series.fine_ms);
            for b in touched {
                let (table, at, map) = match b {
                    Bucket::Fine(t) => (Table::Fine, t, &self.spend.fine),
                    Bucket::Hour(t) => (Table::Hour, t, &self.spend.hours),
                };
                if let Some(spend) = map.get(&at) {
                    writes.push(Write::Spend {
                        table,
                        at,
                        spend: spend.clone(),
                    });
                }
            }
        }
        run.open_spend.extend(c.spend_open);
        writes
    }

    /// Today's spend (since UTC midnight): merged buckets plus `open` shard windows.
    fn today(&self, now: UnixMillis, open: &[(UnixMillis, Spend)]) -> Spend {
        let midnight = floor(now, DAY_MS);
        let mut t = self.spend.since(midnight);
        for (_, s) in open.iter().filter(|(at, _)| *at >= midnight) {
            t.merge(s);
        }
        t
    }

    /// The rules in force with one instance per key of every `key_budget_used_pct` rule that
    /// has a state (for the views).
    fn shown_rules(&self, cfg: &Config) -> Vec<super::alerts::Rule> {
        budget::expand(&cfg.alert_rules, &self.engine.states, None).0
    }

    /// After the merges: retention, then the alert rules over the merged buckets plus the open
    /// windows the shards answered; notifications are queued when a webhook is configured.
    pub fn finish_run(&mut self, run: &mut Run, now: UnixMillis, cfg: &Config) -> Vec<Write> {
        let (fine_before, hour_before) = self.series.prune(now);
        self.spend.prune(fine_before, hour_before);
        let today = self.today(now, &run.open_spend);
        let (rules, keys) = budget::expand(&cfg.alert_rules, &self.engine.states, Some(&today));
        let series = &self.series;
        let open = &run.open;
        let notes = self.engine.evaluate(
            now,
            &rules,
            i64::try_from(cfg.alert_repeat_interval_ms).unwrap_or(i64::MAX),
            |rule| {
                if rule.metric == Metric::KeyBudgetUsedPct {
                    return keys
                        .get(&rule.name)
                        .and_then(|k| budget::observe(&today, k));
                }
                let mut a = series.recent(now, rule.window_ms);
                let since =
                    floor(now.plus_ms(-rule.window_ms), series.fine_ms).plus_ms(series.fine_ms);
                for (t, w) in open {
                    if *t >= since {
                        a.merge(w);
                    }
                }
                rule.metric.value(&a).map(|v| (v, a.requests))
            },
        );
        run.report.notifications = notes.len() as u32;
        if cfg.alert_webhook_url.is_some() {
            self.outbox.push(now, notes);
        }
        vec![
            Write::Prune {
                fine_before,
                hour_before,
            },
            Write::Engine(self.engine.clone()),
            Write::Outbox(self.outbox.clone()),
        ]
    }

    /// Notification ids due for delivery at `now`, oldest first.
    pub fn due(&self, now: UnixMillis) -> Vec<u64> {
        self.outbox.due(now)
    }

    /// The webhook payload (JSON text) of queued notification `id`.
    pub fn payload(&self, id: u64) -> Option<String> {
        self.outbox
            .get(id)
            .map(|q| q.notification.payload().to_string())
    }

    /// Notification `id` was delivered.
    pub fn delivered(&mut self, run: &mut Run, id: u64) -> Vec<Write> {
        self.outbox.ack(id);
        run.report.delivered += 1;
        vec![Write::Outbox(self.outbox.clone())]
    }

    /// Delivering notification `id` failed at `now`: retried after a backoff, dropped after
    /// the last try.
    pub fn failed(&mut self, run: &mut Run, id: u64, now: UnixMillis) -> Vec<Write> {
        self.outbox.fail(id, now);
        run.report.failed += 1;
        vec![Write::Outbox(self.outbox.clone())]
    }

    /// After each UTC midnight, the previous day's report from its hour buckets (once; a day
    /// without traffic gets no report but is recorded as done).
    pub fn daily(&mut self, now: UnixMillis, prices: &Prices) -> Vec<Write> {
        let today = floor(now, DAY_MS);
        if self.report_day >= today {
            return Vec::new();
        }
        let yesterday = today.plus_ms(-DAY_MS);
        let mut day = Agg::default();
        for a in self.series.hours.range(yesterday..today).map(|(_, a)| a) {
            day.merge(a);
        }
        let spend = self.spend.hours_between(yesterday, today);
        let mut writes = Vec::new();
        if day.requests > 0 || !spend.is_empty() {
            let doc = daily_report(yesterday, &day, &spend, now, true, prices).to_string();
            self.report = Some(doc.clone());
            writes.push(Write::Report(doc));
        }
        self.report_day = today;
        writes.push(Write::ReportDay(today));
        writes
    }

    /// The root's statistics (object stats left default).
    pub fn stats(&self) -> Stats {
        Stats {
            role: Role::Root.name().into(),
            windows: self.series.fine.len() as u64,
            records: self.series.lifetime.requests,
            cursors: self.cursors(),
            ..Stats::default()
        }
    }

    fn cursors(&self) -> Vec<(u32, UnixMillis)> {
        self.series.cursors.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The read-only requests (and `Wake`). Returns the reply and whether the alarm must be
    /// armed: every request that makes this object the root ([`Role::claimed_by`]) does, since
    /// the root's alarm runs forever once woken. `Run` is the adapter's (it awaits the shards);
    /// shard requests are an internal error here.
    pub fn handle(
        &self,
        msg: Request,
        now: UnixMillis,
        cfg: &Config,
    ) -> Result<(Reply, bool), GatewayError> {
        let wake = Role::claimed_by(&msg) == Some(Role::Root);
        let reply = match msg {
            Request::Wake => Reply::Awake,
            Request::Summary { period } => Reply::Summary(Box::new(self.summary(period, now, cfg))),
            Request::SpendSummary { period } => Reply::SpendSummary(Box::new(SpendSummary {
                summary: self.summary(period, now, cfg),
                spend: self.spend.total(period, now, self.series.fine_ms),
                today: self.today(now, &[]),
            })),
            Request::Points { period } => {
                let (step_ms, points) = self.series.points(period, now, &[]);
                Reply::Points {
                    step_ms,
                    points,
                    cursors: self.cursors(),
                }
            }
            Request::Alerts => Reply::Alerts(Box::new(AlertsView {
                rules: self.shown_rules(cfg),
                states: self.engine.states.clone(),
                history: self.engine.history.iter().cloned().collect(),
                webhook: cfg.alert_webhook_url.is_some(),
                pending: self.outbox.queue.len() as u32,
                delivered: self.outbox.delivered,
                dropped: self.outbox.dropped,
            })),
            Request::Report => Reply::Report(self.report_view(now, &cfg.platform_prices)),
            Request::Stats => Reply::Stats(self.stats()),
            Request::Run => {
                return Err(GatewayError::Internal(
                    "Run is handled asynchronously".into(),
                ))
            }
            Request::Record { .. }
            | Request::Ingest { .. }
            | Request::Collect { .. }
            | Request::CollectAll { .. } => {
                return Err(GatewayError::Internal(
                    "a shard request reached the root machine".into(),
                ))
            }
        };
        Ok((reply, wake))
    }

    fn summary(&self, period: super::series::Period, now: UnixMillis, cfg: &Config) -> Summary {
        Summary {
            now,
            agg: self.series.total(period, now),
            lifetime: self.series.lifetime.clone(),
            cursors: self.cursors(),
            earliest: self.series.earliest(period, now),
            issues: self.engine.issues(&self.shown_rules(cfg)),
        }
    }

    /// The stored daily report, or (before the first) one for the last 24 hours.
    fn report_view(&self, now: UnixMillis, prices: &Prices) -> String {
        if let Some(doc) = &self.report {
            return doc.clone();
        }
        let mut day = Agg::default();
        let since = floor(now.plus_ms(-DAY_MS), HOUR_MS);
        for a in self.series.hours.range(since..).map(|(_, a)| a) {
            day.merge(a);
        }
        let spend = self.spend.hours_between(since, now.plus_ms(HOUR_MS));
        daily_report(floor(now, DAY_MS), &day, &spend, now, false, prices).to_string()
    }
}
