//! Observability: what the gateway records per request, how it aggregates exactly, and what it
//! derives (series, alerts, reports, the `/metrics` documents).
//!
//! - [`Record`]: one proxied request's outcome, emitted by the front worker in batches.
//! - [`Agg`]: the mergeable aggregate of a time bucket: exact counters, a latency sketch with
//!   1 % relative error ([`LatencySketch`], DDSketch's layout), per-provider aggregates and a
//!   bounded heavy-hitters summary of request keys ([`TopKeys`], Space-Saving).
//! - [`series::Series`]: the root's fine buckets (1 minute, kept 24 h) and hour buckets (kept
//!   7 days), merged from shard windows idempotently through per-shard cursors.
//! - [`alerts`]: rules, the pending → firing → resolved state machine with keep-firing flap
//!   damping, dedup with a repeat interval, and the webhook outbox.
//! - [`export`]: the `/metrics` JSON and Prometheus text; [`report`]: the daily report;
//!   [`issue`]: the [`issue::Severity`] and [`issue::Issue`] both alerts and export use.
//! - [`spend`]: spend per virtual key and per model ([`spend::SpendRecord`], the bounded,
//!   mergeable [`spend::Spend`]); [`budget`]: the per-key `key_budget_used_pct` alert rule.
//! - [`ingest::Ingest`] and [`root::Root`]: the `AggregatorDO` shard and root as state machines
//!   (`handle`, alarm work, storage [`root::Write`]s), so the adapter only loads, calls and
//!   persists.

pub mod alerts;
pub mod budget;
pub mod export;
pub mod ingest;
pub mod issue;
pub mod report;
pub mod root;
pub mod series;
pub mod spend;
pub mod spend_export;

pub use ingest::Ingest;
pub use root::Root;

use serde::{Deserialize, Serialize};

use crate::sketch::LatencySketch;
use crate::{GatewayError, UnixMillis};

/// A request's cache outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// Served fresh from cache.
    Hit,
    /// Served stale from cache.
    Stale,
    /// Looked up, not found (or expired).
    Miss,
    /// The cache was not involved.
    None,
}

/// Longest request key kept for top keys.
pub const MAX_KEY_BYTES: usize = 256;
/// Providers tracked per bucket (more are folded into `other`).
pub const MAX_PROVIDERS: usize = 64;
/// Heavy-hitter slots per bucket.
pub const TOP_CAPACITY: usize = 32;

/// One request's outcome. Crosses a postcard hop: no `skip_serializing_if`, no `flatten`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the request arrived.
    pub at: UnixMillis,
    /// Status answered to the client.
    pub status: u16,
    /// Gateway latency (arrival to response), ms.
    pub latency_ms: u32,
    /// Cache outcome.
    pub cache: CacheOutcome,
    /// Refused by the rate limiter.
    pub rate_limited: bool,
    /// Calls made to providers (0 when served from cache).
    pub upstream_calls: u8,
    /// The request key for top keys (`{group}/{path}`), at most 256 bytes.
    pub key: String,
    /// The provider that answered last, as `group/name`.
    pub provider: Option<String>,
    /// That provider's latency, ms.
    pub provider_latency_ms: u32,
    /// Whether that provider's answer was a failure (5xx, 429, timeout, connection error).
    pub provider_error: bool,
    /// Provider cost of the request (every attempt), micro-USD.
    pub cost_micro_usd: u64,
}

impl Record {
    /// The top-keys key of a proxied request: `{group}/{path}`, cut to [`MAX_KEY_BYTES`] at a
    /// character boundary.
    pub fn key_for(group: &str, path: &str) -> String {
        let mut k = format!("{group}/{path}");
        if k.len() > MAX_KEY_BYTES {
            let mut end = MAX_KEY_BYTES;
            while !k.is_char_boundary(end) {
                end -= 1;
            }
            k.truncate(end);
        }
        k
    }

    /// Validates a record received over the wire.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |d: &str| Err(GatewayError::bad_request("invalid-event", d.to_string()));
        if !(100..=599).contains(&self.status) {
            return bad("status must be 100..=599");
        }
        if self.latency_ms > 600_000 || self.provider_latency_ms > 600_000 {
            return bad("latency must be at most 600000 ms");
        }
        if self.key.len() > MAX_KEY_BYTES || self.key.chars().any(char::is_control) {
            return bad("key must be at most 256 bytes without control characters");
        }
        if self
            .provider
            .as_ref()
            .is_some_and(|p| p.is_empty() || p.len() > 130)
        {
            return bad("provider must be 1 to 130 bytes");
        }
        Ok(())
    }
}

