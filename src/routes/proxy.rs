//! `ANY /v1/proxy/{group}/{path...}`: executes the plan of `gateway_core::proxy`.
//!
//! 1. Rate limit, cache lookup and cohort run concurrently; [`plan::start`] decides.
//! 2. One `PickRanked` hop returns the ranked candidates; the [`Plan`] walks them (failover
//!    needs no further hop). A delivered body is buffered (known, small length) or streamed
//!    through a metering [`Relay`] chunk by chunk.
//! 3. After the body ended (a stream: when it completes, fails or the client leaves) one task
//!    off the response path settles: `Settle` to the group's object (outcomes, unused
//!    candidates), the cache fill, the request's record and the cohort's outcome.

use gateway_core::balancer::Preference;
use gateway_core::config::Config;
use gateway_core::observe::{CacheOutcome, Record};
use gateway_core::protocol::cache::{Cached, Request as CacheRequest, Response as CacheResponse};
use gateway_core::protocol::providers::{Request as PRequest, Response as PResponse};
use gateway_core::proxy::{self as plan, Body, Delivery, End, Meter, Metered, Plan, Start, Step};
use gateway_core::shard::shard_name;
use gateway_core::UnixMillis;
use worker::{Context, Env, Headers, Request, Response};

use super::experiments::{self, Cohort};
use super::now;
use super::ratelimit::{caller_key, check_caller, decision_response, header_values};
use crate::error::{problem_with_extra, AppResult};
use crate::http::read_body;
use crate::stub::{binding, call, unexpected};
use crate::telemetry::{Defer, Inline};
use crate::upstream::{lower_headers, read_all, send, Outgoing, Relay};

fn elapsed_ms(start: UnixMillis) -> u32 {
    u32::try_from(now().since(start).max(0)).unwrap_or(u32::MAX)
}

/// What the request's bookkeeping needs once its answer is out (owned: it may run after the
/// handler returned).
struct Books {
    env: Env,
    group: String,
    path: String,
    request_id: String,
    caller: String,
    started: UnixMillis,
    shards: u32,
    cohort: Option<Cohort>,
    cache: Option<(String, String)>,
}

impl Books {
    fn record(&self, status: u16, cache: CacheOutcome, latency_ms: u32) -> Record {
        Record {
            at: self.started,
            status,
            latency_ms,
            cache,
            rate_limited: false,
            upstream_calls: 0,
            key: Record::key_for(&self.group, &self.path),
            provider: None,
            provider_latency_ms: 0,
            provider_error: false,
            cost_micro_usd: 0,
        }
    }

    /// The request's record and its cohort's outcome.
    fn observe(&self, d: &dyn Defer, r: Record) {
        if let Some(c) = self.cohort.as_ref().filter(|c| c.counted) {
            let values = vec![
                (
                    "cache_hit".to_string(),
                    f64::from(u8::from(matches!(
                        r.cache,
                        CacheOutcome::Hit | CacheOutcome::Stale
                    ))),
                ),
                ("latency_ms".to_string(), f64::from(r.latency_ms)),
                ("error".to_string(), f64::from(u8::from(r.status >= 500))),
                ("cost_usd".to_string(), r.cost_micro_usd as f64 / 1e6),
            ];
            experiments::record(d, &self.env, &c.experiment, &self.caller, values);
        }
        crate::telemetry::emit(d, &self.env, self.shards, &self.request_id, r);
    }

