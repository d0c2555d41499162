//! `Rollup`: per-minute metric windows that merge exactly.
//!
//! Each aggregator shard keeps one [`Window`] per UTC minute. Windows are plain counters plus a
//! latency sum and maximum, so merging shards is addition and the merge is exact and order-free.
//! The shard alarm *seals* minutes that have ended (no event for a sealed minute is accepted
//! any more), which is the cursor a later root merge relies on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{GatewayError, UnixMillis};

/// Largest batch accepted by one ingest call.
pub const MAX_BATCH: usize = 1000;

/// What a metric event describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Served from cache.
    Hit,
    /// Served stale from cache.
    Stale,
    /// Not in cache.
    Miss,
    /// Cache not involved.
    None,
}

/// One request's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricEvent {
    /// When it happened.
    pub at: UnixMillis,
    /// Response status.
    pub status: u16,
    /// End-to-end latency in milliseconds.
    pub latency_ms: u32,
    /// Cache outcome.
    pub cache: CacheOutcome,
    /// Whether the request was rate limited.
    pub rate_limited: bool,
}

impl MetricEvent {
    /// Validates one event (status 100..=599, latency under 10 minutes).
    pub fn validate(&self) -> Result<(), GatewayError> {
        if !(100..=599).contains(&self.status) {
            return Err(GatewayError::bad_request(
                "invalid-event",
                "status must be 100..=599",
            ));
        }
        if self.latency_ms > 600_000 {
            return Err(GatewayError::bad_request(
                "invalid-event",
                "latency_ms must be at most 600000",
            ));
        }
        Ok(())
    }
}

/// Counters of one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Requests.
    pub requests: u64,
    /// Responses with status >= 500.
    pub errors: u64,
    /// Cache hits.
    pub cache_hits: u64,
    /// Stale cache hits.
    pub stale_hits: u64,
    /// Cache misses.
    pub cache_misses: u64,
    /// Rate-limited requests.
    pub rate_limited: u64,
    /// Sum of latencies in ms.
    pub latency_sum_ms: u64,
    /// Largest latency in ms.
    pub latency_max_ms: u64,
}

impl Window {
    /// Adds one event.
    pub fn record(&mut self, e: &MetricEvent) {
        self.requests += 1;
        self.errors += u64::from(e.status >= 500);
        match e.cache {
            CacheOutcome::Hit => self.cache_hits += 1,
            CacheOutcome::Stale => self.stale_hits += 1,
            CacheOutcome::Miss => self.cache_misses += 1,
            CacheOutcome::None => {}
        }
        self.rate_limited += u64::from(e.rate_limited);
        self.latency_sum_ms += u64::from(e.latency_ms);
        self.latency_max_ms = self.latency_max_ms.max(u64::from(e.latency_ms));
    }

    /// Adds another window (exact; commutative and associative).
    pub fn merge(&mut self, o: &Window) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.cache_hits += o.cache_hits;
        self.stale_hits += o.stale_hits;
        self.cache_misses += o.cache_misses;
        self.rate_limited += o.rate_limited;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency_max_ms = self.latency_max_ms.max(o.latency_max_ms);
    }
}

/// A shard's open windows plus the sealing cursor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollup {
    /// Windows by minute start.
    pub windows: BTreeMap<UnixMillis, Window>,
    /// Minutes before this instant are sealed.
    pub sealed_before: UnixMillis,
}

/// Result of ingesting a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    /// Events recorded.
    pub accepted: u32,
    /// Events refused because their minute is already sealed.
    pub late: u32,
}

impl Rollup {
    /// Records a batch; returns the counts and the minutes whose windows changed.
    pub fn ingest(&mut self, events: &[MetricEvent]) -> (IngestResult, Vec<UnixMillis>) {
        let mut result = IngestResult::default();
        let mut touched = Vec::new();
        for e in events {
            let minute = e.at.minute_floor();
            if minute < self.sealed_before {
                result.late += 1;
                continue;
            }
            self.windows.entry(minute).or_default().record(e);
            if !touched.contains(&minute) {
                touched.push(minute);
            }
            result.accepted += 1;
        }
        (result, touched)
    }

    /// Seals every minute that ended before `now`; returns how many windows were newly sealed.
    pub fn on_alarm(&mut self, now: UnixMillis) -> u32 {
        let cut = now.minute_floor();
        if cut <= self.sealed_before {
            return 0;
        }
        let sealed = self.windows.range(self.sealed_before..cut).count() as u32;
        self.sealed_before = cut;
        sealed
    }

    /// The sum of every window at or after `since`.
    pub fn total_since(&self, since: UnixMillis) -> Window {
        let mut w = Window::default();
        for (_, x) in self.windows.range(since..) {
            w.merge(x);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at: i64, status: u16, cache: CacheOutcome) -> MetricEvent {
        MetricEvent {
            at: UnixMillis(at),
            status,
            latency_ms: 10,
            cache,
            rate_limited: false,
        }
    }

    #[test]
    fn windows_count_exactly_and_merge_by_addition() {
        let mut r = Rollup::default();
        let (res, touched) = r.ingest(&[
            ev(1_000, 200, CacheOutcome::Hit),
            ev(2_000, 502, CacheOutcome::Miss),
            ev(61_000, 200, CacheOutcome::Hit),
        ]);
        assert_eq!(res.accepted, 3);
        assert_eq!(touched, vec![UnixMillis(0), UnixMillis(60_000)]);
        let total = r.total_since(UnixMillis(0));
        assert_eq!((total.requests, total.errors, total.cache_hits), (3, 1, 2));
        let mut a = r.windows[&UnixMillis(0)];
        a.merge(&r.windows[&UnixMillis(60_000)]);
        assert_eq!(a, total);
    }

    #[test]
    fn sealed_minutes_refuse_late_events_and_sealing_is_idempotent() {
        let mut r = Rollup::default();
        r.ingest(&[ev(1_000, 200, CacheOutcome::None)]);
        assert_eq!(r.on_alarm(UnixMillis(61_000)), 1);
        assert_eq!(
            r.on_alarm(UnixMillis(61_000)),
            0,
            "a retried alarm seals nothing twice"
        );
        let (res, _) = r.ingest(&[ev(2_000, 200, CacheOutcome::None)]);
        assert_eq!(res.late, 1);
        assert_eq!(r.total_since(UnixMillis(0)).requests, 1);
    }
}
