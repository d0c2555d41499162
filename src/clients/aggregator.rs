//! `AggregatorDO`: ingest shards `aggregator:{n}` (a batch goes to the shard its id hashes to)
//! and the root `aggregator:root`.

use futures::future::join_all;
use gateway_core::config::Config;
use gateway_core::observe::series::Period;
use gateway_core::observe::spend::{Spend, SpendRecord};
use gateway_core::observe::{Agg, Record};
use gateway_core::protocol::aggregator::{
    AlertsView, Collected, Request, Response, RunReport, SpendSummary, Stats, Summary, Windows,
    ROOT,
};
use gateway_core::shard::shard_name;
use gateway_core::UnixMillis;
use worker::Env;

use super::{binding, reply, Namespace};
use crate::error::AppResult;

/// A batch's fate.
pub struct Ingested {
    /// Records counted.
    pub accepted: u32,
    /// Of which late.
    pub late: u32,
}

/// Chart points and the cursors the live part starts from.
pub struct Points {
    /// Step between points, ms.
    pub step_ms: i64,
    /// Points, oldest first.
    pub points: Vec<(UnixMillis, Agg)>,
    /// Per-shard cursors.
    pub cursors: Vec<(u32, UnixMillis)>,
}

/// The shards' windows and spend windows the root has not merged.
#[derive(Default)]
pub struct Live {
    /// Metric windows.
    pub windows: Vec<(UnixMillis, Agg)>,
    /// Spend windows.
    pub spend: Vec<(UnixMillis, Spend)>,
}

/// The metric shards and their root.
pub struct Aggregator<'a> {
    ns: Namespace<'a>,
    shards: u32,
}

impl<'a> Aggregator<'a> {
    /// The client.
    pub fn new(env: &'a Env, shards: u32) -> Self {
        Aggregator {
            ns: Namespace::new(env, binding::AGGREGATOR, "aggregator"),
            shards,
        }
    }

    /// The client, with the shard count from the configuration.
    pub fn of(env: &'a Env, cfg: &Config) -> Self {
        Self::new(env, cfg.aggregator_shards)
    }

    /// Records a batch in the shard `spread_by` hashes to, trying up to `tries` times: the
    /// batch id lets the shard recognise a retried delivery that had in fact arrived, so a
    /// batch is counted once.
    pub async fn record(
        &self,
        spread_by: &str,
        batch: String,
        records: Vec<Record>,
        tries: u32,
    ) -> AppResult<Ingested> {
        let object = shard_name("aggregator", spread_by, self.shards);
        let msg = Request::Record { batch, records };
        let mut last = Err(self.ns.mismatch());
        for _ in 0..tries.max(1) {
            last = reply!(self.ns, &object, &msg,
                Response::Ingested { accepted, late, .. } => Ingested { accepted, late });
            if last.is_ok() {
                break;
            }
        }
        last
    }

    /// Records a batch with spend records (`Ingest`) in the shard `spread_by` hashes to; when
    /// that fails (a shard of an older version does not know `Ingest`), the records alone go
    /// as `Record` under the same batch id, so a delivery that did arrive is not counted twice.
    pub async fn ingest(
        &self,
        spread_by: &str,
        batch: String,
        records: Vec<Record>,
        spend: Vec<SpendRecord>,
    ) -> AppResult<Ingested> {
        let object = shard_name("aggregator", spread_by, self.shards);
        let msg = Request::Ingest {
            batch: batch.clone(),
            records: records.clone(),
            spend,
        };
        let first: AppResult<Ingested> = async {
            reply!(self.ns, &object, &msg,
                Response::Ingested { accepted, late, .. } => Ingested { accepted, late })
        }
        .await;
        if first.is_ok() || records.is_empty() {
            return first;
        }
        self.record(spread_by, batch, records, 1).await
    }

    /// Shard `shard`'s windows and spend windows at or after `since` (`CollectAll`).
    pub async fn collect_all(&self, shard: u32, since: UnixMillis) -> AppResult<Collected> {
        let name = format!("aggregator:{shard}");
        reply!(self.ns, &name, &Request::CollectAll { since }, Response::Collected(c) => c)
    }

