//! `ANY /v1/proxy/{group}/{path...}`: the gateway's main job.
//!
//! 1. Rate limit (the caller's policy), cache lookup and, when an experiment targets the path,
//!    the caller's cohort run concurrently (`futures::join!`).
//! 2. A fresh cached answer is served (`X-Cache: HIT`).
//! 3. Otherwise a provider is picked and the request forwarded with the provider's credentials
//!    and timeout. A retryable failure (5xx, 429, timeout, connection error) moves on to the next
//!    provider (at most 3 attempts, only for idempotent or opted-in requests).
//! 4. The attempts' outcomes go to the group's `ProviderHealthDO`, and a storable answer to the
//!    cache, both off the response path (`ctx.wait_until`).
//! 5. Upstream failures reach the client as 502 (errors) or 504 (timeouts) problems.
//!
//! A cohort's arm parameters apply to the request (`cache_ttl_s` to the fill, `provider` and
//! `strategy` to the pick); the response carries `X-Experiment: {experiment}={arm}`; the outcome
//! (cache hit, latency, error, cost) goes to the experiment off the response path.

use std::time::Duration;

use futures::future::{select, Either};
use gateway_core::balancer::{judge, may_retry, parse_retry_after, Attempt, Outcome, Pick};
use gateway_core::cache::policy::{cache_key, storable};
use gateway_core::config::Config;
use gateway_core::observe::{CacheOutcome, Record};
use gateway_core::protocol::cache::{PutSpec, Request as CacheRequest, Response as CacheResponse};
use gateway_core::protocol::providers::{Request as PRequest, Response as PResponse};
use gateway_core::shard::shard_name;
use gateway_core::{GatewayError, UnixMillis};
use worker::{
    AbortController, Context, Delay, Env, Fetch, Headers, Method, Request, RequestInit, Response,
};

use super::experiments;
use super::now;
use super::ratelimit::{check_caller, header_values};
use crate::error::{problem_with_extra, AppResult};
use crate::http::read_body;
use crate::stub::{binding, call, unexpected};

/// Most providers tried for one request.
const MAX_ATTEMPTS: usize = 3;
/// Request headers forwarded upstream (never the client's own credentials).
const FORWARD: &[&str] = &["content-type", "accept", "accept-language", "user-agent"];
/// Response headers passed back to the client.
const PASS_BACK: &[&str] = &[
    "content-type",
    "cache-control",
    "retry-after",
    "etag",
    "last-modified",
];

