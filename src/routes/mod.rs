//! Route handlers: one module per component behind one dispatch.

pub mod ai;
pub mod cache;
pub mod events;
pub mod experiments;
pub mod health;
pub mod keys;
pub mod providers;
pub mod proxy;
pub mod ratelimit;
pub mod stats;

use gateway_core::config::Config;
use gateway_core::route::Route;
use gateway_core::UnixMillis;
use worker::{Context, Env, Request, Response};

use crate::error::AppResult;

/// The time, read once per request (it does not advance during a request in production).
pub fn now() -> UnixMillis {
    UnixMillis(js_sys::Date::now() as i64)
}

/// Calls the handler for `route`.
pub async fn dispatch(
    route: Route,
    req: Request,
    env: &Env,
    ctx: &Context,
    cfg: &Config,
    request_id: &str,
) -> AppResult<Response> {
    match route {
        Route::Health => health::health(cfg),
        Route::Metrics => events::metrics(req, env, cfg).await,
        Route::MetricsSeries => events::series(req, env, cfg).await,
        Route::Alerts => events::alerts(env, cfg).await,
        Route::DailyReport => events::report(env, cfg).await,
        Route::RollupRun => events::run(env, cfg).await,
        Route::Dashboard => events::dashboard(),
        Route::EventsIngest => events::ingest(req, env, cfg, request_id).await,
        Route::RateLimit { policy, key, op } => {
            ratelimit::handle(req, env, cfg, request_id, &policy, &key, op).await
        }
        Route::PoliciesList => ratelimit::list_policies(env, cfg).await,
        Route::PolicyGet(name) => ratelimit::get_policy(env, cfg, &name).await,
        Route::PolicyPut(name) => ratelimit::put_policy(req, env, cfg, &name).await,
        Route::PolicyDelete(name) => ratelimit::delete_policy(env, cfg, &name).await,
        Route::Cache { namespace, key, op } => {
            cache::handle(req, env, cfg, request_id, &namespace, &key, op).await
        }
        Route::Proxy { group, path } => {
            proxy::proxy(req, env, ctx, cfg, request_id, &group, &path).await
        }
        Route::CachePurge => cache::purge(req, env, cfg).await,
        Route::ProvidersList => providers::list(env, cfg).await,
        Route::ProviderStatus(group) => providers::status(env, &group).await,
        Route::ProviderConfigure(group) => providers::configure(req, env, cfg, &group).await,
        Route::ProviderPick(group) => providers::pick(env, &group).await,
        Route::ProviderReport(group) => providers::report(req, env, cfg, &group).await,
        Route::ExperimentGet(name) => experiments::get(env, &name).await,
        Route::ExperimentDefine(name) => experiments::define(req, env, cfg, &name).await,
        Route::ExperimentAssign(name) => experiments::assign(req, env, cfg, &name).await,
        Route::ExperimentAnalyse(name) => experiments::analyse(env, &name).await,
        Route::ExperimentEvent(name) => experiments::event(req, env, cfg, &name).await,
        Route::ExperimentsList => experiments::list(env, cfg).await,
        Route::ExperimentDelete(name) => experiments::delete(env, &name).await,
        Route::ExperimentPause(name) => experiments::pause(env, &name, true).await,
        Route::ExperimentResume(name) => experiments::pause(env, &name, false).await,
        Route::ExperimentRetire { name, arm } => experiments::retire(env, &name, &arm).await,
        Route::Stats { component, id } => stats::stats(env, cfg, component, &id).await,
        Route::Ai(endpoint) => ai::handle(req, env, ctx, cfg, request_id, endpoint).await,
        Route::Models => ai::models(cfg),
        Route::KeysList => keys::list(env, cfg).await,
        Route::KeyCreate => keys::create(req, env, cfg).await,
        Route::KeyGet(id) => keys::get(env, cfg, &id).await,
        Route::KeyRevoke(id) => keys::revoke(env, cfg, &id).await,
    }
}
