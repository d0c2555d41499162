//! `POST /v1/events` (metric ingest into a sharded aggregator) and `GET /metrics` (fan-in).

use futures::future::join_all;
use gateway_core::config::Config;
use gateway_core::protocol::aggregator::{Request as ARequest, Response as AResponse};
use gateway_core::rollup::{CacheOutcome, MetricEvent, Window, MAX_BATCH};
use gateway_core::shard::shard_name;
use gateway_core::GatewayError;
use serde::Deserialize;
use serde_json::json as j;
use worker::{Env, Headers, Request, Response};

use super::now;
use crate::error::AppResult;
use crate::http::{json, parse_json, read_body};
use crate::stub::{binding, call, unexpected};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    status: u16,
    latency_ms: u32,
    #[serde(default = "no_cache")]
    cache: CacheOutcome,
    #[serde(default)]
    rate_limited: bool,
}

fn no_cache() -> CacheOutcome {
    CacheOutcome::None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<EventJson>,
}

/// `POST /v1/events`: `{"events":[{"status":200,"latency_ms":12,"cache":"hit"}]}`, at most
/// 1000 per call, stamped with the gateway's clock and sent to one aggregator shard.
pub async fn ingest(
    mut req: Request,
    env: &Env,
    cfg: &Config,
    request_id: &str,
) -> AppResult<Response> {
    let batch: Batch = parse_json(&read_body(&mut req, cfg.max_body_bytes).await?)?;
    if batch.events.is_empty() || batch.events.len() > MAX_BATCH {
        return Err(GatewayError::bad_request(
            "invalid-event",
            format!("send 1 to {MAX_BATCH} events"),
        )
        .into());
    }
    let at = now();
    let mut events = Vec::with_capacity(batch.events.len());
    for e in batch.events {
        let ev = MetricEvent {
            at,
            status: e.status,
            latency_ms: e.latency_ms,
            cache: e.cache,
            rate_limited: e.rate_limited,
        };
        ev.validate()?;
        events.push(ev);
    }
    let object = shard_name("aggregator", request_id, cfg.aggregator_shards);
    match call(
        env,
        binding::AGGREGATOR,
        &object,
        &ARequest::Ingest { events },
    )
    .await?
    {
        AResponse::Ingested(r) => json(&j!({ "accepted": r.accepted, "late": r.late }), 202),
        _ => Err(unexpected("aggregator")),
    }
}

fn period_ms(period: &str) -> Result<i64, GatewayError> {
    match period {
        "1h" => Ok(3_600_000),
        "24h" => Ok(86_400_000),
        "7d" => Ok(7 * 86_400_000),
        _ => Err(GatewayError::bad_request(
            "invalid-query",
            "period must be 1h, 24h or 7d",
        )),
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / whole as f64).round() / 100.0
    }
}

/// `GET /metrics?period=1h|24h|7d&format=json|prometheus`: merges every aggregator shard's
/// windows (fetched concurrently).
pub async fn metrics(req: Request, env: &Env, cfg: &Config) -> AppResult<Response> {
    let mut period = "1h".to_string();
    let mut format = "json".to_string();
    for (k, v) in crate::http::query(&req)? {
        match k.as_str() {
            "period" => period = v,
            "format" => format = v,
            _ => {}
        }
    }
    let span = period_ms(&period)?;
    if format != "json" && format != "prometheus" {
        return Err(GatewayError::bad_request(
            "invalid-query",
            "format must be json or prometheus",
        )
        .into());
    }
    let t = now();
    let since = t.plus_ms(-span).minute_floor();
    let calls = (0..cfg.aggregator_shards).map(|i| {
        let name = format!("aggregator:{i}");
        async move {
            call(
                env,
                binding::AGGREGATOR,
                &name,
                &ARequest::Snapshot { since },
            )
            .await
        }
    });
    let mut total = Window::default();
    for r in join_all(calls).await {
        match r? {
            AResponse::Snapshot { windows } => windows.iter().for_each(|(_, w)| total.merge(w)),
            _ => return Err(unexpected("aggregator")),
        }
    }
    let served = total.cache_hits + total.stale_hits;
    let lookups = served + total.cache_misses;
    if format == "prometheus" {
        let text = prometheus(&total);
        let headers = Headers::new();
        headers.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
        return Ok(Response::ok(text)?.with_headers(headers));
    }
    json(
        &j!({
            "timestamp": t.to_rfc3339(),
            "period": period,
            "volume": {
                "totalRequests": total.requests,
                "cacheHits": total.cache_hits,
                "staleHits": total.stale_hits,
                "cacheMisses": total.cache_misses,
                "rateLimited": total.rate_limited,
                "errors": total.errors,
            },
            "hitRates": {
                "cache": pct(total.cache_hits, lookups),
                "stale": pct(total.stale_hits, lookups),
                "combined": pct(served, lookups),
            },
            "latency": {
                "avg": if total.requests == 0 { 0.0 } else { total.latency_sum_ms as f64 / total.requests as f64 },
                "max": total.latency_max_ms,
            },
        }),
        200,
    )
}

fn prometheus(w: &Window) -> String {
    let mut out = String::new();
    let counters = [
        ("gateway_requests_total", "Requests recorded.", w.requests),
        (
            "gateway_errors_total",
            "Responses with status >= 500.",
            w.errors,
        ),
        ("gateway_cache_hits_total", "Cache hits.", w.cache_hits),
        (
            "gateway_cache_stale_hits_total",
            "Stale cache hits.",
            w.stale_hits,
        ),
        (
            "gateway_cache_misses_total",
            "Cache misses.",
            w.cache_misses,
        ),
        (
            "gateway_rate_limited_total",
            "Rate-limited requests.",
            w.rate_limited,
        ),
    ];
    for (name, help, v) in counters {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP gateway_latency_max_ms Largest latency in the period.\n# TYPE gateway_latency_max_ms gauge\ngateway_latency_max_ms {}\n",
        w.latency_max_ms
    ));
    out
}
