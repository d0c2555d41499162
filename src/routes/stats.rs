//! `GET /v1/stats/{component}/{id}`: one object's statistics (alarm runs, sizes, counters).

use gateway_core::config::Config;
use gateway_core::protocol::{aggregator, cache, experiment, providers, ratelimit};
use gateway_core::route::Component;
use gateway_core::GatewayError;
use worker::{Env, Response};

use crate::error::AppResult;
use crate::http::json;
use crate::stub::{binding, call, unexpected};

fn shard(id: &str, count: u32) -> Result<u32, GatewayError> {
    match id.parse::<u32>() {
        Ok(n) if n < count => Ok(n),
        Ok(_) => Err(GatewayError::NotFound(format!("shard must be 0..{count}"))),
        Err(_) => Err(GatewayError::bad_request(
            "invalid-shard",
            "shard must be a number",
        )),
    }
}

/// Answers the object's stats as JSON.
pub async fn stats(env: &Env, cfg: &Config, component: Component, id: &str) -> AppResult<Response> {
    match component {
        Component::RateLimit => {
            let name = format!("ratelimit:{}", shard(id, cfg.rate_limit_shards)?);
            match call(
                env,
                binding::RATE_LIMITER,
                &name,
                &ratelimit::Request::Stats,
            )
            .await?
            {
                ratelimit::Response::Stats(s) => json(&s, 200),
                _ => Err(unexpected("rate limiter")),
            }
        }
        Component::Cache => {
            let name = format!("cache:{}", shard(id, cfg.cache_shards)?);
            match call(env, binding::CACHE_SHARD, &name, &cache::Request::Stats).await? {
                cache::Response::Stats(s) => json(&s, 200),
                _ => Err(unexpected("cache")),
            }
        }
        Component::Aggregator => {
            let name = if id == "root" {
                aggregator::ROOT.to_string()
            } else {
                format!("aggregator:{}", shard(id, cfg.aggregator_shards)?)
            };
            match call(env, binding::AGGREGATOR, &name, &aggregator::Request::Stats).await? {
                aggregator::Response::Stats(s) => json(&s, 200),
                _ => Err(unexpected("aggregator")),
            }
        }
        Component::Providers => {
            let msg = providers::Request::Status { group: id.into() };
            match call(
                env,
                binding::PROVIDER_HEALTH,
                &super::providers::object_name(id),
                &msg,
            )
            .await?
            {
                providers::Response::Status(s) => json(&s, 200),
                _ => Err(unexpected("provider health")),
            }
        }
        Component::Experiments => {
            let msg = experiment::Request::Get { name: id.into() };
            match call(
                env,
                binding::EXPERIMENT,
                &super::experiments::object_name(id),
                &msg,
            )
            .await?
            {
                experiment::Response::State(s) => json(&super::experiments::state_json(&s), 200),
                _ => Err(unexpected("experiment")),
            }
        }
    }
}
