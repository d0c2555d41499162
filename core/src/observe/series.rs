//! The root's time series: fine buckets (one per `fine_ms`, 1 minute in production, kept 24 h)
//! and hour buckets (kept 7 days), fed from shard windows through per-shard cursors.
//!
//! **Exactly once.** A shard seals its windows up to an instant (`sealed_before`) and never
//! accepts records for sealed time again. [`Series::apply`] merges only the windows in
//! `[cursor, sealed_before)` of that shard and moves the cursor to `sealed_before`; applying the
//! same answer twice (an alarm retry) or an older one (a restart that re-reads) merges nothing.
//! The caller persists the touched buckets and the cursor in the same synchronous block.
//!
//! **Fresh.** Windows at or after a shard's cursor are still "live" in the shard; `/metrics`
//! adds them to the root's buckets, so answers are both exact and current.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Agg;
use crate::UnixMillis;

/// Hour bucket width.
/// One UTC day, ms.
pub const DAY_MS: i64 = 86_400_000;
pub const HOUR_MS: i64 = 3_600_000;
/// Fine buckets are kept this long.
pub const FINE_RETENTION_MS: i64 = 86_400_000;
/// Hour buckets are kept this long.
pub const HOUR_RETENTION_MS: i64 = 7 * 86_400_000;

/// A period `/metrics` answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Period {
    /// The last hour (fine buckets).
    Hour,
    /// The last 24 hours (fine buckets).
    Day,
    /// The last 7 days (hour buckets).
    Week,
}

impl Period {
    /// Parses `1h`, `24h`, `7d`.
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "1h" => Some(Period::Hour),
            "24h" => Some(Period::Day),
            "7d" => Some(Period::Week),
            _ => None,
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Period::Hour => "1h",
            Period::Day => "24h",
            Period::Week => "7d",
        }
    }

    /// Its length.
    pub fn span_ms(self) -> i64 {
        match self {
            Period::Hour => HOUR_MS,
            Period::Day => FINE_RETENTION_MS,
            Period::Week => HOUR_RETENTION_MS,
        }
    }
}

/// Which bucket changed (for incremental persistence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    /// A fine bucket by start.
    Fine(UnixMillis),
    /// An hour bucket by start.
    Hour(UnixMillis),
}

/// Lifetime counters (never pruned): the monotonic counters of the Prometheus exposition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// Requests.
    pub requests: u64,
    /// Fresh cache hits.
    pub cache_hits: u64,
    /// Stale cache hits.
    pub stale_hits: u64,
    /// Cache misses.
    pub cache_misses: u64,
    /// Upstream calls.
    pub upstream_calls: u64,
    /// Rate-limited requests.
    pub rate_limited: u64,
    /// Responses >= 500.
    pub errors: u64,
    /// Sum of latencies, ms.
    pub latency_sum_ms: u64,
    /// Provider cost, micro-USD.
    pub cost_micro_usd: u64,
}

impl Lifetime {
    /// Adds an aggregate's counters.
    pub fn add(&mut self, a: &Agg) {
        self.requests += a.requests;
        self.cache_hits += a.cache_hits;
        self.stale_hits += a.stale_hits;
        self.cache_misses += a.cache_misses;
        self.upstream_calls += a.upstream_calls;
        self.rate_limited += a.rate_limited;
        self.errors += a.errors;
        self.latency_sum_ms += a.latency_sum_ms;
        self.cost_micro_usd += a.cost_micro_usd;
    }
}

/// The root's buckets and cursors.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Fine bucket width (divides an hour).
    pub fine_ms: i64,
    /// Fine buckets by start.
    pub fine: BTreeMap<UnixMillis, Agg>,
    /// Hour buckets by start.
    pub hours: BTreeMap<UnixMillis, Agg>,
    /// Per shard: everything before this instant has been merged.
    pub cursors: BTreeMap<u32, UnixMillis>,
    /// Lifetime counters.
    pub lifetime: Lifetime,
}

/// What [`Series::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Windows merged.
    pub merged: u32,
    /// Windows skipped (before the cursor: already merged).
    pub skipped: u32,
    /// Buckets that changed.
    pub touched: Vec<Bucket>,
    /// Whether the cursor moved.
    pub advanced: bool,
}

/// The first bucket start a period ending `now` includes (fine buckets of `fine_ms` for 1 h and
/// 24 h, hour buckets for 7 d).
pub fn period_start(period: Period, now: UnixMillis, fine_ms: i64) -> UnixMillis {
    let step = if period == Period::Week {
        HOUR_MS
    } else {
        fine_ms
    };
    floor(now.plus_ms(-period.span_ms()), step).plus_ms(step)
}

