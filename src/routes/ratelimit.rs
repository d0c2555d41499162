//! `/v1/ratelimit/{policy}/{key}` (take, peek, reset), `/v1/policies` (run-time policies), and
//! the caller check the proxy path uses.

use futures::future::join_all;
use gateway_core::config::Config;
use gateway_core::protocol::ratelimit::{
    PolicyEntry, Request as RlRequest, Response as RlResponse,
};
use gateway_core::rate_limit::policy::{Policy, PolicyJson};
use gateway_core::rate_limit::Decision;
use gateway_core::route::RateLimitOp;
use gateway_core::shard::{fnv1a64, shard_name};
use gateway_core::GatewayError;
use serde::{Deserialize, Serialize};
use serde_json::json as j;
use worker::{Env, Request, Response};

use crate::error::{problem_with_extra, AppError, AppResult};
use crate::http::{json, parse_json, parse_json_or_default, read_body};
use crate::stub::{binding, call, unexpected};

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

/// The object that owns `(policy, key)`.
pub fn object_name(cfg: &Config, policy: &str, key: &str) -> String {
    shard_name(
        "ratelimit",
        &format!("{policy}/{key}"),
        cfg.rate_limit_shards,
    )
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
    let object = object_name(cfg, policy_name, key);
    let msg = match op {
        RateLimitOp::Take => {
            let body: TakeBody = parse_json_or_default(&read_body(&mut req, 4096).await?)?;
            RlRequest::Take {
                policy_name: policy_name.into(),
                key: key.into(),
                cost: body.cost.unwrap_or(1),
            }
        }
        RateLimitOp::Peek => RlRequest::Peek {
            policy_name: policy_name.into(),
            key: key.into(),
            cost: cost_from_query(&req)?,
        },
        RateLimitOp::Reset => RlRequest::Reset {
            policy_name: policy_name.into(),
            key: key.into(),
        },
    };
    match call(env, binding::RATE_LIMITER, &object, &msg).await? {
        RlResponse::Decision {
            decision,
            shadow_denied,
            policy,
        } => decision_response(
            policy_name,
            key,
            &policy,
            &decision,
            shadow_denied,
            &path,
            request_id,
        ),
        RlResponse::Reset { existed } => json(&j!({ "reset": existed }), 200),
        _ => Err(unexpected("rate limiter")),
    }
}

fn entry_json(e: &PolicyEntry) -> serde_json::Value {
    j!({
        "name": e.name,
        "policy": e.policy.to_json(),
        "source": match e.source {
            gateway_core::protocol::ratelimit::PolicySource::Config => "config",
            gateway_core::protocol::ratelimit::PolicySource::Admin => "admin",
        },
        "version": e.version,
    })
}

/// Shard 0 is the registry: it versions changes and answers listings.
const REGISTRY: &str = "ratelimit:0";

async fn policies(env: &Env) -> AppResult<Vec<PolicyEntry>> {
    match call(
        env,
        binding::RATE_LIMITER,
        REGISTRY,
        &RlRequest::ListPolicies,
    )
    .await?
    {
        RlResponse::Policies(p) => Ok(p),
        _ => Err(unexpected("rate limiter")),
    }
}

/// `GET /v1/policies`.
pub async fn list_policies(env: &Env) -> AppResult<Response> {
    let list: Vec<_> = policies(env).await?.iter().map(entry_json).collect();
    json(&j!({ "policies": list }), 200)
}

/// `GET /v1/policies/{name}`.
pub async fn get_policy(env: &Env, name: &str) -> AppResult<Response> {
    let all = policies(env).await?;
    let e = all
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| GatewayError::NotFound(format!("no rate-limit policy named {name}")))?;
    json(&entry_json(e), 200)
}

/// Stores a change in the registry (which versions it), then applies it on every other shard
/// concurrently. The change is acknowledged only when every shard has it, so the next request
/// anywhere sees it; if some shard fails the answer is 503 and repeating the call completes it.
async fn broadcast(env: &Env, cfg: &Config, name: &str, policy: Option<Policy>) -> AppResult<i64> {
    let first = RlRequest::PutPolicy {
        name: name.into(),
        policy,
        version: None,
    };
    let version = match call(env, binding::RATE_LIMITER, REGISTRY, &first).await? {
        RlResponse::PolicyStored { version } => version,
        _ => return Err(unexpected("rate limiter")),
    };
    let calls = (1..cfg.rate_limit_shards).map(|i| {
        let msg = RlRequest::PutPolicy {
            name: name.into(),
            policy,
            version: Some(version),
        };
        let object = format!("ratelimit:{i}");
        async move { call::<_, RlResponse>(env, binding::RATE_LIMITER, &object, &msg).await }
    });
    let failed = join_all(calls).await.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        return Err(AppError(GatewayError::Unavailable(format!(
            "policy {name} version {version} stored, but {failed} of {} shards did not confirm; repeat the request",
            cfg.rate_limit_shards
        ))));
    }
    Ok(version)
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
    let version = broadcast(env, cfg, name, Some(policy)).await?;
    json(
        &j!({ "name": name, "policy": policy.to_json(), "source": "admin", "version": version, "shards": cfg.rate_limit_shards }),
        200,
    )
}

/// `DELETE /v1/policies/{name}` (admin): removes it (a configuration default disappears too).
pub async fn delete_policy(env: &Env, cfg: &Config, name: &str) -> AppResult<Response> {
    if !policies(env).await?.iter().any(|e| e.name == name) {
        return Err(GatewayError::NotFound(format!("no rate-limit policy named {name}")).into());
    }
    let version = broadcast(env, cfg, name, None).await?;
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
    let name = cfg.rate_limit_caller_policy.clone();
    let msg = RlRequest::Take {
        policy_name: name.clone(),
        key: key.clone(),
        cost: 1,
    };
    match call(
        env,
        binding::RATE_LIMITER,
        &object_name(cfg, &name, &key),
        &msg,
    )
    .await?
    {
        RlResponse::Decision {
            decision,
            shadow_denied,
            policy,
        } => Ok((key, policy, decision, shadow_denied)),
        _ => Err(unexpected("rate limiter")),
    }
}
