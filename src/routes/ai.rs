//! The OpenAI-compatible routes: `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` (virtual key required) and `GET /v1/models`.
//!
//! 1. Parse the body (`model`, `stream`, `max_tokens`), find the model's targets, check the
//!    secret's shape and hash it (no hop yet).
//! 2. Concurrently: the key's admission (one hop to its rate-limiter shard: identity, allowed
//!    model, budgets, token windows, request rate, a reservation of the estimate) and the ranked
//!    candidates of the first target's group.
//! 3. Walk the plan over that group (failover across its providers); when the whole group
//!    fails, the next target's group, with its own model name. Streams are relayed as in the
//!    proxy.
//! 4. Off the response path, once the body ended: settle the providers and the record
//!    (`Books::settle`), then the key's reservation with the real tokens and the cost.
//!
//! Every error answers problem+json with OpenAI's `error` object beside it.

use gateway_core::ai::{self, Endpoint};
use gateway_core::config::Config;
use gateway_core::keys::{self, Admission, Limit};
use gateway_core::observe::spend::SpendRecord;
use gateway_core::observe::CacheOutcome;
use gateway_core::proxy::{Plan, Settings, Step};
use gateway_core::{GatewayError, UnixMillis};
use worker::{Context, Env, Headers, Method, Request, Response};

use super::now;
use super::proxy::hops::{self, Books, Settled};
use crate::clients::{Keys, Providers};
use crate::error::{problem_with_extra, AppResult};
use crate::http::{json, read_body};
use crate::isolate::{emit_spend, Inline};
use crate::upstream::{lower_headers, walk, Outgoing, Walked};

fn elapsed_ms(start: UnixMillis) -> u32 {
    u32::try_from(now().since(start).max(0)).unwrap_or(u32::MAX)
}

/// A failed request: the error and what its answer carries besides.
struct Failed {
    error: GatewayError,
    retry_after_s: Option<u64>,
    limits: Vec<Limit>,
    attempts: Vec<String>,
}

impl From<GatewayError> for Failed {
    fn from(error: GatewayError) -> Self {
        Failed {
            error,
            retry_after_s: None,
            limits: vec![],
            attempts: vec![],
        }
    }
}

impl From<crate::error::AppError> for Failed {
    fn from(e: crate::error::AppError) -> Self {
        e.0.into()
    }
}

impl From<worker::Error> for Failed {
    fn from(e: worker::Error) -> Self {
        crate::error::AppError::from(e).into()
    }
}

/// The key's settlement, run after the answer, with the request's spend record.
#[derive(Clone)]
struct KeySettle {
    env: Env,
    shards: u32,
    id: String,
    reservation: u64,
    /// Aggregator shards and request id (for the spend record's batch).
    aggregator_shards: u32,
    request_id: String,
    /// The spend record, without its usage and cost.
    spend: SpendRecord,
}

impl KeySettle {
    async fn run(self, s: Settled) {
        let keys = Keys::with_shards(&self.env, self.shards);
        let spend = SpendRecord {
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cost_micro_usd: s.cost_micro_usd,
            ..self.spend
        };
        let inline = Inline::default();
        emit_spend(
            &inline,
            &self.env,
            self.aggregator_shards,
            &self.request_id,
            spend,
        );
        let settle = keys.settle(&self.id, self.reservation, s.tokens, s.cost_micro_usd);
        let _ = futures::join!(settle, inline.run());
    }
}

fn set_limits(h: &Headers, limits: &[Limit]) -> worker::Result<()> {
    if !limits.is_empty() {
        let (policy, state) = Limit::headers(limits);
        h.set("RateLimit-Policy", &policy)?;
        h.set("RateLimit", &state)?;
    }
    Ok(())
}

fn problem(f: &Failed, request_id: &str, path: &str) -> AppResult<Response> {
    let mut extra = serde_json::Map::new();
    extra.insert("error".into(), ai::openai_error(&f.error));
    if !f.attempts.is_empty() {
        extra.insert("attempts".into(), serde_json::json!(f.attempts));
    }
    let mut resp = problem_with_extra(&f.error, request_id, path, Some(extra))?;
    let h = resp.headers_mut();
    if let Some(s) = f.retry_after_s {
        h.set("Retry-After", &s.to_string())?;
    }
    set_limits(h, &f.limits)?;
    Ok(resp)
}