/// One provider's aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderAgg {
    /// Requests it answered last.
    pub requests: u64,
    /// Of which failures.
    pub errors: u64,
    /// Its latency.
    pub latency: LatencySketch,
    /// Cost attributed to it, micro-USD.
    pub cost_micro_usd: u64,
}

impl ProviderAgg {
    fn merge(&mut self, o: &ProviderAgg) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
        self.cost_micro_usd += o.cost_micro_usd;
    }
}

/// One heavy-hitter slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopEntry {
    /// Request key.
    pub key: String,
    /// Estimated requests (an over-estimate by at most `error`).
    pub count: u64,
    /// Over-estimation bound.
    pub error: u64,
    /// Cache hits (fresh or stale) counted while the key held the slot.
    pub hits: u64,
}

/// Space-Saving heavy hitters (Metwally et al. 2005) with [`TOP_CAPACITY`] slots: every key with
/// more than `N / capacity` requests is present, and each count over-estimates by at most its
/// `error` (≤ `N / capacity`). Merging adds counts per key; a key missing from a full summary is
/// charged that summary's minimum as error (mergeable summaries, Agarwal et al. 2012), then the
/// largest `capacity` are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopKeys {
    /// The slots, in no particular order.
    pub entries: Vec<TopEntry>,
}

impl TopKeys {
    /// Counts one request for `key`.
    pub fn record(&mut self, key: &str, hit: bool) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == key) {
            e.count += 1;
            e.hits += u64::from(hit);
            return;
        }
        if self.entries.len() < TOP_CAPACITY {
            self.entries.push(TopEntry {
                key: key.to_string(),
                count: 1,
                error: 0,
                hits: u64::from(hit),
            });
            return;
        }
        if let Some(min) = self.entries.iter_mut().min_by_key(|e| e.count) {
            let floor = min.count;
            *min = TopEntry {
                key: key.to_string(),
                count: floor + 1,
                error: floor,
                hits: u64::from(hit),
            };
        }
    }

    fn min_if_full(&self) -> u64 {
        if self.entries.len() < TOP_CAPACITY {
            0
        } else {
            self.entries.iter().map(|e| e.count).min().unwrap_or(0)
        }
    }

    /// Merges another summary.
    pub fn merge(&mut self, o: &TopKeys) {
        let (mine_min, theirs_min) = (self.min_if_full(), o.min_if_full());
        let mut all: Vec<TopEntry> = Vec::with_capacity(self.entries.len() + o.entries.len());
        for e in &self.entries {
            let mut e = e.clone();
            match o.entries.iter().find(|x| x.key == e.key) {
                Some(x) => {
                    e.count += x.count;
                    e.error += x.error;
                    e.hits += x.hits;
                }
                None => e.error += theirs_min,
            }
            all.push(e);
        }
        for x in &o.entries {
            if !self.entries.iter().any(|e| e.key == x.key) {
                let mut x = x.clone();
                x.error += mine_min;
                all.push(x);
            }
        }
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(TOP_CAPACITY);
        self.entries = all;
    }

    /// The `n` largest, by count then key.
    pub fn top(&self, n: usize) -> Vec<TopEntry> {
        let mut v = self.entries.clone();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        v.truncate(n);
        v
    }
}

/// The mergeable aggregate of one time bucket. Counters merge by addition (exact, order-free);
/// sketches merge exactly; top keys merge within their documented bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agg {
    /// Requests.
    pub requests: u64,
    /// Fresh cache hits.
    pub cache_hits: u64,
    /// Stale cache hits.
    pub stale_hits: u64,
    /// Cache misses.
    pub cache_misses: u64,
    /// Requests that needed an upstream call.
    pub upstream_requests: u64,
    /// Calls made to providers (attempts, failovers included).
    pub upstream_calls: u64,
    /// Rate-limited requests.
    pub rate_limited: u64,
    /// Responses with status >= 500.
    pub errors: u64,
    /// Responses 400..=499 other than 429.
    pub client_errors: u64,
    /// Sum of latencies, ms.
    pub latency_sum_ms: u64,
    /// Largest latency, ms.
    pub latency_max_ms: u32,
    /// Latency distribution.
    pub latency: LatencySketch,
    /// Provider cost, micro-USD.
    pub cost_micro_usd: u64,
    /// Per provider (`group/name`), sorted by name.
    pub providers: Vec<(String, ProviderAgg)>,
    /// Heavy hitters by request key.
    pub top: TopKeys,
}

