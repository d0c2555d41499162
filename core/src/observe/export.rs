//! The documents other services read: the `/metrics` JSON (schema in docs/metrics.schema.json),
//! the Prometheus text exposition, and the chart series.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::{json, Value};

pub use super::issue::{Issue, Severity};
use super::series::{Lifetime, Period};
use super::spend::Spend;
use super::spend_export::{spend_json, spend_prometheus};
use super::Agg;
use crate::{GatewayError, UnixMillis};

/// Prices for the platform cost estimate, USD (Workers Paid list prices; override with
/// `PLATFORM_PRICES`). The estimate per request is one Worker request, `do_requests_per_request`
/// Durable Object requests and `rows_written_per_request` SQLite rows written; storage and
/// duration are not estimated.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// Workers requests, per million.
    pub worker_requests_per_million: f64,
    /// Durable Object requests, per million.
    pub do_requests_per_million: f64,
    /// Durable Object requests per gateway request (rate limiter, cache, provider, metrics).
    pub do_requests_per_request: f64,
    /// SQLite rows written, per million.
    pub rows_written_per_million: f64,
    /// Rows written per gateway request.
    pub rows_written_per_request: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            worker_requests_per_million: 0.30,
            do_requests_per_million: 0.15,
            do_requests_per_request: 3.0,
            rows_written_per_million: 1.00,
            rows_written_per_request: 2.0,
        }
    }
}

impl Prices {
    /// Parses `PLATFORM_PRICES` (absent: the defaults).
    pub fn parse(json: Option<&str>) -> Result<Prices, GatewayError> {
        match json.filter(|t| !t.trim().is_empty()) {
            None => Ok(Prices::default()),
            Some(t) => {
                let p: Prices = serde_json::from_str(t)
                    .map_err(|e| GatewayError::Internal(format!("PLATFORM_PRICES: {e}")))?;
                let all = [
                    p.worker_requests_per_million,
                    p.do_requests_per_million,
                    p.do_requests_per_request,
                    p.rows_written_per_million,
                    p.rows_written_per_request,
                ];
                if all.iter().any(|x| !x.is_finite() || *x < 0.0) {
                    return Err(GatewayError::Internal(
                        "PLATFORM_PRICES: prices must be non-negative numbers".into(),
                    ));
                }
                Ok(p)
            }
        }
    }

    /// Platform cost of `requests` requests, USD.
    pub fn platform_usd(&self, requests: u64) -> f64 {
        let n = requests as f64 / 1e6;
        n * (self.worker_requests_per_million
            + self.do_requests_per_request * self.do_requests_per_million
            + self.rows_written_per_request * self.rows_written_per_million)
    }
}

/// Cost estimates, USD.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Costs {
    /// Provider cost per day.
    pub provider_per_day: f64,
    /// Platform cost per day.
    pub platform_per_day: f64,
}

impl Costs {
    /// Extrapolates an aggregate covering `covered_ms` of traffic to a day (a month is 30 days).
    pub fn estimate(agg: &Agg, covered_ms: i64, prices: &Prices) -> Costs {
        let scale = 86_400_000.0 / covered_ms.max(1) as f64;
        Costs {
            provider_per_day: agg.cost_micro_usd as f64 / 1e6 * scale,
            platform_per_day: prices.platform_usd(agg.requests) * scale,
        }
    }
}

/// A provider's live health, from its group's object.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderHealthView {
    /// `group/name`.
    pub name: String,
    /// `healthy`, `recovering` (half-open or slow start) or `ejected`.
    pub status: String,
}

/// `healthy` without issues, `critical` with a critical one, `degraded` otherwise.
pub fn health_status(issues: &[Issue]) -> &'static str {
    if issues.iter().any(|i| i.severity == Severity::Critical) {
        "critical"
    } else if issues.is_empty() {
        "healthy"
    } else {
        "degraded"
    }
}

fn r4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn opt(x: Option<f64>) -> Value {
    x.filter(|v| v.is_finite())
        .map_or(Value::Null, |v| json!(r4(v)))
}

