//! The daily report: a day's volume, cost breakdown, top keys, spend by virtual key and by
//! model, and tuning recommendations, computed by the root aggregator's alarm from the day's
//! hour buckets.

use serde_json::{json, Value};

use super::export::{Costs, Prices};
use super::spend::Spend;
use super::spend_export::spend_json;
use super::Agg;
use crate::UnixMillis;

/// A key is "hot" with at least this share of the day's requests.
pub const HOT_KEY_SHARE: f64 = 0.01;
/// A hot key below this hit rate (percent) gets a recommendation.
pub const LOW_HIT_RATE: f64 = 50.0;

/// One recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// `raise-ttl`, `cache-hit-rate`, `provider-errors`, `provider-latency`, `rate-limits`.
    pub kind: &'static str,
    /// What it is about (a key, a provider, or `gateway`).
    pub subject: String,
    /// What to do and why.
    pub message: String,
}

/// The recommendations for a day's aggregate.
pub fn recommend(day: &Agg) -> Vec<Recommendation> {
    let mut out = Vec::new();
    if day.requests == 0 {
        return out;
    }
    for e in day.top.top(super::TOP_CAPACITY) {
        let share = e.count as f64 / day.requests as f64;
        let hit_rate = e.hits as f64 * 100.0 / e.count.max(1) as f64;
        if share >= HOT_KEY_SHARE && hit_rate < LOW_HIT_RATE {
            out.push(Recommendation {
                kind: "raise-ttl",
                subject: e.key.clone(),
                message: format!(
                    "hot key ({:.1}% of requests) with a {hit_rate:.0}% hit rate: raise its TTL \
                     (an experiment on cache_ttl_s measures the gain) or make its answers cacheable",
                    share * 100.0
                ),
            });
        }
    }
    if day.hit_rate() < 75.0 {
        out.push(Recommendation {
            kind: "cache-hit-rate",
            subject: "gateway".into(),
            message: format!(
                "cache hit rate {:.1}% is below 75%: raise CACHE_DEFAULT_TTL_S or check that \
                 upstreams do not send no-store/private",
                day.hit_rate()
            ),
        });
    }
    for (name, p) in &day.providers {
        if p.requests >= 20 && p.errors * 20 > p.requests {
            out.push(Recommendation {
                kind: "provider-errors",
                subject: name.clone(),
                message: format!(
                    "{:.1}% of its answers failed: lower its weight or check the provider",
                    p.errors as f64 * 100.0 / p.requests as f64
                ),
            });
        }
        if let Some(p95) = p.latency.quantile(0.95).filter(|v| *v > 1_000.0) {
            out.push(Recommendation {
                kind: "provider-latency",
                subject: name.clone(),
                message: format!(
                    "p95 latency {p95:.0} ms: consider the least_latency strategy for its group"
                ),
            });
        }
    }
    if day.rate_limited * 10 > day.requests {
        out.push(Recommendation {
            kind: "rate-limits",
            subject: "gateway".into(),
            message: format!(
                "{:.1}% of requests were rate limited: raise the caller policy or find the noisy callers",
                day.pct(day.rate_limited)
            ),
        });
    }
    out
}

/// The report document for the day starting at `day_start` (UTC midnight); `spend` is the
/// day's spend (its `spend` object lists keys and models by cost, budget use included).
pub fn daily_report(
    day_start: UnixMillis,
    day: &Agg,
    spend: &Spend,
    generated_at: UnixMillis,
    complete: bool,
    prices: &Prices,
) -> Value {
    let costs = Costs::estimate(day, 86_400_000, prices);
    let providers: Vec<Value> = day
        .providers
        .iter()
        .map(|(n, p)| json!({ "name": n, "requests": p.requests, "costUsd": p.cost_micro_usd as f64 / 1e6 }))
        .collect();
    let top: Vec<Value> = day
        .top
        .top(10)
        .into_iter()
        .map(|e| json!({ "key": e.key, "requests": e.count, "hitRate": e.hits as f64 * 100.0 / e.count.max(1) as f64 }))
        .collect();
    let recs: Vec<Value> = recommend(day)
        .into_iter()
        .map(|r| json!({ "kind": r.kind, "subject": r.subject, "message": r.message }))
        .collect();
    json!({
        "day": day_start.to_rfc3339().get(..10).unwrap_or_default(),
        "generatedAt": generated_at.to_rfc3339(),
        "complete": complete,
        "volume": {
            "totalRequests": day.requests,
            "cacheHits": day.cache_hits,
            "staleHits": day.stale_hits,
            "upstreamCalls": day.upstream_calls,
            "rateLimited": day.rate_limited,
            "errors": day.errors,
        },
        "hitRate": day.hit_rate(),
        "costs": {
            "providerUsd": costs.provider_per_day,
            "platformUsd": costs.platform_per_day,
            "totalUsd": costs.provider_per_day + costs.platform_per_day,
            "byProvider": providers,
        },
        "topKeys": top,
        "spend": spend_json(spend, Some(spend)),
        "recommendations": recs,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::rec;
    use super::*;
    use crate::observe::CacheOutcome;

    #[test]
    fn hot_keys_with_a_low_hit_rate_and_failing_providers_get_recommendations() {
        let mut day = Agg::default();
        for i in 0..1000u32 {
            // "hot" is 30 % of traffic and always misses; "warm" hits.
            let (key, cache) = if i % 10 < 3 {
                ("g/hot", CacheOutcome::Miss)
            } else {
                ("g/warm", CacheOutcome::Hit)
            };
            let status = if key == "g/hot" && i % 2 == 0 {
                502
            } else {
                200
            };
            day.record(&rec(0, status, 5, cache, key));
        }
        let recs = recommend(&day);
        let kinds: Vec<(&str, &str)> = recs.iter().map(|r| (r.kind, r.subject.as_str())).collect();
        assert!(kinds.contains(&("raise-ttl", "g/hot")), "{kinds:?}");
        assert!(!kinds.iter().any(|k| k.1 == "g/warm"), "{kinds:?}");
        assert!(kinds.contains(&("provider-errors", "g/alpha")), "{kinds:?}");
        assert!(
            kinds.contains(&("cache-hit-rate", "gateway")),
            "70% < 75%: {kinds:?}"
        );
        let mut spend = Spend::default();
        spend.record(&crate::observe::spend::tests::srec(
            86_400_000, "key_a", "gpt", 250,
        ));
        let doc = daily_report(
            UnixMillis(86_400_000),
            &day,
            &spend,
            UnixMillis(2 * 86_400_000),
            true,
            &Prices::default(),
        );
        assert_eq!(doc["day"], "1970-01-02");
        assert_eq!(doc["volume"]["totalRequests"], 1000);
        assert_eq!(doc["costs"]["byProvider"][0]["name"], "g/alpha");
        assert_eq!(doc["spend"]["keys"][0]["key"], "key_a");
        assert_eq!(doc["spend"]["keys"][0]["cost_micro_usd"], 250);
        assert_eq!(doc["spend"]["keys"][0]["budget_used_day_pct"], 25.0);
        assert_eq!(doc["spend"]["models"][0]["model"], "gpt");
        assert!(doc["recommendations"].as_array().unwrap().len() >= 3);
        assert!(recommend(&Agg::default()).is_empty());
    }
}
