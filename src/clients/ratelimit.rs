//! `RateLimiterDO`: `ratelimit:{n}` owns the keys that hash to shard `n` (over `policy/key`);
//! shard 0 is also the registry that versions run-time policy changes.

use futures::future::join_all;
use gateway_core::config::Config;
use gateway_core::protocol::ratelimit::{PolicyEntry, Request, Response, Stats};
use gateway_core::rate_limit::policy::Policy;
use gateway_core::rate_limit::Decision;
use gateway_core::shard::shard_name;
use gateway_core::GatewayError;
use worker::Env;

use super::{binding, reply, Namespace};
use crate::error::{AppError, AppResult};

/// Shard 0 is the registry: it versions changes and answers listings.
const REGISTRY: &str = "ratelimit:0";

/// A decision with the policy that made it.
pub struct Decided {
    /// The decision.
    pub decision: Decision,
    /// Whether a shadow policy would have denied.
    pub shadow_denied: bool,
    /// The policy as resolved by the shard.
    pub policy: Policy,
}

/// The rate-limiter shards.
pub struct RateLimiter<'a> {
    ns: Namespace<'a>,
    shards: u32,
}

impl<'a> RateLimiter<'a> {
    /// The client.
    pub fn new(env: &'a Env, cfg: &Config) -> Self {
        RateLimiter {
            ns: Namespace::new(env, binding::RATE_LIMITER, "rate limiter"),
            shards: cfg.rate_limit_shards,
        }
    }

    /// The object that owns `(policy, key)`.
    pub fn owner(&self, policy: &str, key: &str) -> String {
        shard_name("ratelimit", &format!("{policy}/{key}"), self.shards)
    }

    async fn decide(&self, policy: &str, key: &str, msg: Request) -> AppResult<Decided> {
        reply!(self.ns, &self.owner(policy, key), &msg,
            Response::Decision { decision, shadow_denied, policy } => Decided { decision, shadow_denied, policy })
    }

    /// Takes `cost` tokens (persisted before the answer).
    pub async fn take(&self, policy: &str, key: &str, cost: u64) -> AppResult<Decided> {
        let msg = Request::Take {
            policy_name: policy.into(),
            key: key.into(),
            cost,
        };
        self.decide(policy, key, msg).await
    }

    /// What a take of `cost` would decide, consuming nothing.
    pub async fn peek(&self, policy: &str, key: &str, cost: u64) -> AppResult<Decided> {
        let msg = Request::Peek {
            policy_name: policy.into(),
            key: key.into(),
            cost,
        };
        self.decide(policy, key, msg).await
    }

    /// Forgets the key's state; whether it had any.
    pub async fn reset(&self, policy: &str, key: &str) -> AppResult<bool> {
        let msg = Request::Reset {
            policy_name: policy.into(),
            key: key.into(),
        };
        reply!(self.ns, &self.owner(policy, key), &msg, Response::Reset { existed } => existed)
    }

    /// The effective policies (configuration plus run-time changes), from the registry.
    pub async fn policies(&self) -> AppResult<Vec<PolicyEntry>> {
        reply!(self.ns, REGISTRY, &Request::ListPolicies, Response::Policies(p) => p)
    }

    /// Stores a change in the registry (which versions it), then applies it on every other
    /// shard concurrently. Acknowledged only when every shard has it, so the next request
    /// anywhere sees it; if some shard fails the answer is 503 and repeating completes it.
    pub async fn put_policy(&self, name: &str, policy: Option<Policy>) -> AppResult<i64> {
        let first = Request::PutPolicy {
            name: name.into(),
            policy,
            version: None,
        };
        let version =
            reply!(self.ns, REGISTRY, &first, Response::PolicyStored { version } => version)?;
        let calls = (1..self.shards).map(|i| {
            let msg = Request::PutPolicy {
                name: name.into(),
                policy,
                version: Some(version),
            };
            let object = format!("ratelimit:{i}");
            async move { reply!(self.ns, &object, &msg, Response::PolicyStored { .. } => ()) }
        });
        let failed = join_all(calls).await.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            return Err(AppError(GatewayError::Unavailable(format!(
                "policy {name} version {version} stored, but {failed} of {} shards did not confirm; repeat the request",
                self.shards
            ))));
        }
        Ok(version)
    }

    /// Shard `id`'s statistics.
    pub async fn stats(&self, id: &str) -> AppResult<Stats> {
        let n = super::shard_id(id, self.shards)?;
        reply!(self.ns, &format!("ratelimit:{n}"), &Request::Stats, Response::Stats(s) => s)
    }
}