/// Everything one `/metrics` answer is built from.
pub struct Snapshot<'a> {
    /// Now.
    pub now: UnixMillis,
    /// The period.
    pub period: Period,
    /// The period's aggregate (root buckets plus live shard windows).
    pub agg: &'a Agg,
    /// Milliseconds of the period that had traffic (for cost extrapolation).
    pub covered_ms: i64,
    /// Lifetime counters (plus live windows), for Prometheus counters.
    pub lifetime: &'a Lifetime,
    /// Provider health.
    pub providers: &'a [ProviderHealthView],
    /// Active issues (firing alerts, ejected providers).
    pub issues: &'a [Issue],
    /// Prices.
    pub prices: &'a Prices,
    /// The period's spend per key and model (root buckets plus live shard windows).
    pub spend: &'a Spend,
    /// Today's spend (since UTC midnight), for budget use.
    pub today: &'a Spend,
}

/// Top keys in `/metrics`.
pub const TOP_KEYS_SHOWN: usize = 10;

/// The `/metrics` JSON document.
pub fn metrics_json(s: &Snapshot<'_>) -> Value {
    let a = s.agg;
    let costs = Costs::estimate(a, s.covered_ms, s.prices);
    let mut providers: Vec<Value> = a
        .providers
        .iter()
        .map(|(name, p)| {
            let status = s
                .providers
                .iter()
                .find(|h| &h.name == name)
                .map_or("unknown", |h| h.status.as_str());
            json!({
                "name": name,
                "status": status,
                "requests": p.requests,
                "errors": p.errors,
                "errorRate": r4(if p.requests == 0 { 0.0 } else { p.errors as f64 * 100.0 / p.requests as f64 }),
                "p50": opt(p.latency.quantile(0.5)),
                "p95": opt(p.latency.quantile(0.95)),
                "p99": opt(p.latency.quantile(0.99)),
                "costUsd": r4(p.cost_micro_usd as f64 / 1e6),
            })
        })
        .collect();
    for h in s.providers {
        if !a.providers.iter().any(|(n, _)| n == &h.name) {
            providers.push(json!({
                "name": h.name, "status": h.status, "requests": 0, "errors": 0, "errorRate": 0.0,
                "p50": null, "p95": null, "p99": null, "costUsd": 0.0,
            }));
        }
    }
    let issues: Vec<Value> = s
        .issues
        .iter()
        .map(|i| json!({ "severity": i.severity.name(), "message": i.message, "since": i.since.to_rfc3339() }))
        .collect();
    let top: Vec<Value> = a
        .top
        .top(TOP_KEYS_SHOWN)
        .into_iter()
        .map(|e| {
            json!({
                "key": e.key,
                "requests": e.count,
                "hitRate": r4(if e.count == 0 { 0.0 } else { e.hits as f64 * 100.0 / e.count as f64 }),
            })
        })
        .collect();
    json!({
        "timestamp": s.now.to_rfc3339(),
        "period": s.period.name(),
        "hitRates": {
            "cache": r4(a.hit_rate()),
            "stale": r4(a.pct(a.stale_hits)),
            "upstream": r4(a.pct(a.upstream_requests)),
            "combined": r4(a.pct(a.cache_hits + a.stale_hits)),
        },
        "latency": {
            "p50": opt(a.latency.quantile(0.5)),
            "p95": opt(a.latency.quantile(0.95)),
            "p99": opt(a.latency.quantile(0.99)),
            "avg": opt(a.avg_latency()),
        },
        "volume": {
            "totalRequests": a.requests,
            "cacheHits": a.cache_hits,
            "staleHits": a.stale_hits,
            "upstreamCalls": a.upstream_calls,
            "rateLimited": a.rate_limited,
            "errors": a.errors,
        },
        "costs": {
            "provider": { "perDay": r4(costs.provider_per_day), "perMonth": r4(costs.provider_per_day * 30.0) },
            "platform": { "perDay": r4(costs.platform_per_day), "perMonth": r4(costs.platform_per_day * 30.0) },
            "total": {
                "perDay": r4(costs.provider_per_day + costs.platform_per_day),
                "perMonth": r4((costs.provider_per_day + costs.platform_per_day) * 30.0),
            },
        },
        "providers": providers,
        "health": { "status": health_status(s.issues), "issues": issues },
        "topKeys": top,
        "spend": spend_json(s.spend, Some(s.today)),
    })
}