impl Agg {
    /// Adds one record.
    pub fn record(&mut self, r: &Record) {
        self.requests += 1;
        match r.cache {
            CacheOutcome::Hit => self.cache_hits += 1,
            CacheOutcome::Stale => self.stale_hits += 1,
            CacheOutcome::Miss => self.cache_misses += 1,
            CacheOutcome::None => {}
        }
        self.upstream_requests += u64::from(r.upstream_calls > 0);
        self.upstream_calls += u64::from(r.upstream_calls);
        self.rate_limited += u64::from(r.rate_limited);
        self.errors += u64::from(r.status >= 500);
        self.client_errors += u64::from((400..500).contains(&r.status) && r.status != 429);
        self.latency_sum_ms += u64::from(r.latency_ms);
        self.latency_max_ms = self.latency_max_ms.max(r.latency_ms);
        self.latency.record(r.latency_ms);
        self.cost_micro_usd += r.cost_micro_usd;
        if let Some(p) = &r.provider {
            let mut one = ProviderAgg {
                requests: 1,
                errors: u64::from(r.provider_error),
                cost_micro_usd: r.cost_micro_usd,
                ..ProviderAgg::default()
            };
            one.latency.record(r.provider_latency_ms);
            self.add_provider(p, &one);
        }
        if !r.key.is_empty() {
            self.top.record(
                &r.key,
                matches!(r.cache, CacheOutcome::Hit | CacheOutcome::Stale),
            );
        }
    }

    fn add_provider(&mut self, name: &str, p: &ProviderAgg) {
        match self
            .providers
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
        {
            Ok(i) => self.providers[i].1.merge(p),
            Err(i) if self.providers.len() < MAX_PROVIDERS => {
                self.providers.insert(i, (name.to_string(), p.clone()));
            }
            Err(_) => {
                let other = "other";
                match self
                    .providers
                    .binary_search_by(|(n, _)| n.as_str().cmp(other))
                {
                    Ok(i) => self.providers[i].1.merge(p),
                    Err(i) => self.providers.insert(i, (other.to_string(), p.clone())),
                }
            }
        }
    }

    /// Adds another aggregate.
    pub fn merge(&mut self, o: &Agg) {
        self.requests += o.requests;
        self.cache_hits += o.cache_hits;
        self.stale_hits += o.stale_hits;
        self.cache_misses += o.cache_misses;
        self.upstream_requests += o.upstream_requests;
        self.upstream_calls += o.upstream_calls;
        self.rate_limited += o.rate_limited;
        self.errors += o.errors;
        self.client_errors += o.client_errors;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency_max_ms = self.latency_max_ms.max(o.latency_max_ms);
        self.latency.merge(&o.latency);
        self.cost_micro_usd += o.cost_micro_usd;
        for (n, p) in &o.providers {
            self.add_provider(n, p);
        }
        self.top.merge(&o.top);
    }

