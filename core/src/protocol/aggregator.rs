//! Messages for `AggregatorDO`. Two roles share the class: ingest shards (`aggregator:{n}`) and
//! the root (`aggregator:root`), whose alarm merges the shards, evaluates alerts, delivers
//! webhooks and writes the daily report.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::observe::alerts::{AlertState, Notification, Rule};
use crate::observe::export::Issue;
use crate::observe::series::{period_start, Lifetime, Period};
use crate::observe::spend::{Spend, SpendRecord};
use crate::observe::{Agg, Record};
use crate::UnixMillis;

/// The root's object name.
pub const ROOT: &str = "aggregator:root";

/// A request to an aggregator object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Shard: record a batch. A batch id seen in the last 10 minutes is acknowledged without
    /// being counted again (a retried delivery).
    Record {
        /// Batch id (unique per flush).
        batch: String,
        /// Records.
        records: Vec<Record>,
    },
    /// Shard: seal what has ended and answer the windows at or after `since`.
    Collect {
        /// The root's cursor for this shard.
        since: UnixMillis,
    },
    /// Shard or root: statistics.
    Stats,
    /// Root: run the rollup now (the alarm's work); answers what it did.
    Run,
    /// Root: make sure the alarm runs.
    Wake,
    /// Root: a period's aggregate with what `/metrics` needs to complete it.
    Summary {
        /// Period.
        period: Period,
    },
    /// Root: chart points of a period.
    Points {
        /// Period.
        period: Period,
    },
    /// Root: alert rules, states, history and delivery counters.
    Alerts,
    /// Root: the latest daily report (or one for the last 24 hours when none exists yet).
    Report,
    /// Shard: record a batch of records and spend records (same batch-id dedupe as `Record`).
    Ingest {
        /// Batch id (unique per flush).
        batch: String,
        /// Records.
        records: Vec<Record>,
        /// Spend of settled AI requests.
        spend: Vec<SpendRecord>,
    },
    /// Shard: like `Collect`, and the spend windows sealed with the same boundary
    /// (answers [`Response::Collected`]).
    CollectAll {
        /// The root's cursor for this shard.
        since: UnixMillis,
    },
    /// Root: the period's summary and spend under one set of cursors
    /// (answers [`Response::SpendSummary`]).
    SpendSummary {
        /// Period.
        period: Period,
    },
}

/// A shard's windows and spend windows, sealed at the same boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collected {
    /// The metric windows (as `Collect` answers them).
    pub windows: Windows,
    /// Sealed spend windows at or after the requested cursor, before `windows.sealed_before`.
    pub spend_sealed: Vec<(UnixMillis, Spend)>,
    /// Spend windows not sealed yet (live).
    pub spend_open: Vec<(UnixMillis, Spend)>,
}

/// The root's part of a `/metrics` answer with spend: the summary and the spend of the period
/// and of today (UTC), all read under the summary's cursors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpendSummary {
    /// The summary (its cursors also apply to the spend).
    pub summary: Summary,
    /// The period's merged spend.
    pub spend: Spend,
    /// Today's merged spend (since UTC midnight), for budget use.
    pub today: Spend,
}

impl SpendSummary {
    /// Adds the shards' spend windows the root has not merged (`live`, each at or after its
    /// shard's cursor) to the period and to today.
    pub fn add_live(
        &mut self,
        period: Period,
        now: UnixMillis,
        fine_ms: i64,
        live: &[(UnixMillis, Spend)],
    ) {
        let start = period_start(period, now, fine_ms);
        let midnight = crate::observe::series::floor(now, crate::observe::series::DAY_MS);
        for (at, s) in live {
            if *at >= start {
                self.spend.merge(s);
            }
            if *at >= midnight {
                self.today.merge(s);
            }
        }
    }
}

/// A shard's windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Windows {
    /// Sealed windows at or after the requested cursor.
    pub sealed: Vec<(UnixMillis, Agg)>,
    /// Windows not sealed yet (live).
    pub open: Vec<(UnixMillis, Agg)>,
    /// Everything before this is sealed.
    pub sealed_before: UnixMillis,
}