/// Adds `live` windows at or after `since` to chart `points` (sorted, `step_ms` apart).
pub fn add_to_points(
    points: &mut Vec<(UnixMillis, Agg)>,
    step_ms: i64,
    since: UnixMillis,
    live: &[(UnixMillis, Agg)],
) {
    for (at, w) in live.iter().filter(|(t, _)| *t >= since) {
        let b = floor(*at, step_ms);
        match points.binary_search_by_key(&b, |(p, _)| *p) {
            Ok(i) => points[i].1.merge(w),
            Err(i) => points.insert(i, (b, w.clone())),
        }
    }
}

/// Floors `t` to a multiple of `step`.
pub fn floor(t: UnixMillis, step: i64) -> UnixMillis {
    UnixMillis(t.0.div_euclid(step.max(1)) * step.max(1))
}

impl Series {
    /// An empty series with fine buckets of `fine_ms` (clamped to divide an hour).
    pub fn new(fine_ms: i64) -> Series {
        let fine_ms = if fine_ms > 0 && HOUR_MS % fine_ms == 0 {
            fine_ms
        } else {
            60_000
        };
        Series {
            fine_ms,
            fine: BTreeMap::new(),
            hours: BTreeMap::new(),
            cursors: BTreeMap::new(),
            lifetime: Lifetime::default(),
        }
    }

    /// The cursor of `shard` (0 before its first merge).
    pub fn cursor(&self, shard: u32) -> UnixMillis {
        self.cursors.get(&shard).copied().unwrap_or_default()
    }

    /// Merges a shard's sealed windows (see the module docs).
    pub fn apply(
        &mut self,
        shard: u32,
        windows: &[(UnixMillis, Agg)],
        sealed_before: UnixMillis,
    ) -> Applied {
        let cursor = self.cursor(shard);
        let mut out = Applied::default();
        if sealed_before <= cursor {
            out.skipped = windows.len() as u32;
            return out;
        }
        for (t, agg) in windows {
            if *t < cursor || *t >= sealed_before {
                out.skipped += 1;
                continue;
            }
            let f = floor(*t, self.fine_ms);
            let h = floor(*t, HOUR_MS);
            self.fine.entry(f).or_default().merge(agg);
            self.hours.entry(h).or_default().merge(agg);
            self.lifetime.add(agg);
            for b in [Bucket::Fine(f), Bucket::Hour(h)] {
                if !out.touched.contains(&b) {
                    out.touched.push(b);
                }
            }
            out.merged += 1;
        }
        self.cursors.insert(shard, sealed_before);
        out.advanced = true;
        out
    }

    /// Drops buckets past retention; returns the cut-offs (fine, hour) for storage deletes.
    pub fn prune(&mut self, now: UnixMillis) -> (UnixMillis, UnixMillis) {
        let fine_cut = floor(now.plus_ms(-FINE_RETENTION_MS), self.fine_ms);
        let hour_cut = floor(now.plus_ms(-HOUR_RETENTION_MS), HOUR_MS);
        self.fine = self.fine.split_off(&fine_cut);
        self.hours = self.hours.split_off(&hour_cut);
        (fine_cut, hour_cut)
    }

    /// The first bucket start a period ending `now` includes.
    pub fn start(&self, period: Period, now: UnixMillis) -> UnixMillis {
        period_start(period, now, self.fine_ms)
    }

    fn buckets(&self, period: Period) -> &BTreeMap<UnixMillis, Agg> {
        if period == Period::Week {
            &self.hours
        } else {
            &self.fine
        }
    }

    /// The merged buckets of a period (fine buckets for 1 h and 24 h, hours for 7 d).
    pub fn total(&self, period: Period, now: UnixMillis) -> Agg {
        let mut out = Agg::default();
        for a in self
            .buckets(period)
            .range(self.start(period, now)..)
            .map(|(_, a)| a)
        {
            out.merge(a);
        }
        out
    }

    /// Start of the period's earliest bucket with traffic.
    pub fn earliest(&self, period: Period, now: UnixMillis) -> Option<UnixMillis> {
        self.buckets(period)
            .range(self.start(period, now)..)
            .find(|(_, a)| a.requests > 0)
            .map(|(t, _)| *t)
    }

    /// The merged fine buckets of the last `window_ms` (for alert rules).
    pub fn recent(&self, now: UnixMillis, window_ms: i64) -> Agg {
        let since = floor(now.plus_ms(-window_ms), self.fine_ms).plus_ms(self.fine_ms);
        let mut out = Agg::default();
        for a in self.fine.range(since..).map(|(_, a)| a) {
            out.merge(a);
        }
        out
    }

