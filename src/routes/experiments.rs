//! `/v1/experiments`: list, get, define (admin), delete (admin), pause/resume/retire-arm/analyse
//! (admin), assign a unit, record outcomes; and the proxy path's experiment lookup.

use futures::future::join_all;
use gateway_core::config::{Config, ExperimentVar};
use gateway_core::experiment::PRIMARY_ALIAS;
use gateway_core::protocol::experiment::State;
use gateway_core::GatewayError;
use gateway_core::{validate, views};
use serde::Deserialize;
use serde_json::{json as j, Value};
use worker::{Env, Request, Response};

use crate::clients::Experiments;
use crate::error::AppResult;
use crate::http::{json, parse_json, read_body};
use crate::isolate::forget_targets;

/// Most experiments `GET /v1/experiments` reads.
const LIST_MAX: usize = 100;

fn state_response(s: State) -> AppResult<Response> {
    json(&views::experiment(&s), 200)
}

/// `GET /v1/experiments/{name}`.
pub async fn get(env: &Env, name: &str) -> AppResult<Response> {
    state_response(Experiments::new(env).get(name).await?)
}

/// `POST /v1/experiments/{name}/analyse` (admin): analyse now; promotes or rolls back when the
/// rule says so.
pub async fn analyse(env: &Env, name: &str) -> AppResult<Response> {
    state_response(Experiments::new(env).analyse(name).await?)
}

/// `POST /v1/experiments/{name}/pause` and `/resume` (admin).
pub async fn pause(env: &Env, name: &str, paused: bool) -> AppResult<Response> {
    state_response(Experiments::new(env).pause(name, paused).await?)
}

/// `POST /v1/experiments/{name}/arms/{arm}/retire` (admin).
pub async fn retire(env: &Env, name: &str, arm: &str) -> AppResult<Response> {
    state_response(Experiments::new(env).retire(name, arm).await?)
}

/// `PUT /v1/experiments/{name}` (admin): create or replace (assignments are kept).
pub async fn define(mut req: Request, env: &Env, cfg: &Config, name: &str) -> AppResult<Response> {
    let body: ExperimentVar =
        parse_json(&read_body(&mut req, cfg.max_body_bytes.min(65_536)).await?)?;
    let def = body.into_def(name)?;
    let created = Experiments::new(env).define(name, def).await?;
    forget_targets();
    json(
        &j!({ "name": name, "created": created }),
        if created { 201 } else { 200 },
    )
}

/// `DELETE /v1/experiments/{name}` (admin): the definition, assignments and data go; a
/// configured experiment of that name stays deleted until it is defined again.
pub async fn delete(env: &Env, name: &str) -> AppResult<Response> {
    let existed = Experiments::new(env).delete(name).await?;
    forget_targets();
    json(&j!({ "name": name, "deleted": existed }), 200)
}

/// `GET /v1/experiments`: every experiment's state (at most 100).
pub async fn list(env: &Env, cfg: &Config) -> AppResult<Response> {
    let client = Experiments::new(env);
    let names = client.catalogue(cfg).await?;
    let states = join_all(names.iter().take(LIST_MAX).map(|(n, _)| client.get(n))).await;
    let experiments: Vec<Value> = states
        .into_iter()
        .filter_map(|r| r.ok().map(|s| views::experiment(&s)))
        .collect();
    json(
        &j!({ "experiments": experiments, "truncated": names.len() > LIST_MAX }),
        200,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    unit: String,
}

/// `POST /v1/experiments/{name}/assign` `{"unit":"user-1"}`.
pub async fn assign(mut req: Request, env: &Env, _cfg: &Config, name: &str) -> AppResult<Response> {
    let body: AssignBody = parse_json(&read_body(&mut req, 4096).await?)?;
    validate::key("unit", &body.unit)?;
    let a = Experiments::new(env).assign(name, &body.unit).await?;
    json(
        &j!({
            "experiment": name,
            "unit": body.unit,
            "variant": a.variant,
            "params": views::params(&a.params),
            "new": a.new,
            "counted": a.counted,
        }),
        200,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    unit: String,
    /// Shorthand for the primary metric of a binary experiment.
    #[serde(default)]
    success: Option<bool>,
    /// Metric values by name.
    #[serde(default)]
    metrics: Option<serde_json::Map<String, Value>>,
}

/// `POST /v1/experiments/{name}/events`
/// `{"unit":"user-1","metrics":{"cache_hit":1,"latency_ms":120}}` (or `"success": true` for the
/// primary metric).
pub async fn event(mut req: Request, env: &Env, _cfg: &Config, name: &str) -> AppResult<Response> {
    let body: EventBody = parse_json(&read_body(&mut req, 16_384).await?)?;
    validate::key("unit", &body.unit)?;
    let mut values: Vec<(String, f64)> = Vec::new();
    for (k, v) in body.metrics.unwrap_or_default() {
        let x = match v {
            Value::Bool(b) => f64::from(u8::from(b)),
            Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
            _ => f64::NAN,
        };
        if !x.is_finite() || k.len() > 64 {
            return Err(GatewayError::bad_request(
                "invalid-experiment-event",
                format!("metric {k} must be a number or a boolean"),
            )
            .into());
        }
        values.push((k, x));
    }
    if values.len() > 16 {
        return Err(GatewayError::bad_request(
            "invalid-experiment-event",
            "at most 16 metrics per event",
        )
        .into());
    }
    let success = body.success;
    if success.is_none() && values.is_empty() {
        return Err(GatewayError::bad_request(
            "invalid-experiment-event",
            "send metrics (an object of numbers) or success (a boolean)",
        )
        .into());
    }
    if let Some(ok) = success {
        // `success` stands for the primary metric, whatever its name; the object resolves it.
        values.push((PRIMARY_ALIAS.into(), f64::from(u8::from(ok))));
    }
    let r = Experiments::new(env).event(name, body.unit, values).await?;
    json(
        &j!({ "recorded": r.counted, "variant": r.variant, "ignored": r.ignored }),
        200,
    )
}
