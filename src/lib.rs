//! # Edge Gateway: the front worker
//!
//! A stateless worker that validates each request, routes it to the Durable Objects that own its
//! keys, and answers. All logic lives in `gateway-core`; this crate is the imperative shell:
//!
//! - [`error`]: `AppError` and the one place errors become `application/problem+json`.
//! - [`http`]: request ids, bounded body reads, strict JSON.
//! - [`clients`]: typed clients of the five Durable Objects (object names, the postcard hop,
//!   reply matching).
//! - [`isolate`]: what an isolate keeps between requests (batches, caches, deferred work).
//! - [`routes`]: one module per component, each a thin handler.
//! - `durable_objects/` (at the crate root, included below): the five object adapters and the
//!   shared SQLite migration runner.

pub mod clients;
pub mod config;
pub mod error;
pub mod http;
pub mod isolate;
pub mod routes;
pub mod upstream;

#[path = "../durable_objects/mod.rs"]
pub mod durable_objects;

pub use durable_objects::{
    aggregator::AggregatorDO, cache_shard::CacheShardDO, experiment::ExperimentDO,
    provider_health::ProviderHealthDO, rate_limiter::RateLimiterDO,
};

use gateway_core::auth::check_admin;
use gateway_core::route::route;
use worker::{event, Context, Env, Request, Response};

use crate::error::{problem_response, AppError, AppResult};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let request_id = http::request_id(&req);
    let path = req.path();
    let mut resp = match handle(req, &env, &ctx, &request_id).await {
        Ok(resp) => resp,
        Err(AppError(e)) => problem_response(&e, &request_id, &path)?,
    };
    // Responses we build have mutable headers; should one not, keep it rather than fail.
    let _ = resp.headers_mut().set("X-Request-Id", &request_id);
    Ok(resp)
}

/// Routes one request: match, authorise, dispatch.
async fn handle(req: Request, env: &Env, ctx: &Context, request_id: &str) -> AppResult<Response> {
    let method = req.method();
    let route = route(method.as_ref(), &req.path())?;
    if route.requires_admin() {
        let header = req.headers().get("Authorization").ok().flatten();
        check_admin(header.as_deref(), config::admin_token(env).as_deref())?;
    }
    let cfg = config::config(env)?;
    routes::dispatch(route, req, env, ctx, &cfg, request_id).await
}
