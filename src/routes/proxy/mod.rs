//! `ANY /v1/proxy/{group}/{path...}`: executes the plan of `gateway_core::proxy`.
//!
//! 1. Rate limit, cache lookup and cohort run concurrently; [`plan::start`] decides.
//! 2. One `PickRanked` hop returns the ranked candidates; [`walk`] follows the [`Plan`] over
//!    them (failover needs no further hop). A delivered body is buffered (known, small length)
//!    or piped through a metering relay chunk by chunk.
//! 3. After the body ended (a stream: when it completes, fails or the client leaves) one task
//!    off the response path settles ([`Books::settle`]).

pub mod hops;

use gateway_core::config::Config;
use gateway_core::observe::{CacheOutcome, Record};
use gateway_core::protocol::cache::Cached;
use gateway_core::proxy::{self as plan, Plan, Settings, Start, Step};
use gateway_core::UnixMillis;
use worker::{Context, Env, Headers, Request, Response};

use super::now;
use super::ratelimit::{caller_key, check_caller, decision_response, header_values};
use crate::clients::CacheShards;
use crate::error::{problem_with_extra, AppResult};
use crate::http::read_body;
use crate::isolate;
use crate::upstream::{lower_headers, walk, Outgoing, Walked};
use hops::Books;

fn elapsed_ms(start: UnixMillis) -> u32 {
    u32::try_from(now().since(start).max(0)).unwrap_or(u32::MAX)
}