    /// Every shard's windows and spend windows at or after the root's cursor for it, fetched
    /// concurrently; a shard that refuses `CollectAll` (an older version) is read with
    /// `Collect` and contributes no spend.
    pub async fn live_all(&self, cursors: &[(u32, UnixMillis)]) -> AppResult<Live> {
        let calls = (0..self.shards).map(|i| {
            let since = cursors
                .iter()
                .find(|(s, _)| *s == i)
                .map_or(UnixMillis(0), |(_, c)| *c);
            async move {
                match self.collect_all(i, since).await {
                    Ok(c) => Ok(c),
                    Err(_) => self.collect(i, since).await.map(|windows| Collected {
                        windows,
                        spend_sealed: vec![],
                        spend_open: vec![],
                    }),
                }
            }
        });
        let mut out = Live::default();
        for r in join_all(calls).await {
            let c = r?;
            out.windows.extend(c.windows.sealed);
            out.windows.extend(c.windows.open);
            out.spend.extend(c.spend_sealed);
            out.spend.extend(c.spend_open);
        }
        Ok(out)
    }

    /// The root's summary and spend for `period` under one set of cursors; from a root of an
    /// older version (no `SpendSummary`), its summary with no spend.
    pub async fn spend_summary(&self, period: Period) -> AppResult<SpendSummary> {
        let r: AppResult<SpendSummary> = async {
            reply!(self.ns, ROOT, &Request::SpendSummary { period },
                Response::SpendSummary(s) => *s)
        }
        .await;
        match r {
            Ok(s) => Ok(s),
            Err(_) => Ok(SpendSummary {
                summary: self.summary(period).await?,
                spend: Spend::default(),
                today: Spend::default(),
            }),
        }
    }

    /// Shard `shard`'s windows at or after `since` (it seals what has ended first).
    pub async fn collect(&self, shard: u32, since: UnixMillis) -> AppResult<Windows> {
        let name = format!("aggregator:{shard}");
        reply!(self.ns, &name, &Request::Collect { since }, Response::Windows(w) => w)
    }

    /// Every shard's windows at or after the root's cursor for it (the part not merged yet),
    /// fetched concurrently.
    pub async fn live(&self, cursors: &[(u32, UnixMillis)]) -> AppResult<Vec<(UnixMillis, Agg)>> {
        let calls = (0..self.shards).map(|i| {
            let since = cursors
                .iter()
                .find(|(s, _)| *s == i)
                .map_or(UnixMillis(0), |(_, c)| *c);
            self.collect(i, since)
        });
        let mut out = Vec::new();
        for r in join_all(calls).await {
            let Windows { sealed, open, .. } = r?;
            out.extend(sealed);
            out.extend(open);
        }
        Ok(out)
    }

    /// The root's summary for `period` (merged buckets, lifetime, issues, cursors).
    pub async fn summary(&self, period: Period) -> AppResult<Summary> {
        reply!(self.ns, ROOT, &Request::Summary { period }, Response::Summary(s) => *s)
    }

    /// The root's chart points for `period`.
    pub async fn points(&self, period: Period) -> AppResult<Points> {
        reply!(self.ns, ROOT, &Request::Points { period },
            Response::Points { step_ms, points, cursors } => Points { step_ms, points, cursors })
    }

    /// Alert rules, states and notification history.
    pub async fn alerts(&self) -> AppResult<AlertsView> {
        reply!(self.ns, ROOT, &Request::Alerts, Response::Alerts(v) => *v)
    }

    /// The daily report (JSON text).
    pub async fn report(&self) -> AppResult<String> {
        reply!(self.ns, ROOT, &Request::Report, Response::Report(t) => t)
    }

    /// Makes sure the root's alarm runs (idempotent).
    pub async fn wake(&self) -> AppResult<()> {
        reply!(self.ns, ROOT, &Request::Wake, Response::Awake => ())
    }

    /// Runs the root's alarm work now.
    pub async fn run(&self) -> AppResult<RunReport> {
        reply!(self.ns, ROOT, &Request::Run, Response::Ran(r) => r)
    }

    /// Shard `id`'s (or the root's, for `root`) statistics.
    pub async fn stats(&self, id: &str) -> AppResult<Stats> {
        let name = if id == "root" {
            ROOT.to_string()
        } else {
            format!("aggregator:{}", super::shard_id(id, self.shards)?)
        };
        reply!(self.ns, &name, &Request::Stats, Response::Stats(s) => s)
    }
}