/// `GET /v1/models`.
pub fn models(cfg: &Config) -> AppResult<Response> {
    json(&ai::models_list(&cfg.ai_models), 200)
}

/// The secret a request presents (`gateway_core::ai::presented_secret`).
fn secret(req: &Request) -> Option<String> {
    let h = req.headers();
    let auth = h.get("Authorization").ok().flatten();
    let api_key = h.get("api-key").ok().flatten();
    ai::presented_secret(auth.as_deref(), api_key.as_deref()).map(str::to_string)
}

/// One OpenAI-compatible request.
pub async fn handle(
    req: Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
    request_id: &str,
    endpoint: Endpoint,
) -> AppResult<Response> {
    let path = req.path();
    match serve(req, env, ctx, cfg, request_id, endpoint).await {
        Ok(resp) => Ok(resp),
        Err(f) => problem(&f, request_id, &path),
    }
}

async fn serve(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
    request_id: &str,
    endpoint: Endpoint,
) -> Result<Response, Failed> {
    let started = now();
    let body = read_body(&mut req, cfg.max_body_bytes).await?;
    let parsed = ai::parse(&body)?;
    let targets = cfg
        .ai_models
        .get(&parsed.model)
        .ok_or_else(|| ai::unknown_model(&parsed.model))?;
    let refused = |kind: &'static str, detail: &str| GatewayError::Refused {
        status: 401,
        kind: kind.into(),
        detail: detail.into(),
    };
    let secret = secret(&req).ok_or_else(|| {
        refused(
            "missing-api-key",
            "send a virtual key as Authorization: Bearer sk-eg-…",
        )
    })?;
    let (key_id, hash) = keys::identify(&secret).ok_or_else(|| {
        refused(
            "invalid-api-key",
            "the API key is not one this gateway issued",
        )
    })?;
    let first = targets
        .first()
        .ok_or_else(|| ai::unknown_model(&parsed.model))?;
    let ask = Admission {
        model: parsed.model.clone(),
        group: first.group.clone(),
        tokens: ai::estimate(endpoint, body.len(), &parsed, cfg.ai_default_max_tokens),
    };

    // 2. Admission and the first group's candidates, concurrently.
    let keyring = Keys::new(env, cfg);
    let (admission, picks) = futures::join!(
        keyring.admit(&key_id, &hash, ask),
        hops::candidates(env, &first.group, Default::default())
    );
    let admitted = match admission? {
        Ok(a) => a,
        Err(r) => {
            // The candidates reserved for this request go back unused.
            if let Ok((picks, _)) = picks {
                let released = picks.into_iter().map(|p| (p.name, p.panic)).collect();
                let (env, group) = (env.clone(), first.group.clone());
                ctx.wait_until(async move {
                    let _ = Providers::new(&env).settle(&group, vec![], released).await;
                });
            }
            return Err(Failed {
                error: GatewayError::Refused {
                    status: r.status,
                    kind: r.kind.into(),
                    detail: r.detail,
                },
                retry_after_s: r.retry_after_s,
                limits: r.limits,
                attempts: vec![],
            });
        }
    };
    let settle_key = KeySettle {
        env: env.clone(),
        shards: cfg.rate_limit_shards,
        id: key_id.clone(),
        reservation: admitted.reservation,
        aggregator_shards: cfg.aggregator_shards,
        request_id: request_id.into(),
        spend: SpendRecord {
            at: started,
            key: key_id.clone(),
            model: parsed.model.clone(),
            input_tokens: 0,
            output_tokens: 0,
            cost_micro_usd: 0,
            budget_day_micro_usd: admitted.budget_day_micro_usd,
            budget_month_micro_usd: admitted.budget_month_micro_usd,
        },
    };
    let headers = lower_headers(req.headers());
    let mut first_picks = Some(picks);
    let mut attempts: Vec<String> = Vec::new();
    let mut spent = Settled::default();
    let mut last: Option<GatewayError> = None;

    // 3. Each allowed target in turn.
    for target in ai::allowed_targets(targets, &admitted.groups) {
        let candidates = match first_picks.take() {
            Some(p) if target.group == first.group => p,
            _ => hops::candidates(env, &target.group, Default::default()).await,
        };
        let (picks, budget_reset) = match candidates {
            Ok(c) => c,
            Err(e) => {
                last = Some(e.0);
                continue;
            }
        };
        let upstream_model = target.model.as_deref().unwrap_or(&parsed.model);
        let out = Outgoing {
            method: Method::Post,
            path: endpoint.upstream_path().into(),
            query: String::new(),
            headers: headers.clone(),
            body: ai::with_model(&body, upstream_model)?,
            bodies: picks
                .iter()
                .filter_map(|p| {
                    let m = target.upstream_model(&parsed.model, &p.name);
                    (m != upstream_model)
                        .then(|| ai::with_model(&body, m).ok().map(|b| (p.name.clone(), b)))
                        .flatten()
                })
                .collect(),
            request_id: request_id.into(),
        };
        let settings = Settings::new(cfg, &target.group, false, None);
        // A completion has no side effect upstream: failing over a POST is safe here.
        let mut p = Plan::new(settings, "POST", true, picks, budget_reset, None);
        let walked = walk(env, &mut p, &out).await?;
        attempts.extend(
            p.attempted()
                .into_iter()
                .map(|a| format!("{}/{a}", target.group)),
        );
        let books = Books {
            env: env.clone(),
            group: target.group.clone(),
            path: endpoint.upstream_path().into(),
            request_id: request_id.into(),
            caller: key_id.clone(),
            started,
            shards: cfg.aggregator_shards,
            cache_shards: cfg.cache_shards,
            cohort: None,
            cache: None,
        };
        let latency_ms = elapsed_ms(started);
        match walked {
            Walked::Delivered(d, resp, ended) => {
                let provider = p.candidate(d.candidate).map(|c| c.name.clone());
                let status = d.status;
                let settle_key = settle_key.clone();
                ctx.wait_until(async move {
                    let body = ended.await.ok();
                    let mut s = books
                        .settle(p, body, status, CacheOutcome::None, latency_ms)
                        .await;
                    s.cost_micro_usd += spent.cost_micro_usd;
                    // An error answer consumed no tokens; a success without usage keeps the
                    // estimate charged.
                    s.tokens = ai::charged_tokens(status, s.tokens);
                    if s.tokens == Some(0) {
                        s = Settled {
                            tokens: Some(0),
                            input_tokens: 0,
                            output_tokens: 0,
                            ..s
                        };
                    }
                    settle_key.run(s).await;
                });
                let h = Headers::new();
                for (k, v) in &d.headers {
                    h.set(k, v)?;
                }
                let resp = resp.with_status(d.status).with_headers(h);
                let h = resp.headers();
                h.set(
                    "Server-Timing",
                    &format!("gateway;dur={}", elapsed_ms(started)),
                )?;
                h.set("X-Gateway-Model", upstream_model)?;
                h.set("X-Gateway-Group", &target.group)?;
                if let Some(p) = provider {
                    h.set("X-Provider", &p)?;
                }
                h.set("X-Gateway-Attempts", &attempts.len().to_string())?;
                set_limits(h, &admitted.limits)?;
                return Ok(resp);
            }
            Walked::Other(step) => {
                let s = books
                    .settle(p, None, 502, CacheOutcome::None, latency_ms)
                    .await;
                spent.cost_micro_usd += s.cost_micro_usd;
                last = Some(match step {
                    Step::Fail(f) => f.error,
                    _ => GatewayError::Internal("unexpected step".into()),
                });
            }
        }
    }
    ctx.wait_until(settle_key.run(Settled {
        cost_micro_usd: spent.cost_micro_usd,
        tokens: Some(0),
        ..Settled::default()
    }));
    Err(Failed {
        error: last.unwrap_or_else(|| GatewayError::Refused {
            status: 403,
            kind: "model-not-allowed".into(),
            detail: format!("the key may reach none of model {}'s groups", parsed.model),
        }),
        retry_after_s: None,
        limits: admitted.limits,
        attempts,
    })
}
