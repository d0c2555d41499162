//! `/v1/ratelimit/{policy}/{key}`: take (POST), peek (GET), reset (DELETE, admin).

use gateway_core::config::Config;
use gateway_core::protocol::ratelimit::{Request as RlRequest, Response as RlResponse};
use gateway_core::rate_limit::{Decision, TokenBucketPolicy};
use gateway_core::route::RateLimitOp;
use gateway_core::shard::shard_name;
use gateway_core::GatewayError;
use serde::{Deserialize, Serialize};
use worker::{Env, Request, Response};

use crate::error::{problem_with_extra, AppResult};
use crate::http::{json, parse_json_or_default, read_body};
use crate::stub::{binding, call, unexpected};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TakeBody {
    #[serde(default)]
    cost: Option<u64>,
}

#[derive(Serialize)]
struct DecisionJson<'a> {
    allowed: bool,
    policy: &'a str,
    key: &'a str,
    limit: u64,
    remaining: u64,
    reset_ms: u64,
    retry_after_ms: u64,
    cost: u64,
}

/// The object that owns `(policy, key)`.
pub fn object_name(cfg: &Config, policy: &str, key: &str) -> String {
    shard_name(
        "ratelimit",
        &format!("{policy}/{key}"),
        cfg.rate_limit_shards,
    )
}

fn policy<'c>(cfg: &'c Config, name: &str) -> Result<&'c TokenBucketPolicy, GatewayError> {
    cfg.rate_limit_policies
        .get(name)
        .ok_or_else(|| GatewayError::NotFound(format!("no rate-limit policy named {name}")))
}

fn cost_from_query(req: &Request) -> Result<u64, GatewayError> {
    let url = req
        .url()
        .map_err(|_| GatewayError::bad_request("invalid-url", "bad URL"))?;
    for (k, v) in url.query_pairs() {
        if k == "cost" {
            return v.parse().map_err(|_| {
                GatewayError::bad_request("invalid-cost", "cost must be a positive integer")
            });
        }
    }
    Ok(1)
}

/// `RateLimit-Policy` and `RateLimit` values (draft-ietf-httpapi-ratelimit-headers,
/// structured fields): `"name";q=<capacity>;w=<seconds to refill fully>` and
/// `"name";r=<remaining>;t=<seconds until full>`.
pub fn header_values(name: &str, policy: &TokenBucketPolicy, d: &Decision) -> (String, String) {
    let window_s = (policy.burst_us() as u64).div_ceil(1_000_000).max(1);
    let reset_s = d.reset_ms.div_ceil(1000);
    (
        format!("\"{name}\";q={};w={window_s}", policy.capacity),
        format!("\"{name}\";r={};t={reset_s}", d.remaining),
    )
}

fn decision_response(
    name: &str,
    key: &str,
    policy: &TokenBucketPolicy,
    d: &Decision,
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
        r.headers_mut().set(
            "Retry-After",
            &d.retry_after_ms.div_ceil(1000).max(1).to_string(),
        )?;
        r
    };
    let (p, l) = header_values(name, policy, d);
    resp.headers_mut().set("RateLimit-Policy", &p)?;
    resp.headers_mut().set("RateLimit", &l)?;
    Ok(resp)
}

/// Handles the three operations.
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
    match op {
        RateLimitOp::Take | RateLimitOp::Peek => {
            let policy = *policy(cfg, policy_name)?;
            let msg = if op == RateLimitOp::Take {
                let body: TakeBody = parse_json_or_default(&read_body(&mut req, 4096).await?)?;
                RlRequest::Take {
                    policy_name: policy_name.into(),
                    policy,
                    key: key.into(),
                    cost: body.cost.unwrap_or(1),
                }
            } else {
                RlRequest::Peek {
                    policy_name: policy_name.into(),
                    policy,
                    key: key.into(),
                    cost: cost_from_query(&req)?,
                }
            };
            match call(env, binding::RATE_LIMITER, &object, &msg).await? {
                RlResponse::Decision(d) => {
                    decision_response(policy_name, key, &policy, &d, &path, request_id)
                }
                _ => Err(unexpected("rate limiter")),
            }
        }
        RateLimitOp::Reset => {
            let msg = RlRequest::Reset {
                policy_name: policy_name.into(),
                key: key.into(),
            };
            match call(env, binding::RATE_LIMITER, &object, &msg).await? {
                RlResponse::Reset { existed } => {
                    json(&serde_json::json!({ "reset": existed }), 200)
                }
                _ => Err(unexpected("rate limiter")),
            }
        }
    }
}
