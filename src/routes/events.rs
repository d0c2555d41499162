//! Observability routes: `POST /v1/events` (external records), `GET /metrics` (JSON and
//! Prometheus), `GET /v1/metrics/series`, `GET /v1/alerts`, `GET /v1/reports/daily`,
//! `POST /v1/rollup/run` (admin) and `GET /dashboard`.
//!
//! `/metrics` is exact and fresh: the root's merged buckets plus, from every shard, the windows
//! at or after the root's cursor for it (fetched concurrently), so nothing is missed or counted
//! twice whatever the alarms are doing.

use futures::future::join_all;
use gateway_core::balancer::Circuit;
use gateway_core::config::Config;
use gateway_core::observe::alerts::{Phase, Severity};
use gateway_core::observe::export::{
    metrics_json, prometheus, series_json, Issue, ProviderHealthView, Snapshot,
};
use gateway_core::observe::series::{add_to_points, floor, Period};
use gateway_core::observe::{Agg, CacheOutcome, Record};
use gateway_core::{GatewayError, UnixMillis};
use serde::Deserialize;
use serde_json::{json as j, Value};
use worker::{Env, Headers, Request, Response};

use super::now;
use crate::clients::aggregator::Points;
use crate::clients::{Aggregator, Providers};
use crate::error::AppResult;
use crate::http::{json, parse_json, read_body};

/// Largest batch `POST /v1/events` accepts.
pub const MAX_EVENTS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    status: u16,
    latency_ms: u32,
    #[serde(default = "no_cache")]
    cache: CacheOutcome,
    #[serde(default)]
    rate_limited: bool,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    upstream_calls: u8,
}

fn no_cache() -> CacheOutcome {
    CacheOutcome::None
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<EventJson>,
}

/// `POST /v1/events`: `{"events":[{"status":200,"latency_ms":12,"cache":"hit","key":"k"}]}`, at
/// most 1000 per call, stamped with the gateway's clock and recorded in one aggregator shard
/// (the same pipeline as proxied requests).
pub async fn ingest(
    mut req: Request,
    env: &Env,
    cfg: &Config,
    request_id: &str,
) -> AppResult<Response> {
    let batch: Batch = parse_json(&read_body(&mut req, cfg.max_body_bytes).await?)?;
    if batch.events.is_empty() || batch.events.len() > MAX_EVENTS {
        return Err(GatewayError::bad_request(
            "invalid-event",
            format!("send 1 to {MAX_EVENTS} events"),
        )
        .into());
    }
    let at = now();
    let mut records = Vec::with_capacity(batch.events.len());
    for e in batch.events {
        let r = Record {
            at,
            status: e.status,
            latency_ms: e.latency_ms,
            cache: e.cache,
            rate_limited: e.rate_limited,
            upstream_calls: e.upstream_calls,
            key: e.key.unwrap_or_default(),
            provider: None,
            provider_latency_ms: 0,
            provider_error: false,
            cost_micro_usd: 0,
        };
        r.validate()?;
        records.push(r);
    }
    let batch = format!("events-{request_id}-{}", at.0);
    let r = Aggregator::of(env, cfg)
        .record(request_id, batch, records, 1)
        .await?;
    json(&j!({ "accepted": r.accepted, "late": r.late }), 202)
}

fn period_param(req: &Request, default_format: &str) -> AppResult<(Period, String)> {
    let mut period = Period::Hour;
    let mut format = default_format.to_string();
    for (k, v) in crate::http::query(req)? {
        match k.as_str() {
            "period" => {
                period = Period::parse(&v).ok_or_else(|| {
                    GatewayError::bad_request("invalid-query", "period must be 1h, 24h or 7d")
                })?;
            }
            "format" => format = v,
            _ => {}
        }
    }
    if format != "json" && format != "prometheus" {
        return Err(GatewayError::bad_request(
            "invalid-query",
            "format must be json or prometheus",
        )
        .into());
    }
    Ok((period, format))
}

/// Live health of the providers of every configured group and of every group with traffic in
/// `agg`, as `group/name`.
async fn provider_health(env: &Env, cfg: &Config, agg: &Agg) -> Vec<ProviderHealthView> {
    let mut groups: Vec<String> = cfg.providers.keys().cloned().collect();
    for (name, _) in &agg.providers {
        if let Some((g, _)) = name.split_once('/') {
            if !groups.iter().any(|x| x == g) && gateway_core::validate::name("group", g).is_ok() {
                groups.push(g.to_string());
            }
        }
    }
    groups.truncate(64);
    let client = Providers::new(env);
    let calls = groups.iter().map(|g| client.status(g));
    let mut out = Vec::new();
    for s in join_all(calls).await.into_iter().flatten() {
        for p in s.providers {
            let status = if !p.healthy {
                "ejected"
            } else if p.circuit != Circuit::Closed {
                "recovering"
            } else {
                "healthy"
            };
            out.push(ProviderHealthView {
                name: format!("{}/{}", s.group, p.spec.name),
                status: status.into(),
            });
        }
    }
    out
}

