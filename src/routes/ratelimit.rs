//! `/v1/ratelimit/{policy}/{key}` (take, peek, reset), `/v1/policies` (run-time policies), and
//! the caller check the proxy path uses.

use gateway_core::config::Config;
use gateway_core::rate_limit::policy::{Policy, PolicyJson};
use gateway_core::rate_limit::Decision;
use gateway_core::route::RateLimitOp;
use gateway_core::shard::fnv1a64;
use gateway_core::{views, GatewayError};
use serde::{Deserialize, Serialize};
use serde_json::json as j;
use worker::{Env, Request, Response};

use crate::clients::ratelimit::Decided;
use crate::clients::RateLimiter;
use crate::error::{problem_with_extra, AppResult};
use crate::http::{json, parse_json, parse_json_or_default, read_body};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TakeBody {
    #[serde(default)]
    cost: Option<u64>,
}

/// The decision as JSON (also the extension members of the 429 problem).
#[derive(Serialize)]
pub struct DecisionJson<'a> {
    allowed: bool,
    policy: &'a str,
    key: &'a str,
    limit: u64,
    remaining: u64,
    reset_ms: u64,
    retry_after_ms: u64,
    cost: u64,
    shadow: bool,
    shadow_denied: bool,
}

fn cost_from_query(req: &Request) -> Result<u64, GatewayError> {
    for (k, v) in crate::http::query(req)? {
        if k == "cost" {
            return v.parse().map_err(|_| {
                GatewayError::bad_request("invalid-cost", "cost must be a positive integer")
            });
        }
    }
    Ok(1)
}

/// `RateLimit-Policy` and `RateLimit` values (draft-ietf-httpapi-ratelimit-headers, structured
/// fields): `"name";q=<quota>;w=<window s>` and `"name";r=<remaining>;t=<s>`, where `t` is the
/// seconds until the quota is fully available again when allowed, and the seconds until this
/// request would be allowed (equal to `Retry-After`) when denied.
pub fn header_values(name: &str, policy: &Policy, d: &Decision) -> (String, String) {
    let (q, w) = policy.quota_and_window_s();
    let t = if d.allowed {
        d.reset_ms.div_ceil(1000)
    } else {
        retry_after_s(d)
    };
    (
        format!("\"{name}\";q={q};w={w}"),
        format!("\"{name}\";r={};t={t}", d.remaining),
    )
}

fn retry_after_s(d: &Decision) -> u64 {
    d.retry_after_ms.div_ceil(1000).max(1)
}

/// A decision as an HTTP response: 200 JSON, or a 429 problem with the decision fields and
/// `Retry-After`; both with the RateLimit headers.
pub fn decision_response(
    name: &str,
    key: &str,
    policy: &Policy,
    d: &Decision,
    shadow_denied: bool,
    path: &str,
    request_id: &str,
) -> AppResult<Response> {
    let body = DecisionJson {
        allowed: d.allowed,
        policy: name,
        key,
        limit: d.limit,
        remaining: d.remaining,
        reset_ms: d.reset_ms,
        retry_after_ms: d.retry_after_ms,
        cost: d.cost,
        shadow: policy.shadow,
        shadow_denied,
    };
    let mut resp = if d.allowed {
        json(&body, 200)?
    } else {
        let extra = match serde_json::to_value(&body) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => None,
        };
        let err = GatewayError::TooManyRequests(format!(
            "rate limit of policy {name} exceeded; retry in {} ms",
            d.retry_after_ms
        ));
        let mut r = problem_with_extra(&err, request_id, path, extra)?;
        r.headers_mut()
            .set("Retry-After", &retry_after_s(d).to_string())?;
        r
    };
    let (p, l) = header_values(name, policy, d);
    resp.headers_mut().set("RateLimit-Policy", &p)?;
    resp.headers_mut().set("RateLimit", &l)?;
    Ok(resp)
}