/// Object statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `shard` or `root`.
    pub role: String,
    /// Windows (shard) or fine buckets (root) stored.
    pub windows: u64,
    /// Shard: everything before this is sealed.
    pub sealed_before: UnixMillis,
    /// Shard: records accepted; root: records merged (lifetime requests).
    pub records: u64,
    /// Shard: records counted in a later bucket because they arrived after their bucket sealed.
    pub late: u64,
    /// Shard: batches acknowledged as duplicates.
    pub duplicate_batches: u64,
    /// Root: per-shard cursors.
    pub cursors: Vec<(u32, UnixMillis)>,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
}

/// What one rollup run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Shard windows merged.
    pub merged: u32,
    /// Shard windows skipped as already merged.
    pub skipped: u32,
    /// Shards answered.
    pub shards_ok: u32,
    /// Shards that failed (retried next run; nothing is lost).
    pub shards_failed: u32,
    /// Notifications produced.
    pub notifications: u32,
    /// Webhook deliveries that succeeded.
    pub delivered: u32,
    /// Webhook deliveries that failed (retried with backoff).
    pub failed: u32,
}

/// The root's part of a `/metrics` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The root's time.
    pub now: UnixMillis,
    /// The period's merged buckets.
    pub agg: Agg,
    /// Lifetime counters.
    pub lifetime: Lifetime,
    /// Per-shard cursors: `/metrics` adds each shard's windows at or after its cursor.
    pub cursors: Vec<(u32, UnixMillis)>,
    /// Start of the earliest bucket in the period with traffic.
    pub earliest: Option<UnixMillis>,
    /// Firing alerts.
    pub issues: Vec<Issue>,
}

impl Summary {
    /// Completes the root's part with the shards' windows it has not merged (`live`, each at or
    /// after its shard's cursor), so the answer is exact and current. Returns the milliseconds of
    /// the period that had traffic (for cost extrapolation, at least one fine bucket).
    pub fn add_live(
        &mut self,
        period: Period,
        now: UnixMillis,
        fine_ms: i64,
        live: &[(UnixMillis, Agg)],
    ) -> i64 {
        let start = period_start(period, now, fine_ms);
        for (at, w) in live {
            self.lifetime.add(w);
            if *at >= start {
                self.agg.merge(w);
                if w.requests > 0 {
                    self.earliest = Some(self.earliest.map_or(*at, |e| e.min(*at)));
                }
            }
        }
        self.earliest
            .map_or(fine_ms, |e| now.since(e).max(fine_ms))
            .min(period.span_ms())
    }
}

/// Alerts view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertsView {
    /// Rules in force.
    pub rules: Vec<Rule>,
    /// Per-rule states.
    pub states: Vec<AlertState>,
    /// Notifications, oldest first.
    pub history: Vec<Notification>,
    /// Whether a webhook is configured.
    pub webhook: bool,
    /// Notifications waiting for delivery.
    pub pending: u32,
    /// Delivered so far.
    pub delivered: u64,
    /// Dropped after the last retry.
    pub dropped: u64,
}

/// A reply from an aggregator object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Batch handled.
    Ingested {
        /// Records counted.
        accepted: u32,
        /// Of which late (counted in the first open bucket).
        late: u32,
        /// The batch was a duplicate and was not counted again.
        duplicate: bool,
    },
    /// A shard's windows.
    Windows(Windows),
    /// Statistics.
    Stats(Stats),
    /// A rollup run.
    Ran(RunReport),
    /// Woken.
    Awake,
    /// The root's summary.
    Summary(Box<Summary>),
    /// Chart points.
    Points {
        /// Step between points, ms.
        step_ms: i64,
        /// Points, oldest first.
        points: Vec<(UnixMillis, Agg)>,
        /// Per-shard cursors (live windows are added by the caller).
        cursors: Vec<(u32, UnixMillis)>,
    },
    /// Alerts.
    Alerts(Box<AlertsView>),
    /// The daily report as JSON text.
    Report(String),
    /// A shard's windows and spend windows (to `CollectAll`).
    Collected(Collected),
    /// The root's summary with spend (to `SpendSummary`).
    SpendSummary(Box<SpendSummary>),
}