    /// `part / requests × 100`, 0 without requests.
    pub fn pct(&self, part: u64) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            part as f64 * 100.0 / self.requests as f64
        }
    }

    /// Fresh cache hits, % of requests.
    pub fn hit_rate(&self) -> f64 {
        self.pct(self.cache_hits)
    }

    /// Requests not served from cache (fresh or stale), % of requests: the alerting miss rate.
    pub fn miss_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            100.0 - self.pct(self.cache_hits + self.stale_hits)
        }
    }

    /// Responses >= 500, % of requests.
    pub fn error_rate(&self) -> f64 {
        self.pct(self.errors)
    }

    /// Mean latency, ms.
    pub fn avg_latency(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.latency_sum_ms as f64 / self.requests as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(
        at: i64,
        status: u16,
        latency: u32,
        cache: CacheOutcome,
        key: &str,
    ) -> Record {
        Record {
            at: UnixMillis(at),
            status,
            latency_ms: latency,
            cache,
            rate_limited: status == 429,
            upstream_calls: u8::from(cache == CacheOutcome::Miss),
            key: key.into(),
            provider: (cache == CacheOutcome::Miss).then(|| "g/alpha".to_string()),
            provider_latency_ms: latency,
            provider_error: status >= 500,
            cost_micro_usd: u64::from(cache == CacheOutcome::Miss) * 100,
        }
    }

    #[test]
    fn counters_are_exact_and_merge_is_order_free() {
        let records: Vec<Record> = (0..300)
            .map(|i| {
                let cache = [CacheOutcome::Hit, CacheOutcome::Miss, CacheOutcome::Stale][i % 3];
                rec(
                    i as i64,
                    if i % 10 == 0 { 502 } else { 200 },
                    i as u32,
                    cache,
                    "k",
                )
            })
            .collect();
        let mut whole = Agg::default();
        records.iter().for_each(|r| whole.record(r));
        assert_eq!(
            (
                whole.requests,
                whole.cache_hits,
                whole.stale_hits,
                whole.cache_misses,
                whole.errors
            ),
            (300, 100, 100, 100, 30)
        );
        assert_eq!((whole.upstream_calls, whole.cost_micro_usd), (100, 10_000));
        let (mut a, mut b, mut c) = (Agg::default(), Agg::default(), Agg::default());
        for (i, r) in records.iter().enumerate() {
            [&mut a, &mut b, &mut c][i % 3].record(r);
        }
        let mut abc = a.clone();
        abc.merge(&b);
        abc.merge(&c);
        let mut cba = c.clone();
        cba.merge(&b);
        cba.merge(&a);
        for m in [&abc, &cba] {
            assert_eq!(m.requests, whole.requests);
            assert_eq!(m.latency, whole.latency, "sketches merge exactly");
            assert_eq!(m.providers, whole.providers);
            assert_eq!(m.latency_sum_ms, whole.latency_sum_ms);
        }
        assert!((whole.miss_rate() - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn quantiles_stay_within_one_percent_of_the_exact_rank() {
        let mut agg = Agg::default();
        let mut exact: Vec<u32> = (0..5000u32).map(|i| 1 + (i * 7919) % 2000).collect();
        for &ms in &exact {
            agg.record(&rec(0, 200, ms, CacheOutcome::Hit, "k"));
        }
        exact.sort_unstable();
        for q in [0.5, 0.95, 0.99] {
            let want = f64::from(exact[(q * (exact.len() - 1) as f64).floor() as usize]);
            let got = agg.latency.quantile(q).unwrap();
            assert!(
                (got - want).abs() <= want * 0.01 + 1e-9,
                "q{q}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn heavy_hitters_are_found_in_a_zipf_stream_and_survive_merges() {
        // Zipf-like: key i gets about 6000 / (i + 1) requests, interleaved.
        let mut counts: Vec<(String, u64)> = (0..500)
            .map(|i| (format!("key{i}"), 6000 / (i + 1)))
            .collect();
        let total: u64 = counts.iter().map(|c| c.1).sum();
        let mut shards = vec![TopKeys::default(), TopKeys::default(), TopKeys::default()];
        let mut round = 0u64;
        while counts.iter().any(|c| c.1 > 0) {
            for (i, (k, n)) in counts.iter_mut().enumerate() {
                if *n > 0 {
                    *n -= 1;
                    shards[(i + round as usize) % 3].record(k, i % 2 == 0);
                }
            }
            round += 1;
        }
        let mut merged = TopKeys::default();
        for s in &shards {
            merged.merge(s);
        }
        assert!(merged.entries.len() <= TOP_CAPACITY);
        let top: Vec<String> = merged.top(5).into_iter().map(|e| e.key).collect();
        assert_eq!(top, ["key0", "key1", "key2", "key3", "key4"]);
        // Every key above N / capacity (here ~1 700) is present, with a bounded over-estimate.
        for i in 0..500u64 {
            let true_count = 6000 / (i + 1);
            if true_count > total / TOP_CAPACITY as u64 {
                let e = merged
                    .entries
                    .iter()
                    .find(|e| e.key == format!("key{i}"))
                    .unwrap();
                assert!(
                    e.count >= true_count && e.count - e.error <= true_count,
                    "{e:?}"
                );
            }
        }
    }

    #[test]
    fn keys_are_cut_at_a_character_boundary() {
        assert_eq!(Record::key_for("g", "a/b"), "g/a/b");
        let long = Record::key_for("g", &"é".repeat(200));
        assert!(long.len() <= MAX_KEY_BYTES && long.len() >= MAX_KEY_BYTES - 1);
        assert!(rec(0, 200, 1, CacheOutcome::Hit, &long).validate().is_ok());
    }

    #[test]
    fn bad_records_are_refused() {
        let mut r = rec(0, 200, 1, CacheOutcome::Hit, "k");
        assert!(r.validate().is_ok());
        r.status = 99;
        assert!(r.validate().is_err());
        let mut r = rec(0, 200, 1, CacheOutcome::Hit, "k");
        r.key = "x".repeat(300);
        assert!(r.validate().is_err());
        let mut r = rec(0, 200, 700_000, CacheOutcome::Hit, "k");
        assert!(r.validate().is_err());
        r.latency_ms = 1;
        r.key = "a\u{7}b".into();
        assert!(r.validate().is_err());
    }
}