    /// Settles a forwarded request once its body ended: one `Settle`, the fill, the record.
    async fn settle(
        self,
        p: Plan,
        body: Option<Metered>,
        status: u16,
        cache: CacheOutcome,
        latency_ms: u32,
    ) {
        let s = p.settle(body);
        let object = super::providers::object_name(&self.group);
        let msg = PRequest::Settle {
            group: self.group.clone(),
            outcomes: s.outcomes,
            released: s.released,
        };
        let settle = call::<_, PResponse>(&self.env, binding::PROVIDER_HEALTH, &object, &msg);
        let fill = async {
            if let (Some(f), Some((key, o))) = (s.fill, &self.cache) {
                let msg = CacheRequest::Put {
                    key: key.clone(),
                    value: f.value,
                    content_type: f.content_type,
                    spec: f.spec,
                };
                let _ = call::<_, CacheResponse>(&self.env, binding::CACHE_SHARD, o, &msg).await;
            }
        };
        let _ = futures::join!(settle, fill);
        let inline = Inline::default();
        self.observe(
            &inline,
            Record {
                upstream_calls: u8::try_from(s.attempts).unwrap_or(u8::MAX),
                provider: s.last.as_ref().map(|(p, _)| format!("{}/{p}", self.group)),
                provider_latency_ms: s.last.as_ref().map_or(0, |(_, o)| o.latency_ms),
                provider_error: s.last.as_ref().is_some_and(|(_, o)| !o.ok),
                cost_micro_usd: s.cost_micro_usd,
                ..self.record(status, cache, latency_ms)
            },
        );
        inline.run().await;
    }
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

/// The answer the walk over the candidates ended with.
enum Walked {
    Buffered(Delivery, Vec<u8>),
    Streamed(Delivery, worker::Response),
    Other(Step),
}

/// Walks the ranked candidates with the plan: forward, judge the head, fail over.
async fn walk(env: &Env, p: &mut Plan, out: &Outgoing) -> Walked {
    let mut step = p.first_step();
    loop {
        let Step::Forward(i) = step else {
            return Walked::Other(step);
        };
        let Some(pick) = p.candidate(i).cloned() else {
            return Walked::Other(p.on_body_failed(false));
        };
        let secret = pick
            .secret
            .as_deref()
            .and_then(|n| crate::config::var(env, n));
        let t0 = now();
        let (head, resp) = send(&pick, secret, out).await;
        step = p.on_head(head, elapsed_ms(t0));
        match (step, resp) {
            (Step::Deliver(d), Some(mut resp)) if d.body == Body::Buffer => {
                let left = pick.timeout_ms.saturating_sub(u64::from(elapsed_ms(t0)));
                match read_all(&mut resp, left).await {
                    Ok(bytes) => return Walked::Buffered(d, bytes),
                    Err(timed_out) => step = p.on_body_failed(timed_out),
                }
            }
            (Step::Deliver(d), Some(resp)) => return Walked::Streamed(d, resp),
            (Step::Deliver(_), None) => step = p.on_body_failed(false),
            (other, _) => step = other,
        }
    }
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
        .map(|i| url[i..].to_string())
        .unwrap_or_default();
    let pairs = crate::http::query(&req)?;
    let headers = lower_headers(req.headers());
    let body = read_body(&mut req, cfg.max_body_bytes).await?;
    let opted_in = headers
        .iter()
        .any(|(k, v)| k == "x-gateway-retry" && v.eq_ignore_ascii_case("true"));
    let (method, gateway_path, caller) = (req.method(), req.path(), caller_key(&req));

    // 1. Rate limit, cache lookup and the caller's experiment cohort, concurrently.
    let experiment = experiments::target_for(env, cfg, group, &format!("/{path}")).await;
    let allow = cfg.proxy_cache_query.get(group).map(Vec::as_slice);
    let cache =
        plan::cache_key(&caller, group, method.as_ref(), path, &pairs, allow, &body).map(|k| {
            let o = shard_name("cache", &k, cfg.cache_shards);
            (k, o)
        });
    let lookup = async {
        let (key, o) = cache.as_ref()?;
        let msg = CacheRequest::Get {
            key: key.clone(),
            allow_stale_if_error: true,
            lease_ms: Some(cfg.cache_fill_lease_ms),
            wait_ms: 0,
        };
        call::<_, CacheResponse>(env, binding::CACHE_SHARD, o, &msg)
            .await
            .ok()
    };
    let cohort_lookup = async {
        match &experiment {
            Some(n) => experiments::cohort(env, n, &caller).await,
            None => None,
        }
    };
    let (limit, cached, cohort) =
        futures::join!(check_caller(&req, env, cfg), lookup, cohort_lookup);
    let (_, policy, decision, shadow_denied) = limit?;
    let policy_name = &cfg.rate_limit_caller_policy;
    let books = Books {
        env: env.clone(),
        group: group.into(),
        path: path.into(),
        request_id: request_id.into(),
        caller: caller.clone(),
        started,
        shards: cfg.aggregator_shards,
        cohort: cohort.clone(),
        cache: cache.clone(),
    };
    let (rl_policy, rl_limit) = header_values(policy_name, &policy, &decision);
    let decorate = |mut resp: Response,
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
    let serve_cached = |c: Cached, label: &str, outcome: CacheOutcome| -> AppResult<Response> {
        let (resp, status) = cached_response(c)?;
        let latency_ms = elapsed_ms(started);
        books.observe(ctx, books.record(status, outcome, latency_ms));
        decorate(resp, label, None, 0, latency_ms)
    };

    let stale_if_error = match plan::start(decision.allowed, cached) {
        Start::Deny => {
            let latency_ms = elapsed_ms(started);
            books.observe(
                ctx,
                Record {
                    rate_limited: true,
                    ..books.record(429, CacheOutcome::None, latency_ms)
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
            resp.headers_mut()
                .set("Server-Timing", &format!("gateway;dur={latency_ms}"))?;
            return Ok(resp);
        }
        Start::Hit(c) => return serve_cached(c, "HIT", CacheOutcome::Hit),
        Start::Stale(c) => return serve_cached(c, "STALE", CacheOutcome::Stale),
        Start::Forward { stale_if_error } => stale_if_error,
    };

    // 2. One pick hop, then the walk over the candidates.
    let prefer = cohort
        .as_ref()
        .map(|c| c.params.preference())
        .unwrap_or_else(Preference::default);
    let msg = PRequest::PickRanked {
        group: group.into(),
        prefer,
        max: plan::MAX_ATTEMPTS as u8,
    };
    let (picks, budget_resets_in_ms) = match call(
        env,
        binding::PROVIDER_HEALTH,
        &super::providers::object_name(group),
        &msg,
    )
    .await?
    {
        PResponse::Candidates {
            picks,
            budget_resets_in_ms,
        } => (picks, budget_resets_in_ms),
        _ => return Err(unexpected("provider health")),
    };
    let settings = plan::Settings {
        group: group.into(),
        max_attempts: plan::MAX_ATTEMPTS,
        cacheable: cache.is_some(),
        default_ttl_s: cohort
            .as_ref()
            .and_then(|c| c.params.cache_ttl_s)
            .unwrap_or(cfg.cache_default_ttl_s),
        negative_ttl_s: cfg.cache_negative_ttl_s,
        max_buffer_bytes: cfg.proxy_buffer_max_bytes,
    };
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
        request_id: request_id.into(),
    };
    let walked = walk(env, &mut p, &out).await;
    let lookup_outcome = if cache.is_some() {
        CacheOutcome::Miss
    } else {
        CacheOutcome::None
    };
    let attempts = p.attempted();
    let latency_ms = elapsed_ms(started);

    // 3. Answer; settle once the body has ended.
    let (resp, status, provider, ended) = match walked {
        Walked::Buffered(d, bytes) => {
            let mut meter = Meter::new(d.content_type.as_deref(), d.collect);
            meter.feed(&bytes);
            let (tx, rx) = futures::channel::oneshot::channel();
            let _ = tx.send(meter.finish(End::Completed));
            (
                Response::from_bytes(bytes)?,
                d.status,
                p.candidate(d.candidate).map(|c| c.name.clone()),
                Some((d.headers, rx)),
            )
        }
        Walked::Streamed(d, mut upstream) => {
            let idle_ms = p.candidate(d.candidate).map_or(10_000, |c| c.timeout_ms);
            let (relay, rx) = Relay::new(
                upstream.stream()?,
                Meter::new(d.content_type.as_deref(), d.collect),
                idle_ms,
            );
            (
                Response::from_stream(relay)?,
                d.status,
                p.candidate(d.candidate).map(|c| c.name.clone()),
                Some((d.headers, rx)),
            )
        }
        Walked::Other(Step::Stale(c)) => {
            let (resp, status) = cached_response(c)?;
            ctx.wait_until(books.settle(p, None, status, CacheOutcome::Stale, latency_ms));
            return decorate(resp, "STALE", None, attempts.len(), latency_ms);
        }
        Walked::Other(Step::Fail(f)) => {
            let mut extra = serde_json::Map::new();
            extra.insert("attempts".into(), serde_json::json!(attempts));
            extra.insert("group".into(), serde_json::json!(group));
            let mut resp = problem_with_extra(&f.error, request_id, &gateway_path, Some(extra))?;
            if let Some(ra) = &f.retry_after {
                resp.headers_mut().set("Retry-After", ra)?;
            }
            (resp, f.error.status(), None, None)
        }
        Walked::Other(_) => return Err(unexpected("proxy plan")),
    };
    let resp = match &ended {
        Some((pass_back, _)) => {
            let h = Headers::new();
            for (k, v) in pass_back {
                h.set(k, v)?;
            }
            resp.with_status(status).with_headers(h)
        }
        None => resp,
    };
    ctx.wait_until(async move {
        let body = match ended {
            Some((_, rx)) => Some(
                rx.await
                    .unwrap_or_else(|_| Meter::new(None, 0).finish(End::ClientGone)),
            ),
            None => None,
        };
        books
            .settle(p, body, status, lookup_outcome, latency_ms)
            .await;
    });
    decorate(
        resp,
        "MISS",
        provider.as_deref(),
        attempts.len(),
        latency_ms,
    )
}