    /// Points for charts, oldest first: per fine bucket for 1 h, per `step` for 24 h (at most
    /// 288 points), per hour for 7 d. `live` windows (not merged yet) are included.
    pub fn points(
        &self,
        period: Period,
        now: UnixMillis,
        live: &[(UnixMillis, Agg)],
    ) -> (i64, Vec<(UnixMillis, Agg)>) {
        let since = self.start(period, now);
        let (step, source) = match period {
            Period::Hour => (self.fine_ms, &self.fine),
            Period::Day => {
                // The smallest multiple of the fine width that divides an hour and gives at
                // most 288 points (5 minutes for 1-minute buckets).
                let step = (1..=HOUR_MS / self.fine_ms)
                    .map(|k| self.fine_ms * k)
                    .filter(|s| HOUR_MS % s == 0)
                    .find(|s| FINE_RETENTION_MS / s <= 288)
                    .unwrap_or(HOUR_MS);
                (step, &self.fine)
            }
            Period::Week => (HOUR_MS, &self.hours),
        };
        let mut out: BTreeMap<UnixMillis, Agg> = BTreeMap::new();
        for (t, a) in source.range(since..) {
            out.entry(floor(*t, step)).or_default().merge(a);
        }
        let mut points: Vec<(UnixMillis, Agg)> = out.into_iter().collect();
        add_to_points(&mut points, step, since, live);
        (step, points)
    }
}

/// One aggregator shard's windows (one [`Agg`] per fine bucket) and its seal.
///
/// Records are bucketed by their arrival time; a record for sealed time (delivered very late) is
/// counted in the first open bucket instead, so nothing is ever lost or counted twice. Sealing
/// moves forward only, to the fine boundary `grace_ms` before now.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    /// Fine bucket width.
    pub fine_ms: i64,
    /// Windows by bucket start.
    pub windows: BTreeMap<UnixMillis, Agg>,
    /// Buckets before this instant are sealed.
    pub sealed_before: UnixMillis,
}

impl Shard {
    /// An empty shard.
    pub fn new(fine_ms: i64, sealed_before: UnixMillis) -> Shard {
        Shard {
            fine_ms: Series::new(fine_ms).fine_ms,
            windows: BTreeMap::new(),
            sealed_before,
        }
    }

    /// Records a batch; returns the buckets that changed and how many records were late.
    pub fn ingest(&mut self, records: &[super::Record]) -> (Vec<UnixMillis>, u32) {
        let mut touched = Vec::new();
        let mut late = 0;
        for r in records {
            let mut b = floor(r.at, self.fine_ms);
            if b < self.sealed_before {
                late += 1;
                b = self.sealed_before;
            }
            self.windows.entry(b).or_default().record(r);
            if !touched.contains(&b) {
                touched.push(b);
            }
        }
        (touched, late)
    }

    /// Seals every bucket that ended `grace_ms` before `now`; returns the new seal.
    pub fn seal(&mut self, now: UnixMillis, grace_ms: i64) -> UnixMillis {
        let cut = floor(now.plus_ms(-grace_ms.max(0)), self.fine_ms);
        if cut > self.sealed_before {
            self.sealed_before = cut;
        }
        self.sealed_before
    }

    /// Sealed windows at or after `since`.
    pub fn sealed_since(&self, since: UnixMillis) -> Vec<(UnixMillis, Agg)> {
        self.windows
            .range(since..self.sealed_before.max(since))
            .map(|(t, a)| (*t, a.clone()))
            .collect()
    }

    /// Every window (sealed or open) at or after `since`.
    pub fn live_since(&self, since: UnixMillis) -> Vec<(UnixMillis, Agg)> {
        self.windows
            .range(since..)
            .map(|(t, a)| (*t, a.clone()))
            .collect()
    }

