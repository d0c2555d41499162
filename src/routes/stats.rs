//! `GET /v1/stats/{component}/{id}`: one object's statistics (alarm runs, sizes, counters).

use gateway_core::config::Config;
use gateway_core::route::Component;
use worker::{Env, Response};

use crate::clients::{Aggregator, CacheShards, Experiments, Providers, RateLimiter};
use crate::error::AppResult;
use crate::http::json;

/// Answers the object's stats as JSON.
pub async fn stats(env: &Env, cfg: &Config, component: Component, id: &str) -> AppResult<Response> {
    match component {
        Component::RateLimit => json(&RateLimiter::new(env, cfg).stats(id).await?, 200),
        Component::Cache => json(&CacheShards::new(env, cfg).stats(id).await?, 200),
        Component::Aggregator => json(&Aggregator::of(env, cfg).stats(id).await?, 200),
        Component::Providers => json(&Providers::new(env).status(id).await?, 200),
        Component::Experiments => {
            let s = Experiments::new(env).get(id).await?;
            json(&gateway_core::views::experiment(&s), 200)
        }
    }
}