struct Upstream {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn lower_headers(h: &Headers) -> Vec<(String, String)> {
    h.entries()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// The parts of the client's request that go upstream.
struct Outgoing<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    body: &'a [u8],
    request_id: &'a str,
}

async fn forward(
    pick: &Pick,
    timeout_ms: u64,
    secret: Option<String>,
    o: &Outgoing<'_>,
) -> (Attempt, Option<Upstream>) {
    let (method, path, query, headers, body, request_id) =
        (o.method, o.path, o.query, o.headers, o.body, o.request_id);
    let url = format!("{}/{}{}", pick.url.trim_end_matches('/'), path, query);
    let out = Headers::new();
    for (k, v) in headers {
        if FORWARD.contains(&k.as_str()) {
            let _ = out.set(k, v);
        }
    }
    let _ = out.set("X-Request-Id", request_id);
    if let Some(key) = secret {
        let _ = out.set("Authorization", &format!("Bearer {key}"));
    }
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(out);
    if !body.is_empty() && !matches!(method, Method::Get | Method::Head) {
        init.with_body(Some(js_sys::Uint8Array::from(body).into()));
    }
    let Ok(req) = Request::new_with_init(&url, &init) else {
        return (Attempt::ConnectionError, None);
    };
    let controller = AbortController::default();
    let signal = controller.signal();
    let attempt = async {
        let mut resp = Fetch::Request(req).send_with_signal(&signal).await?;
        let body = resp.bytes().await?;
        Ok::<_, worker::Error>((resp.status_code(), lower_headers(resp.headers()), body))
    };
    let result = match select(
        Box::pin(attempt),
        Delay::from(Duration::from_millis(timeout_ms)),
    )
    .await
    {
        Either::Left((r, _)) => Some(r),
        Either::Right(_) => None,
    };
    match result {
        Some(Ok((status, headers, body))) => {
            let retry_after_ms = headers
                .iter()
                .find(|(k, _)| k == "retry-after")
                .and_then(|(_, v)| parse_retry_after(v));
            (
                Attempt::Response {
                    status,
                    retry_after_ms,
                },
                Some(Upstream {
                    status,
                    headers,
                    body,
                }),
            )
        }
        Some(Err(_)) => (Attempt::ConnectionError, None),
        None => {
            controller.abort();
            (Attempt::Timeout, None)
        }
    }
}

/// OpenAI-style `usage` of a JSON answer: (prompt tokens, completion tokens); zeros otherwise.
fn usage(body: &[u8]) -> (u32, u32) {
    if body.len() > 4 << 20 || body.first() != Some(&b'{') {
        return (0, 0);
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        #[serde(default)]
        prompt_tokens: u32,
        #[serde(default)]
        completion_tokens: u32,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(Answer { usage: Some(u) }) => (u.prompt_tokens, u.completion_tokens),
        _ => (0, 0),
    }
}

fn elapsed_ms(start: UnixMillis) -> u32 {
    u32::try_from(now().since(start).max(0)).unwrap_or(u32::MAX)
}

/// Handles one proxied request.
pub async fn proxy(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
    request_id: &str,
    group: &str,
    path: &str,
) -> AppResult<Response> {
    let method = req.method();
    let url = req.inner().url();
    let query = url
        .find('?')
        .map(|i| url[i..].to_string())
        .unwrap_or_default();
    let query_pairs = crate::http::query(&req)?;
    let headers = lower_headers(req.headers());
    let body = read_body(&mut req, cfg.max_body_bytes).await?;
    let opted_in = headers
        .iter()
        .any(|(k, v)| k == "x-gateway-retry" && v.eq_ignore_ascii_case("true"));
    let gateway_path = req.path();
    let started = now();

    // 1. Rate limit, cache lookup and the caller's experiment cohort, concurrently.
    let caller = super::ratelimit::caller_key(&req);
    let experiment = experiments::target_for(env, cfg, group, &format!("/{path}")).await;
    let key = cache_key(
        &caller,
        method.as_ref(),
        &format!("/{path}"),
        &query_pairs,
        &[],
        &body,
    )
    .map(|k| format!("proxy/{group}/{k}"))
    .filter(|k| k.len() <= 1024);
    let cache_object = key
        .as_ref()
        .map(|k| shard_name("cache", k, cfg.cache_shards));
    let lookup = async {
        match (&key, &cache_object) {
            (Some(k), Some(o)) => {
                let msg = CacheRequest::Get {
                    key: k.clone(),
                    allow_stale_if_error: false,
                    lease_ms: None,
                    wait_ms: 0,
                };
                call::<_, CacheResponse>(env, binding::CACHE_SHARD, o, &msg)
                    .await
                    .ok()
            }
            _ => None,
        }
    };
    let cohort_lookup = async {
        match &experiment {
            Some(name) => experiments::cohort(env, name, &caller).await,
            None => None,
        }
    };
    let (limit, cached, cohort) =
        futures::join!(check_caller(&req, env, cfg), lookup, cohort_lookup);
    let (_, policy, decision, shadow_denied) = limit?;
    let policy_name = cfg.rate_limit_caller_policy.clone();
    let record = |status: u16,
                  cache: CacheOutcome,
                  upstream: Option<(&str, &Outcome)>,
                  calls: usize,
                  cost: u64| Record {
        at: started,
        status,
        latency_ms: elapsed_ms(started),
        cache,
        rate_limited: false,
        upstream_calls: u8::try_from(calls).unwrap_or(u8::MAX),
        key: Record::key_for(group, path),
        provider: upstream.map(|(p, _)| format!("{group}/{p}")),
        provider_latency_ms: upstream.map_or(0, |(_, o)| o.latency_ms),
        provider_error: upstream.is_some_and(|(_, o)| !o.ok),
        cost_micro_usd: cost,
    };
    // Emits the request's record (off the response path) and returns the latency it recorded,
    // which the response reports as `Server-Timing: gateway;dur=<ms>`.
    let emit = |r: Record| -> u32 {
        let latency_ms = r.latency_ms;
        crate::telemetry::emit(ctx, env, cfg.aggregator_shards, request_id, r);
        latency_ms
    };
    if !decision.allowed {
        let latency_ms = emit(Record {
            rate_limited: true,
            ..record(429, CacheOutcome::None, None, 0, 0)
        });
        let mut resp = super::ratelimit::decision_response(
            &policy_name,
            &caller,
            &policy,
            &decision,
            shadow_denied,
            &gateway_path,
            request_id,
        )?;
        resp.headers_mut()
            .set("Server-Timing", &format!("gateway;dur={latency_ms}"))?;
        return Ok(resp);
    }
    let (rl_policy, rl_limit) = header_values(&policy_name, &policy, &decision);
    let finish = |mut resp: Response,
                  cache: &str,
                  provider: Option<&str>,
                  attempts: usize,
                  latency_ms: u32|
     -> AppResult<Response> {
        let h = resp.headers_mut();
        h.set("Server-Timing", &format!("gateway;dur={latency_ms}"))?;
        h.set("X-Cache", cache)?;
        if let Some(p) = provider {
            h.set("X-Provider", p)?;
        }
        h.set("X-Gateway-Attempts", &attempts.to_string())?;
        h.set("RateLimit-Policy", &rl_policy)?;
        h.set("RateLimit", &rl_limit)?;
        if let Some(c) = &cohort {
            h.set("X-Experiment", &format!("{}={}", c.experiment, c.variant))?;
        }
        Ok(resp)
    };
    // Off the response path: the outcome for the caller's cohort.
    let report = |cache_hit: bool, status: u16, cost_micro_usd: u64| {
        if let Some(c) = cohort.as_ref().filter(|c| c.counted) {
            let values = vec![
                ("cache_hit".to_string(), f64::from(u8::from(cache_hit))),
                ("latency_ms".to_string(), f64::from(elapsed_ms(started))),
                ("error".to_string(), f64::from(u8::from(status >= 500))),
                ("cost_usd".to_string(), cost_micro_usd as f64 / 1e6),
            ];
            experiments::record(ctx, env, &c.experiment, &caller, values);
        }
    };

    // 2. Fresh answer from cache.
    if let Some(CacheResponse::Hit(c)) = cached {
        let status = if c.negative { 404 } else { 200 };
        let mut resp =
            super::cache::value_response(c.value, c.content_type.as_deref())?.with_status(status);
        resp.headers_mut()
            .set("Age", &(c.age_ms / 1000).to_string())?;
        report(true, status, 0);
        let latency_ms = emit(record(status, CacheOutcome::Hit, None, 0, 0));
        return finish(resp, "HIT", None, 0, latency_ms);
    }

    // 3. Pick, forward, fail over.
    let retry_allowed = may_retry(method.as_ref(), opted_in);
    let outgoing = Outgoing {
        method: &method,
        path,
        query: &query,
        headers: &headers,
        body: &body,
        request_id,
    };
    let provider_object = super::providers::object_name(group);
    let mut tried: Vec<String> = Vec::new();
    let mut outcomes: Vec<(String, Outcome)> = Vec::new();
    let mut last_attempt = Attempt::ConnectionError;
    let mut answer: Option<(String, Upstream)> = None;
    let mut cost_micro_usd = 0u64;
    while tried.len() < MAX_ATTEMPTS {
        let msg = PRequest::Pick {
            group: group.to_string(),
            exclude: tried.clone(),
            prefer: cohort
                .as_ref()
                .map(|c| c.params.preference())
                .unwrap_or_default(),
        };
        let pick = match call(env, binding::PROVIDER_HEALTH, &provider_object, &msg).await {
            Ok(PResponse::Picked(p)) => p,
            Ok(_) => return Err(unexpected("provider health")),
            Err(e) if tried.is_empty() => return Err(e),
            Err(_) => break, // every provider tried
        };
        let timeout_ms = pick.timeout_ms;
        let secret = pick
            .secret
            .as_deref()
            .and_then(|name| crate::config::var(env, name));
        let t0 = now();
        let (attempt, upstream) = forward(&pick, timeout_ms, secret, &outgoing).await;
        let (mut outcome, retryable) = judge(attempt, elapsed_ms(t0));
        if let Some(up) = upstream.as_ref().filter(|u| (200..300).contains(&u.status)) {
            (outcome.input_tokens, outcome.output_tokens) = usage(&up.body);
        }
        cost_micro_usd += pick.cost_of(&outcome);
        outcomes.push((pick.name.clone(), outcome));
        tried.push(pick.name.clone());
        last_attempt = attempt;
        if let Some(up) = upstream {
            if !retryable || !retry_allowed || tried.len() >= MAX_ATTEMPTS {
                answer = Some((pick.name, up));
                break;
            }
            answer = Some((pick.name, up));
        } else if !retry_allowed {
            break;
        }
    }
    let attempts = tried.len();
    let lookup_outcome = if cache_object.is_some() {
        CacheOutcome::Miss
    } else {
        CacheOutcome::None
    };
    let last = outcomes.last().map(|(p, o)| (p.clone(), *o));

    // 4. Off the response path: outcomes to the provider group, a storable answer to the cache.
    {
        let env2 = env.clone();
        let group2 = group.to_string();
        let object = provider_object.clone();
        ctx.wait_until(async move {
            let msg = PRequest::ReportMany {
                group: group2,
                outcomes,
            };
            let _ = call::<_, PResponse>(&env2, binding::PROVIDER_HEALTH, &object, &msg).await;
        });
    }
    if let (Some((_, up)), Some(k), Some(o)) = (&answer, key, cache_object) {
        // An experiment arm's `cache_ttl_s` replaces the default TTL of this fill.
        let default_ttl_s = cohort
            .as_ref()
            .and_then(|c| c.params.cache_ttl_s)
            .unwrap_or(cfg.cache_default_ttl_s);
        if let Some(s) = storable(
            up.status,
            &up.headers,
            default_ttl_s,
            cfg.cache_negative_ttl_s,
        ) {
            let content_type = up
                .headers
                .iter()
                .find(|(k, _)| k == "content-type")
                .map(|(_, v)| v.clone());
            let msg = CacheRequest::Put {
                key: k,
                value: up.body.clone(),
                content_type,
                spec: PutSpec {
                    ttl_ms: s.ttl_s * 1000,
                    stale_while_revalidate_ms: s.stale_while_revalidate_s * 1000,
                    stale_if_error_ms: s.stale_if_error_s * 1000,
                    negative: s.negative,
                    tags: vec![format!("proxy-{group}")]
                        .into_iter()
                        .filter(|t| t.len() <= 64)
                        .collect(),
                },
            };
            let env2 = env.clone();
            ctx.wait_until(async move {
                let _ = call::<_, CacheResponse>(&env2, binding::CACHE_SHARD, &o, &msg).await;
            });
        }
    }

    // 5. Answer.
    match answer {
        Some((provider, up)) if up.status < 500 && up.status != 429 => {
            let headers = Headers::new();
            for (k, v) in &up.headers {
                if PASS_BACK.contains(&k.as_str()) {
                    headers.set(k, v)?;
                }
            }
            let status = up.status;
            let resp = Response::from_bytes(up.body)?
                .with_status(status)
                .with_headers(headers);
            report(false, status, cost_micro_usd);
            let latency_ms = emit(record(
                status,
                lookup_outcome,
                last.as_ref().map(|(p, o)| (p.as_str(), o)),
                attempts,
                cost_micro_usd,
            ));
            finish(resp, "MISS", Some(&provider), attempts, latency_ms)
        }
        other => {
            let mut retry_after = None;
            let err = match (other, last_attempt) {
                (_, Attempt::Timeout) => GatewayError::GatewayTimeout(format!(
                    "every provider tried timed out ({attempts} attempts)"
                )),
                (Some((_, up)), _) if up.status == 429 => {
                    retry_after = up
                        .headers
                        .iter()
                        .find(|(k, _)| k == "retry-after")
                        .map(|(_, v)| v.clone());
                    GatewayError::Unavailable(format!(
                        "providers are rate limiting ({attempts} attempts)"
                    ))
                }
                (Some((_, up)), _) => GatewayError::BadGateway(format!(
                    "providers failed; the last answered {} ({attempts} attempts)",
                    up.status
                )),
                (None, _) => GatewayError::BadGateway(format!(
                    "no provider could be reached ({attempts} attempts)"
                )),
            };
            let mut extra = serde_json::Map::new();
            extra.insert("attempts".into(), serde_json::json!(tried));
            extra.insert("group".into(), serde_json::json!(group));
            report(false, err.status(), cost_micro_usd);
            let latency_ms = emit(record(
                err.status(),
                lookup_outcome,
                last.as_ref().map(|(p, o)| (p.as_str(), o)),
                attempts,
                cost_micro_usd,
            ));
            let mut resp = problem_with_extra(&err, request_id, &gateway_path, Some(extra))?;
            if let Some(ra) = retry_after {
                resp.headers_mut().set("Retry-After", &ra)?;
            }
            finish(resp, "MISS", None, attempts, latency_ms)
        }
    }
}