/// `GET /metrics?period=1h|24h|7d&format=json|prometheus`.
pub async fn metrics(req: Request, env: &Env, cfg: &Config) -> AppResult<Response> {
    let (period, format) = period_param(&req, "json")?;
    let aggregator = Aggregator::of(env, cfg);
    // Summary and spend under one set of cursors, then every shard's part after its cursor.
    let mut all = aggregator.spend_summary(period).await?;
    let live = aggregator.live_all(&all.summary.cursors).await?;
    let t = now().max(all.summary.now);
    let fine_ms = cfg.rollup_bucket_ms as i64;
    all.add_live(period, t, fine_ms, &live.spend);
    let summary = &mut all.summary;
    let covered_ms = summary.add_live(period, t, fine_ms, &live.windows);
    let providers = provider_health(env, cfg, &summary.agg).await;
    let mut issues = std::mem::take(&mut summary.issues);
    for p in providers.iter().filter(|p| p.status == "ejected") {
        issues.push(Issue {
            severity: Severity::Warning,
            message: format!("provider {} is ejected", p.name),
            since: t,
        });
    }
    let snapshot = Snapshot {
        now: t,
        period,
        agg: &summary.agg,
        covered_ms,
        lifetime: &summary.lifetime,
        providers: &providers,
        issues: &issues,
        prices: &cfg.platform_prices,
        spend: &all.spend,
        today: &all.today,
    };
    if format == "prometheus" {
        let headers = Headers::new();
        headers.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")?;
        return Ok(Response::ok(prometheus(&snapshot))?.with_headers(headers));
    }
    json(&metrics_json(&snapshot), 200)
}

/// `GET /v1/metrics/series?period=1h|24h|7d`: chart points (root buckets plus live windows).
pub async fn series(req: Request, env: &Env, cfg: &Config) -> AppResult<Response> {
    let (period, _) = period_param(&req, "json")?;
    let aggregator = Aggregator::of(env, cfg);
    let Points {
        step_ms,
        mut points,
        cursors,
    } = aggregator.points(period).await?;
    let since = floor(now().plus_ms(-period.span_ms()), step_ms).plus_ms(step_ms);
    let live = aggregator.live(&cursors).await?;
    add_to_points(&mut points, step_ms, since, &live);
    json(&series_json(period, step_ms, &points), 200)
}

/// `GET /v1/alerts`: rules, active alerts and the notification history.
pub async fn alerts(env: &Env, cfg: &Config) -> AppResult<Response> {
    let v = Aggregator::of(env, cfg).alerts().await?;
    let rule = |name: &str| v.rules.iter().find(|r| r.name == name);
    let active: Vec<Value> = v
        .states
        .iter()
        .filter_map(|s| {
            let r = rule(&s.rule)?;
            let (state, since) = match s.phase {
                Phase::Pending { since } => ("pending", since),
                Phase::Firing { since, .. } => ("firing", since),
                Phase::Inactive => return None,
            };
            Some(j!({
                "name": s.rule,
                "severity": r.severity.name(),
                "metric": r.metric.name(),
                "state": state,
                "value": s.value,
                "threshold": r.threshold,
                "since": since.to_rfc3339(),
            }))
        })
        .collect();
    let history: Vec<Value> = v
        .history
        .iter()
        .rev()
        .map(|n| {
            let p = n.payload();
            j!({
                "name": n.rule,
                "severity": n.severity.name(),
                "status": p["status"],
                "repeat": n.repeat,
                "value": n.value,
                "threshold": n.threshold,
                "at": n.at.to_rfc3339(),
                "startsAt": n.starts_at.to_rfc3339(),
                "endsAt": n.ends_at.map(UnixMillis::to_rfc3339),
            })
        })
        .collect();
    let rules: Vec<Value> = v
        .rules
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect();
    json(
        &j!({
            "active": active,
            "history": history,
            "rules": rules,
            "webhook": { "configured": v.webhook, "pending": v.pending, "delivered": v.delivered, "dropped": v.dropped },
        }),
        200,
    )
}

/// `GET /v1/reports/daily`.
pub async fn report(env: &Env, cfg: &Config) -> AppResult<Response> {
    let text = Aggregator::of(env, cfg).report().await?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| GatewayError::Internal(format!("stored report: {e}")))?;
    json(&v, 200)
}

/// `POST /v1/rollup/run` (admin): run the root's alarm work now (merging is idempotent, so
/// this is also how the tests force alarm retries).
pub async fn run(env: &Env, cfg: &Config) -> AppResult<Response> {
    let r = Aggregator::of(env, cfg).run().await?;
    json(&serde_json::to_value(&r).unwrap_or(Value::Null), 200)
}

/// `GET /dashboard`: the page (it reads the JSON APIs above).
pub fn dashboard() -> AppResult<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", "text/html; charset=utf-8")?;
    headers.set("Cache-Control", "no-cache")?;
    headers.set(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
    )?;
    Ok(Response::ok(DASHBOARD)?.with_headers(headers))
}

/// The dashboard page, embedded at build time.
pub const DASHBOARD: &str = include_str!("../dashboard/index.html");