/// Handles take, peek and reset.
pub async fn handle(
    mut req: Request,
    env: &Env,
    cfg: &Config,
    request_id: &str,
    policy_name: &str,
    key: &str,
    op: RateLimitOp,
) -> AppResult<Response> {
    let path = req.path();
    let limiter = RateLimiter::new(env, cfg);
    let decided = match op {
        RateLimitOp::Take => {
            let body: TakeBody = parse_json_or_default(&read_body(&mut req, 4096).await?)?;
            limiter
                .take(policy_name, key, body.cost.unwrap_or(1))
                .await?
        }
        RateLimitOp::Peek => {
            limiter
                .peek(policy_name, key, cost_from_query(&req)?)
                .await?
        }
        RateLimitOp::Reset => {
            let existed = limiter.reset(policy_name, key).await?;
            return json(&j!({ "reset": existed }), 200);
        }
    };
    decision_response(
        policy_name,
        key,
        &decided.policy,
        &decided.decision,
        decided.shadow_denied,
        &path,
        request_id,
    )
}

/// `GET /v1/policies`.
pub async fn list_policies(env: &Env, cfg: &Config) -> AppResult<Response> {
    let list: Vec<_> = RateLimiter::new(env, cfg)
        .policies()
        .await?
        .iter()
        .map(views::policy)
        .collect();
    json(&j!({ "policies": list }), 200)
}

/// `GET /v1/policies/{name}`.
pub async fn get_policy(env: &Env, cfg: &Config, name: &str) -> AppResult<Response> {
    let all = RateLimiter::new(env, cfg).policies().await?;
    let e = all
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| GatewayError::NotFound(format!("no rate-limit policy named {name}")))?;
    json(&views::policy(e), 200)
}

/// `PUT /v1/policies/{name}` (admin): create or replace; applies to the next request.
pub async fn put_policy(
    mut req: Request,
    env: &Env,
    cfg: &Config,
    name: &str,
) -> AppResult<Response> {
    let body: PolicyJson = parse_json(&read_body(&mut req, 4096).await?)?;
    let policy = body.into_policy()?;
    let version = RateLimiter::new(env, cfg)
        .put_policy(name, Some(policy))
        .await?;
    json(
        &j!({ "name": name, "policy": policy.to_json(), "source": "admin", "version": version, "shards": cfg.rate_limit_shards }),
        200,
    )
}

/// `DELETE /v1/policies/{name}` (admin): removes it (a configuration default disappears too).
pub async fn delete_policy(env: &Env, cfg: &Config, name: &str) -> AppResult<Response> {
    let limiter = RateLimiter::new(env, cfg);
    if !limiter.policies().await?.iter().any(|e| e.name == name) {
        return Err(GatewayError::NotFound(format!("no rate-limit policy named {name}")).into());
    }
    let version = limiter.put_policy(name, None).await?;
    json(
        &j!({ "name": name, "deleted": true, "version": version }),
        200,
    )
}

/// Who is calling, for the proxy path: the API key (`X-API-Key` or `Authorization: Bearer`),
/// stored only as a hash, else the client IP (`CF-Connecting-IP`), else `anonymous`.
pub fn caller_key(req: &Request) -> String {
    let headers = req.headers();
    let api_key = headers.get("X-API-Key").ok().flatten().or_else(|| {
        headers
            .get("Authorization")
            .ok()
            .flatten()
            .and_then(|h| h.strip_prefix("Bearer ").map(str::to_string))
    });
    if let Some(k) = api_key.filter(|k| !k.is_empty()) {
        return format!("key:{:016x}", fnv1a64(k.as_bytes()));
    }
    match headers.get("CF-Connecting-IP").ok().flatten() {
        Some(ip) if !ip.is_empty() && ip.len() <= 64 => format!("ip:{ip}"),
        _ => "anonymous".into(),
    }
}

/// The caller's decision under `RATE_LIMIT_CALLER_POLICY` (one token). The proxy path runs this
/// concurrently with its cache lookup.
pub async fn check_caller(
    req: &Request,
    env: &Env,
    cfg: &Config,
) -> AppResult<(String, Policy, Decision, bool)> {
    let key = caller_key(req);
    let Decided {
        decision,
        shadow_denied,
        policy,
    } = RateLimiter::new(env, cfg)
        .take(&cfg.rate_limit_caller_policy, &key, 1)
        .await?;
    Ok((key, policy, decision, shadow_denied))
}