/// Escapes a label value for the text exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "NaN".into()
    }
}

/// The Prometheus text exposition (format 0.0.4): lifetime counters (`_total`), the period's
/// rates, costs and health as gauges, and latency as a summary (quantiles over the period; `_sum`
/// and `_count` over the lifetime).
pub fn prometheus(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let l = s.lifetime;
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |v: String| vec![(String::new(), v)];
    for (name, help, v) in [
        (
            "edge_gateway_requests_total",
            "Proxied requests.",
            l.requests,
        ),
        (
            "edge_gateway_cache_hits_total",
            "Requests served fresh from cache.",
            l.cache_hits,
        ),
        (
            "edge_gateway_cache_stale_hits_total",
            "Requests served stale from cache.",
            l.stale_hits,
        ),
        (
            "edge_gateway_cache_misses_total",
            "Requests not found in cache.",
            l.cache_misses,
        ),
        (
            "edge_gateway_upstream_calls_total",
            "Calls made to providers.",
            l.upstream_calls,
        ),
        (
            "edge_gateway_rate_limited_total",
            "Requests refused by the rate limiter.",
            l.rate_limited,
        ),
        (
            "edge_gateway_errors_total",
            "Responses with status 500 or above.",
            l.errors,
        ),
    ] {
        metric(name, "counter", help, &plain(v.to_string()));
    }
    metric(
        "edge_gateway_provider_cost_usd_total",
        "counter",
        "Estimated provider cost in USD.",
        &plain(num(l.cost_micro_usd as f64 / 1e6)),
    );
    let p = s.period.name();
    let a = s.agg;
    let q = |x: f64| {
        a.latency
            .quantile(x)
            .map_or("NaN".to_string(), |ms| num(ms / 1000.0))
    };
    metric(
        "edge_gateway_latency_seconds",
        "summary",
        "Gateway latency in seconds (quantiles over the period, 1% relative error; sum and count over the lifetime).",
        &[
            (format!("{{quantile=\"0.5\",period=\"{p}\"}}"), q(0.5)),
            (format!("{{quantile=\"0.95\",period=\"{p}\"}}"), q(0.95)),
            (format!("{{quantile=\"0.99\",period=\"{p}\"}}"), q(0.99)),
            (
                format!("_sum{{period=\"{p}\"}}"),
                num(l.latency_sum_ms as f64 / 1000.0),
            ),
            (format!("_count{{period=\"{p}\"}}"), l.requests.to_string()),
        ],
    );
    // The summary's `_sum`/`_count` lines carry the suffix in the "labels" slot above.
    let rates = [
        ("cache", a.hit_rate()),
        ("stale", a.pct(a.stale_hits)),
        ("upstream", a.pct(a.upstream_requests)),
        ("combined", a.pct(a.cache_hits + a.stale_hits)),
    ];
    metric(
        "edge_gateway_hit_rate_percent",
        "gauge",
        "Share of requests over the period, in percent.",
        &rates
            .iter()
            .map(|(k, v)| (format!("{{kind=\"{k}\",period=\"{p}\"}}"), num(r4(*v))))
            .collect::<Vec<_>>(),
    );
    metric(
        "edge_gateway_error_rate_percent",
        "gauge",
        "Responses with status 500 or above over the period, in percent.",
        &[(format!("{{period=\"{p}\"}}"), num(r4(a.error_rate())))],
    );
    let costs = Costs::estimate(a, s.covered_ms, s.prices);
    metric(
        "edge_gateway_cost_per_day_usd",
        "gauge",
        "Estimated cost per day in USD, extrapolated from the period.",
        &[
            (
                "{kind=\"provider\"}".to_string(),
                num(r4(costs.provider_per_day)),
            ),
            (
                "{kind=\"platform\"}".to_string(),
                num(r4(costs.platform_per_day)),
            ),
        ],
    );
    let mut provider_requests = Vec::new();
    let mut provider_errors = Vec::new();
    let mut provider_p99 = Vec::new();
    for (name, pa) in &a.providers {
        let lbl = format!("{{provider=\"{}\",period=\"{p}\"}}", label(name));
        provider_requests.push((lbl.clone(), pa.requests.to_string()));
        provider_errors.push((lbl.clone(), pa.errors.to_string()));
        provider_p99.push((
            lbl,
            pa.latency.quantile(0.99).map_or("NaN".to_string(), num),
        ));
    }
    metric(
        "edge_gateway_provider_requests",
        "gauge",
        "Requests answered by each provider over the period.",
        &provider_requests,
    );
    metric(
        "edge_gateway_provider_errors",
        "gauge",
        "Failed answers of each provider over the period.",
        &provider_errors,
    );
    metric(
        "edge_gateway_provider_latency_p99_seconds",
        "gauge",
        "99th percentile latency of each provider over the period, in seconds.",
        &provider_p99,
    );
    metric(
        "edge_gateway_provider_up",
        "gauge",
        "1 when the provider is in rotation (healthy or recovering), 0 when ejected.",
        &s.providers
            .iter()
            .map(|h| {
                (
                    format!("{{provider=\"{}\"}}", label(&h.name)),
                    u8::from(h.status != "ejected").to_string(),
                )
            })
            .collect::<Vec<_>>(),
    );
    let status = health_status(s.issues);
    metric(
        "edge_gateway_health",
        "gauge",
        "1 for the current health status.",
        &["healthy", "degraded", "critical"]
            .iter()
            .map(|k| {
                (
                    format!("{{status=\"{k}\"}}"),
                    u8::from(*k == status).to_string(),
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "edge_gateway_alerts_firing",
        "gauge",
        "Alerts firing, by severity.",
        &[Severity::Warning, Severity::Critical]
            .iter()
            .map(|sev| {
                (
                    format!("{{severity=\"{}\"}}", sev.name()),
                    s.issues
                        .iter()
                        .filter(|i| i.severity == *sev && i.message.starts_with("alert "))
                        .count()
                        .to_string(),
                )
            })
            .collect::<Vec<_>>(),
    );
    spend_prometheus(&mut out, s.spend, s.period);
    out
}

/// The chart series document (`GET /v1/metrics/series`).
pub fn series_json(period: Period, step_ms: i64, points: &[(UnixMillis, Agg)]) -> Value {
    let pts: Vec<Value> = points
        .iter()
        .map(|(t, a)| {
            json!({
                "t": t.to_rfc3339(),
                "requests": a.requests,
                "cacheHits": a.cache_hits,
                "staleHits": a.stale_hits,
                "errors": a.errors,
                "rateLimited": a.rate_limited,
                "hitRate": if a.requests == 0 { Value::Null } else { json!(r4(a.hit_rate())) },
                "p50": opt(a.latency.quantile(0.5)),
                "p95": opt(a.latency.quantile(0.95)),
                "p99": opt(a.latency.quantile(0.99)),
                "costUsd": r4(a.cost_micro_usd as f64 / 1e6),
            })
        })
        .collect();
    json!({ "period": period.name(), "stepSeconds": step_ms / 1000, "points": pts })
}

#[cfg(test)]
mod tests {
    use super::super::tests::rec;
    use super::*;
    use crate::observe::CacheOutcome;

    fn sample() -> (Agg, Lifetime) {
        let mut a = Agg::default();
        for i in 0..100u32 {
            let cache = if i < 80 {
                CacheOutcome::Hit
            } else {
                CacheOutcome::Miss
            };
            let status = if i >= 95 { 502 } else { 200 };
            let mut r = rec(
                0,
                status,
                10 + i,
                cache,
                if i % 2 == 0 { "g/a" } else { "g/\"b\"" },
            );
            r.provider = (cache == CacheOutcome::Miss).then(|| "g/al\"pha".to_string());
            a.record(&r);
        }
        let mut l = Lifetime::default();
        l.add(&a);
        (a, l)
    }

    #[test]
    fn metrics_json_has_the_expected_shape_and_exact_numbers() {
        let (a, l) = sample();
        let issues = vec![Issue {
            severity: Severity::Warning,
            message: "alert miss-rate-warning".into(),
            since: UnixMillis(0),
        }];
        let providers = vec![ProviderHealthView {
            name: "g/al\"pha".into(),
            status: "healthy".into(),
        }];
        let prices = Prices::default();
        let s = Snapshot {
            now: UnixMillis(1_700_000_000_000),
            period: Period::Hour,
            agg: &a,
            covered_ms: 3_600_000,
            lifetime: &l,
            providers: &providers,
            issues: &issues,
            prices: &prices,
            spend: &Spend::default(),
            today: &Spend::default(),
        };
        let v = metrics_json(&s);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["period"], "1h");
        assert_eq!(v["volume"]["totalRequests"], 100);
        assert_eq!(v["volume"]["cacheHits"], 80);
        assert_eq!(v["volume"]["upstreamCalls"], 20);
        assert_eq!(v["volume"]["errors"], 5);
        assert_eq!(v["hitRates"]["cache"], 80.0);
        assert_eq!(v["hitRates"]["upstream"], 20.0);
        assert_eq!(v["hitRates"]["combined"], 80.0);
        assert_eq!(v["health"]["status"], "degraded");
        assert_eq!(v["providers"][0]["status"], "healthy");
        assert_eq!(v["providers"][0]["requests"], 20);
        assert_eq!(v["topKeys"][0]["requests"], 50);
        assert_eq!(
            v["costs"]["provider"]["perDay"], 0.048,
            "20 × 100 µUSD per hour × 24"
        );
        let platform = prices.platform_usd(100) * 24.0;
        assert_eq!(v["costs"]["platform"]["perDay"], r4(platform));
        for k in ["p50", "p95", "p99", "avg"] {
            assert!(v["latency"][k].is_number(), "{k}");
        }
        let empty = Agg::default();
        let v = metrics_json(&Snapshot { agg: &empty, ..s });
        assert!(v["latency"]["p99"].is_null());
        assert_eq!(v["hitRates"]["cache"], 0.0);
    }

    #[test]
    fn prometheus_text_has_help_and_type_for_every_family_and_escapes_labels() {
        let (a, l) = sample();
        let prices = Prices::default();
        let providers = vec![ProviderHealthView {
            name: "g/al\"pha".into(),
            status: "ejected".into(),
        }];
        let mut spend = Spend::default();
        spend.record(&crate::observe::spend::tests::srec(0, "key_a", "gpt", 7));
        let text = prometheus(&Snapshot {
            now: UnixMillis(0),
            period: Period::Day,
            agg: &a,
            covered_ms: 1,
            lifetime: &l,
            providers: &providers,
            issues: &[],
            prices: &prices,
            spend: &spend,
            today: &spend,
        });
        assert!(text.contains("edge_gateway_key_spend_micro_usd{key=\"key_a\",period=\"24h\"} 7\n"));
        assert!(text.contains(
            "# TYPE edge_gateway_requests_total counter\nedge_gateway_requests_total 100\n"
        ));
        assert!(text.contains("edge_gateway_latency_seconds_count{period=\"24h\"} 100"));
        assert!(text.contains("provider=\"g/al\\\"pha\""), "{text}");
        assert!(text.contains("edge_gateway_provider_up{provider=\"g/al\\\"pha\"} 0"));
        assert!(text.contains("edge_gateway_health{status=\"healthy\"} 1"));
        // Every sample line belongs to a family announced by HELP and TYPE.
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    families.iter().any(|f| name == f
                        || name
                            .strip_prefix(f.as_str())
                            .is_some_and(|s| s == "_sum" || s == "_count")),
                    "{line}"
                );
            }
        }
    }

    #[test]
    fn prices_parse_and_refuse_nonsense() {
        assert_eq!(Prices::parse(None).unwrap(), Prices::default());
        let p = Prices::parse(Some(r#"{"do_requests_per_request": 5}"#)).unwrap();
        assert_eq!(p.do_requests_per_request, 5.0);
        assert_eq!(p.worker_requests_per_million, 0.30);
        assert!(Prices::parse(Some(r#"{"nope": 1}"#)).is_err());
        assert!(Prices::parse(Some(r#"{"do_requests_per_million": -1}"#)).is_err());
    }
}
