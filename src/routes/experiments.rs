//! `/v1/experiments/{name}`: get, define (admin), assign a unit, record an outcome.

use gateway_core::config::{Config, ExperimentVar};
use gateway_core::protocol::experiment::{Request as ERequest, Response as EResponse, State};
use gateway_core::validate;
use serde::Deserialize;
use serde_json::{json as j, Value};
use worker::{Env, Request, Response};

use crate::error::AppResult;
use crate::http::{json, parse_json, read_body};
use crate::stub::{binding, call, unexpected};

/// The object owning an experiment.
pub fn object_name(name: &str) -> String {
    format!("experiment:{name}")
}

async fn send(env: &Env, name: &str, msg: ERequest) -> AppResult<EResponse> {
    call(env, binding::EXPERIMENT, &object_name(name), &msg).await
}

fn params(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The public JSON view of an experiment's state.
pub fn state_json(s: &State) -> Value {
    let arms: Vec<Value> = s
        .def
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = s.tallies.get(i).copied().unwrap_or_default();
            j!({
                "name": v.name,
                "weight": v.weight,
                "params": params(&v.params),
                "assigned": t.assigned,
                "events": t.events,
                "successes": t.successes,
            })
        })
        .collect();
    j!({
        "name": s.name,
        "seed": s.def.seed,
        "variants": arms,
        "min_sample": s.def.min_sample,
        "analysis": s.analysis,
        "winner": s.winner,
        "promotions": s.promotions,
        "status": if s.winner.is_some() { "concluded" } else { "running" },
        "object": s.object,
    })
}

/// `GET /v1/experiments/{name}`.
pub async fn get(env: &Env, name: &str) -> AppResult<Response> {
    match send(env, name, ERequest::Get { name: name.into() }).await? {
        EResponse::State(s) => json(&state_json(&s), 200),
        _ => Err(unexpected("experiment")),
    }
}

/// `POST /v1/experiments/{name}/analyse` (admin): analyse now; promotes when the rule holds.
pub async fn analyse(env: &Env, name: &str) -> AppResult<Response> {
    match send(env, name, ERequest::Analyse { name: name.into() }).await? {
        EResponse::State(s) => json(&state_json(&s), 200),
        _ => Err(unexpected("experiment")),
    }
}

/// `PUT /v1/experiments/{name}` (admin): `{"seed"?: "..", "variants":[{"name","weight","params"}]}`.
pub async fn define(mut req: Request, env: &Env, cfg: &Config, name: &str) -> AppResult<Response> {
    let body: ExperimentVar =
        parse_json(&read_body(&mut req, cfg.max_body_bytes.min(65_536)).await?)?;
    let def = body.into_def(name)?;
    match send(
        env,
        name,
        ERequest::Define {
            name: name.into(),
            def,
        },
    )
    .await?
    {
        EResponse::Defined { created } => json(
            &j!({ "name": name, "created": created }),
            if created { 201 } else { 200 },
        ),
        _ => Err(unexpected("experiment")),
    }
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
    match send(
        env,
        name,
        ERequest::Assign {
            name: name.into(),
            unit: body.unit.clone(),
        },
    )
    .await?
    {
        EResponse::Assigned {
            variant,
            params: p,
            new,
        } => json(
            &j!({ "experiment": name, "unit": body.unit, "variant": variant, "params": params(&p), "new": new }),
            200,
        ),
        _ => Err(unexpected("experiment")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    unit: String,
    success: bool,
}

/// `POST /v1/experiments/{name}/events` `{"unit":"user-1","success":true}`.
pub async fn event(mut req: Request, env: &Env, _cfg: &Config, name: &str) -> AppResult<Response> {
    let body: EventBody = parse_json(&read_body(&mut req, 4096).await?)?;
    validate::key("unit", &body.unit)?;
    let msg = ERequest::Event {
        name: name.into(),
        unit: body.unit,
        success: body.success,
    };
    match send(env, name, msg).await? {
        EResponse::Recorded { variant } => json(&j!({ "recorded": true, "variant": variant }), 200),
        _ => Err(unexpected("experiment")),
    }
}