    /// Drops sealed windows older than the fine retention; returns the cut-off.
    pub fn prune(&mut self, now: UnixMillis) -> UnixMillis {
        let cut = floor(now.plus_ms(-FINE_RETENTION_MS), self.fine_ms).min(self.sealed_before);
        self.windows = self.windows.split_off(&cut);
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::rec;
    use super::*;
    use crate::observe::CacheOutcome;

    fn window(n: u64) -> Agg {
        let mut a = Agg::default();
        for i in 0..n {
            a.record(&rec(0, 200, 10 + i as u32, CacheOutcome::Hit, "k"));
        }
        a
    }

    #[test]
    fn applying_twice_or_out_of_order_never_double_counts_or_drops() {
        let mut s = Series::new(60_000);
        let ws = vec![
            (UnixMillis(0), window(3)),
            (UnixMillis(60_000), window(4)),
            (UnixMillis(120_000), window(5)),
        ];
        // The shard sealed up to 120 000: the third window is still live.
        let a = s.apply(0, &ws, UnixMillis(120_000));
        assert_eq!((a.merged, a.skipped), (2, 1));
        let again = s.apply(0, &ws, UnixMillis(120_000));
        assert_eq!(
            (again.merged, again.advanced),
            (0, false),
            "an alarm retry merges nothing"
        );
        let later = s.apply(0, &ws, UnixMillis(180_000));
        assert_eq!(later.merged, 1, "only the newly sealed window");
        assert_eq!(s.lifetime.requests, 12);
        let other = s.apply(1, &[(UnixMillis(0), window(2))], UnixMillis(60_000));
        assert_eq!(other.merged, 1, "cursors are per shard");
        assert_eq!(s.total(Period::Hour, UnixMillis(200_000)).requests, 14);
        assert_eq!(s.hours[&UnixMillis(0)].requests, 14);
    }

    #[test]
    fn periods_read_the_right_buckets_and_retention_prunes() {
        let mut s = Series::new(60_000);
        let day = 86_400_000;
        let now = UnixMillis(10 * day);
        let ws = vec![
            (now.plus_ms(-30 * 60_000), window(1)),   // inside 1 h
            (now.plus_ms(-5 * 3_600_000), window(2)), // inside 24 h
            (now.plus_ms(-3 * day), window(4)),       // inside 7 d only
            (now.plus_ms(-8 * day), window(8)),       // outside everything
        ];
        let mut sorted = ws.clone();
        sorted.sort_by_key(|w| w.0);
        s.apply(0, &sorted, now);
        assert_eq!(s.total(Period::Hour, now).requests, 1);
        assert_eq!(s.total(Period::Day, now).requests, 3);
        assert_eq!(s.total(Period::Week, now).requests, 7);
        s.prune(now);
        assert_eq!(s.total(Period::Week, now).requests, 7);
        assert_eq!(s.fine.len(), 2, "fine buckets older than 24 h are gone");
        assert_eq!(s.hours.len(), 3, "hour buckets older than 7 d are gone");
        assert_eq!(
            s.lifetime.requests, 15,
            "lifetime counters are never pruned"
        );
    }

    #[test]
    fn points_cover_the_period_with_bounded_resolution_and_include_live_windows() {
        let mut s = Series::new(60_000);
        let now = UnixMillis(100 * HOUR_MS);
        let ws: Vec<(UnixMillis, Agg)> = (1..=120)
            .map(|i| (now.plus_ms(-i * 60_000), window(1)))
            .rev()
            .collect();
        s.apply(0, &ws, now.plus_ms(-60_000 + 1));
        let live = vec![(floor(now, 60_000), window(5))];
        let (step, hour) = s.points(Period::Hour, now, &live);
        assert_eq!(step, 60_000);
        assert_eq!(hour.iter().map(|p| p.1.requests).sum::<u64>(), 59 + 5);
        let (step, day) = s.points(Period::Day, now, &live);
        assert_eq!(step, 300_000);
        assert!(day.len() <= 288);
        assert_eq!(day.iter().map(|p| p.1.requests).sum::<u64>(), 120 + 5);
        let (step, _) = s.points(Period::Week, now, &live);
        assert_eq!(step, HOUR_MS);
    }

    #[test]
    fn shards_seal_forward_only_and_count_late_records_in_the_open_bucket() {
        let mut sh = Shard::new(1_000, UnixMillis(0));
        let r = |at: i64| rec(at, 200, 5, CacheOutcome::Hit, "k");
        sh.ingest(&[r(100), r(1_500), r(2_100)]);
        assert_eq!(sh.seal(UnixMillis(2_700), 500), UnixMillis(2_000));
        assert_eq!(
            sh.seal(UnixMillis(1_000), 500),
            UnixMillis(2_000),
            "never backwards"
        );
        let (touched, late) = sh.ingest(&[r(1_900)]);
        assert_eq!((touched, late), (vec![UnixMillis(2_000)], 1));
        let sealed = sh.sealed_since(UnixMillis(0));
        assert_eq!(sealed.len(), 2);
        assert_eq!(sh.live_since(UnixMillis(2_000))[0].1.requests, 2);
        // The root sees every record exactly once: sealed now, the rest later.
        let mut s = Series::new(1_000);
        s.apply(0, &sealed, sh.sealed_before);
        sh.seal(UnixMillis(10_000), 500);
        s.apply(0, &sh.sealed_since(s.cursor(0)), sh.sealed_before);
        assert_eq!(s.lifetime.requests, 4);
    }

    #[test]
    fn fine_width_must_divide_an_hour() {
        assert_eq!(Series::new(1000).fine_ms, 1000);
        assert_eq!(Series::new(7000).fine_ms, 60_000);
        assert_eq!(Series::new(0).fine_ms, 60_000);
    }
}