/// A cached answer as a response, and its status.
fn cached_response(c: Cached) -> AppResult<(Response, u16)> {
    let status = plan::cached_status(&c);
    let age = (c.age_ms / 1000).to_string();
    let mut resp =
        super::cache::value_response(c.value, c.content_type.as_deref())?.with_status(status);
    resp.headers_mut().set("Age", &age)?;
    Ok((resp, status))
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
    let started = now();
    let url = req.inner().url();
    let query = url
        .find('?')
        .map_or(String::new(), |i| url[i..].to_string());
    let pairs = crate::http::query(&req)?;
    let headers = lower_headers(req.headers());
    let body = read_body(&mut req, cfg.max_body_bytes).await?;
    let opted_in = headers
        .iter()
        .any(|(k, v)| k == "x-gateway-retry" && v.eq_ignore_ascii_case("true"));
    let (method, gateway_path, caller) = (req.method(), req.path(), caller_key(&req));

    // 1. Rate limit, cache lookup and the caller's experiment cohort, concurrently.
    let experiment = isolate::target_for(env, cfg, group, &format!("/{path}")).await;
    let allow = cfg.proxy_cache_query.get(group).map(Vec::as_slice);
    let shards = CacheShards::new(env, cfg);
    let cache = plan::cache_key(&caller, group, method.as_ref(), path, &pairs, allow, &body)
        .map(|k| shards.slot_of(k));
    let cohort = async {
        match &experiment {
            Some(n) => isolate::cohort(env, n, &caller).await,
            None => None,
        }
    };
    let (limit, cached, cohort) = futures::join!(
        check_caller(&req, env, cfg),
        hops::lookup(&shards, cache.as_ref(), cfg.cache_fill_lease_ms),
        cohort
    );
    let (_, policy, decision, shadow_denied) = limit?;
    let books = Books {
        env: env.clone(),
        group: group.into(),
        path: path.into(),
        request_id: request_id.into(),
        caller: caller.clone(),
        started,
        shards: cfg.aggregator_shards,
        cache_shards: cfg.cache_shards,
        cohort: cohort.clone(),
        cache: cache.clone(),
    };
    let policy_name = &cfg.rate_limit_caller_policy;
    let (rl_policy, rl_limit) = header_values(policy_name, &policy, &decision);
    let decorate = |mut resp: Response, cache: &str, provider: Option<&str>, attempts: usize| {
        let h = resp.headers_mut();
        h.set(
            "Server-Timing",
            &format!("gateway;dur={}", elapsed_ms(started)),
        )?;
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
        AppResult::Ok(resp)
    };
    let serve_cached = |c: Cached, label: &str, outcome: CacheOutcome| {
        let (resp, status) = cached_response(c)?;
        books.observe(ctx, books.record(status, outcome, elapsed_ms(started)));
        decorate(resp, label, None, 0)
    };
    let stale_if_error = match plan::start(decision.allowed, cached) {
        Start::Deny => {
            let r = books.record(429, CacheOutcome::None, elapsed_ms(started));
            books.observe(
                ctx,
                Record {
                    rate_limited: true,
                    ..r
                },
            );
            let mut resp = decision_response(
                policy_name,
                &caller,
                &policy,
                &decision,
                shadow_denied,
                &gateway_path,
                request_id,
            )?;
            let timing = format!("gateway;dur={}", elapsed_ms(started));
            resp.headers_mut().set("Server-Timing", &timing)?;
            return Ok(resp);
        }
        Start::Hit(c) => return serve_cached(c, "HIT", CacheOutcome::Hit),
        Start::Stale(c) => return serve_cached(c, "STALE", CacheOutcome::Stale),
        Start::Forward { stale_if_error } => stale_if_error,
    };

    // 2. One pick hop, then the walk over the candidates.
    let arm = cohort.as_ref().map(|c| &c.params);
    let prefer = arm.map(|a| a.preference()).unwrap_or_default();
    let (picks, budget_resets_in_ms) = hops::candidates(env, group, prefer).await?;
    let settings = Settings::new(cfg, group, cache.is_some(), arm.and_then(|a| a.cache_ttl_s));
    let mut p = Plan::new(
        settings,
        method.as_ref(),
        opted_in,
        picks,
        budget_resets_in_ms,
        stale_if_error,
    );
    let out = Outgoing {
        method,
        path: path.into(),
        query,
        headers,
        body,
        bodies: Vec::new(),
        request_id: request_id.into(),
    };
    let walked = walk(env, &mut p, &out).await?;
    let attempts = p.attempted();
    let latency_ms = elapsed_ms(started);
    let looked_up = if cache.is_some() {
        CacheOutcome::Miss
    } else {
        CacheOutcome::None
    };

    // 3. Answer; settle once the body has ended.
    match walked {
        Walked::Delivered(d, resp, ended) => {
            let h = Headers::new();
            for (k, v) in &d.headers {
                h.set(k, v)?;
            }
            let provider = p.candidate(d.candidate).map(|c| c.name.clone());
            ctx.wait_until(async move {
                let body = ended.await.ok();
                books.settle(p, body, d.status, looked_up, latency_ms).await;
            });
            let resp = resp.with_status(d.status).with_headers(h);
            decorate(resp, "MISS", provider.as_deref(), attempts.len())
        }
        Walked::Other(Step::Stale(c)) => {
            let (resp, status) = cached_response(c)?;
            ctx.wait_until(async move {
                books
                    .settle(p, None, status, CacheOutcome::Stale, latency_ms)
                    .await;
            });
            decorate(resp, "STALE", None, attempts.len())
        }
        Walked::Other(step) => {
            let f = match step {
                Step::Fail(f) => f,
                _ => plan::Failure {
                    error: gateway_core::GatewayError::Internal("unexpected proxy step".into()),
                    retry_after: None,
                },
            };
            let status = f.error.status();
            ctx.wait_until(async move {
                books.settle(p, None, status, looked_up, latency_ms).await;
            });
            let mut extra = serde_json::Map::new();
            extra.insert("attempts".into(), serde_json::json!(attempts));
            extra.insert("group".into(), serde_json::json!(group));
            let mut resp = problem_with_extra(&f.error, request_id, &gateway_path, Some(extra))?;
            if let Some(ra) = &f.retry_after {
                resp.headers_mut().set("Retry-After", ra)?;
            }
            decorate(resp, "MISS", None, attempts.len())
        }
    }
}
