//! `/v1/experiments`: list, get, define (admin), delete (admin), pause/resume/retire-arm/analyse
//! (admin), assign a unit, record outcomes; and the proxy path's experiment lookup.

use std::cell::RefCell;

use futures::future::join_all;
use gateway_core::config::{Config, ExperimentVar};
use gateway_core::experiment::{select, ArmParams, MetricKind, Target, Verdict, PRIMARY_ALIAS};
use gateway_core::protocol::experiment::{Request as ERequest, Response as EResponse, State};
use gateway_core::validate;
use gateway_core::{GatewayError, UnixMillis};
use serde::Deserialize;
use serde_json::{json as j, Value};
use worker::{Env, Request, Response};

use super::now;
use crate::error::AppResult;
use crate::http::{json, parse_json, read_body};
use crate::stub::{binding, call, unexpected};

/// The object that lists experiments and their proxy targets.
pub const INDEX_OBJECT: &str = "experiment-index";
/// How long a worker isolate reuses the list of proxy targets before asking the index again
/// (an experiment created or deleted by an admin reaches proxy traffic within this time).
pub const TARGETS_TTL_MS: i64 = 10_000;
/// Most experiments `GET /v1/experiments` reads.
const LIST_MAX: usize = 100;

/// The object owning an experiment.
pub fn object_name(name: &str) -> String {
    format!("experiment:{name}")
}

async fn send(env: &Env, name: &str, msg: ERequest) -> AppResult<EResponse> {
    call(env, binding::EXPERIMENT, &object_name(name), &msg).await
}

async fn send_index(env: &Env, msg: ERequest) -> AppResult<EResponse> {
    call(env, binding::EXPERIMENT, INDEX_OBJECT, &msg).await
}

fn params(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn verdict_json(v: &Verdict) -> Value {
    match v {
        Verdict::Continue(r) => j!({ "kind": "continue", "arm": null, "reason": r }),
        Verdict::Promote(a) => {
            j!({ "kind": "promote", "arm": a, "reason": "the decision rule held" })
        }
        Verdict::Rollback(a, r) => j!({ "kind": "rollback", "arm": a, "reason": r }),
        Verdict::Halt(r) => j!({ "kind": "halt", "arm": null, "reason": r }),
    }
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        j!(x)
    } else {
        Value::Null
    }
}

/// The public JSON view of an experiment's state.
pub fn state_json(s: &State) -> Value {
    let metric_names: Vec<&str> = s.def.metrics().map(|m| m.name.as_str()).collect();
    let arms: Vec<Value> = s
        .def
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let d = s.data.get(i).cloned().unwrap_or_default();
            let metrics: serde_json::Map<String, Value> = metric_names
                .iter()
                .enumerate()
                .map(|(k, m)| {
                    let x = d.metric(k);
                    (
                        (*m).to_string(),
                        j!({ "n": x.n, "mean": x.mean().map(finite) }),
                    )
                })
                .collect();
            j!({
                "name": v.name,
                "weight": v.weight,
                "retired": v.retired,
                "params": params(&v.params),
                "assigned": d.assigned,
                "metrics": metrics,
            })
        })
        .collect();
    let metric_json = |m: &gateway_core::experiment::MetricDef| {
        j!({
            "name": m.name,
            "kind": if m.kind == MetricKind::Binary { "binary" } else { "continuous" },
            "better": if m.better == gateway_core::experiment::Better::Higher { "higher" } else { "lower" },
        })
    };
    let analysis = s.analysis.as_ref().map(|a| {
        let arms: Vec<Value> = a
            .arms
            .iter()
            .map(|arm| {
                let metrics: Vec<Value> = arm
                    .metrics
                    .iter()
                    .map(|m| {
                        j!({
                            "metric": m.metric,
                            "n": m.n,
                            "mean": m.mean.map(finite),
                            "ci": m.ci.map(|(lo, hi)| j!([finite(lo), finite(hi)])),
                            "vs_control": m.vs_control.map(|r| j!({
                                "effect": finite(r.effect),
                                "ci": [finite(r.ci_low), finite(r.ci_high)],
                                "p_value": finite(r.p_value),
                                "statistic": finite(r.statistic),
                            })),
                            "sequential_p": finite(m.sequential_p),
                        })
                    })
                    .collect();
                j!({ "name": arm.name, "assigned": arm.assigned, "retired": arm.retired, "metrics": metrics })
            })
            .collect();
        j!({
            "events": a.events,
            "srm_p": a.srm_p.map(finite),
            "srm": match a.srm_p {
                Some(p) if p < gateway_core::experiment::SRM_ALPHA => "mismatch",
                Some(_) => "ok",
                None => "unknown",
            },
            "verdict": verdict_json(&a.verdict),
            "arms": arms,
        })
    });
    let decision_json = |d: &gateway_core::protocol::experiment::Decision| j!({ "kind": d.kind, "arm": d.arm, "at": d.at.to_rfc3339(), "reason": d.reason });
    let decisions: Vec<Value> = s.decisions.iter().map(decision_json).collect();
    let decision = s
        .decisions
        .iter()
        .rev()
        .find(|d| matches!(d.kind.as_str(), "promote" | "rollback" | "halt"))
        .map(decision_json);
    j!({
        "name": s.name,
        "status": s.status.as_str(),
        "seed": s.def.seed,
        "coverage": f64::from(s.def.coverage) / 10_000.0,
        "min_sample": s.def.min_sample,
        "primary": metric_json(&s.def.primary),
        "guardrails": s.def.guardrails.iter().map(metric_json).collect::<Vec<_>>(),
        "target": s.def.target.as_ref().map(|t| j!({ "group": t.group, "path_prefix": t.path_prefix })),
        "variants": arms,
        "analysis": analysis,
        "winner": s.winner,
        "promotions": s.promotions,
        "decision": decision,
        "decisions": decisions,
        "object": s.object,
    })
}

fn state_response(reply: EResponse) -> AppResult<Response> {
    match reply {
        EResponse::State(s) => json(&state_json(&s), 200),
        _ => Err(unexpected("experiment")),
    }
}

/// `GET /v1/experiments/{name}`.
pub async fn get(env: &Env, name: &str) -> AppResult<Response> {
    state_response(send(env, name, ERequest::Get { name: name.into() }).await?)
}

/// `POST /v1/experiments/{name}/analyse` (admin): analyse now; promotes or rolls back when the
/// rule says so.
pub async fn analyse(env: &Env, name: &str) -> AppResult<Response> {
    state_response(send(env, name, ERequest::Analyse { name: name.into() }).await?)
}

/// `POST /v1/experiments/{name}/pause` and `/resume` (admin).
pub async fn pause(env: &Env, name: &str, paused: bool) -> AppResult<Response> {
    let msg = ERequest::Pause {
        name: name.into(),
        paused,
    };
    state_response(send(env, name, msg).await?)
}

/// `POST /v1/experiments/{name}/arms/{arm}/retire` (admin).
pub async fn retire(env: &Env, name: &str, arm: &str) -> AppResult<Response> {
    let msg = ERequest::Retire {
        name: name.into(),
        arm: arm.into(),
    };
    state_response(send(env, name, msg).await?)
}

/// `PUT /v1/experiments/{name}` (admin): create or replace (assignments are kept).
pub async fn define(mut req: Request, env: &Env, cfg: &Config, name: &str) -> AppResult<Response> {
    let body: ExperimentVar =
        parse_json(&read_body(&mut req, cfg.max_body_bytes.min(65_536)).await?)?;
    let def = body.into_def(name)?;
    let target = def.target.clone();
    let reply = send(
        env,
        name,
        ERequest::Define {
            name: name.into(),
            def,
        },
    )
    .await?;
    send_index(
        env,
        ERequest::IndexPut {
            name: name.into(),
            target,
        },
    )
    .await?;
    forget_targets();
    match reply {
        EResponse::Defined { created } => json(
            &j!({ "name": name, "created": created }),
            if created { 201 } else { 200 },
        ),
        _ => Err(unexpected("experiment")),
    }
}

/// `DELETE /v1/experiments/{name}` (admin): the definition, assignments and data go; a
/// configured experiment of that name stays deleted until it is defined again.
pub async fn delete(env: &Env, name: &str) -> AppResult<Response> {
    let reply = send(env, name, ERequest::Delete { name: name.into() }).await?;
    send_index(env, ERequest::IndexDelete { name: name.into() }).await?;
    forget_targets();
    match reply {
        EResponse::Deleted { existed } => json(&j!({ "name": name, "deleted": existed }), 200),
        _ => Err(unexpected("experiment")),
    }
}

/// Experiment names: configured ones and admin-defined ones, minus deleted ones, with targets.
async fn catalogue(env: &Env, cfg: &Config) -> AppResult<Vec<(String, Option<Target>)>> {
    let index = match send_index(env, ERequest::IndexList).await? {
        EResponse::Index(v) => v,
        _ => return Err(unexpected("experiment index")),
    };
    let mut out: Vec<(String, Option<Target>)> = cfg
        .experiments
        .iter()
        .filter(|(n, _)| !index.iter().any(|e| &e.name == *n))
        .map(|(n, d)| (n.clone(), d.target.clone()))
        .collect();
    out.extend(
        index
            .into_iter()
            .filter(|e| !e.deleted)
            .map(|e| (e.name, e.target)),
    );
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `GET /v1/experiments`: every experiment's state (at most 100).
pub async fn list(env: &Env, cfg: &Config) -> AppResult<Response> {
    let names = catalogue(env, cfg).await?;
    let states = join_all(
        names
            .iter()
            .take(LIST_MAX)
            .map(|(n, _)| send(env, n, ERequest::Get { name: n.clone() })),
    )
    .await;
    let experiments: Vec<Value> = states
        .into_iter()
        .filter_map(|r| match r {
            Ok(EResponse::State(s)) => Some(state_json(&s)),
            _ => None,
        })
        .collect();
    json(
        &j!({ "experiments": experiments, "truncated": names.len() > LIST_MAX }),
        200,
    )
}

/// Experiments with a proxy target, as (name, target).
type Targets = Vec<(String, Target)>;

thread_local! {
    /// This isolate's copy of the proxy targets and when it was fetched.
    static TARGETS: RefCell<Option<(UnixMillis, Targets)>> = const { RefCell::new(None) };
}

fn forget_targets() {
    TARGETS.with(|t| *t.borrow_mut() = None);
}

/// The experiment that applies to a proxied request to `group` and `path`, if any.
pub async fn target_for(env: &Env, cfg: &Config, group: &str, path: &str) -> Option<String> {
    let at = now();
    let cached = TARGETS.with(|t| {
        t.borrow()
            .as_ref()
            .filter(|(fetched, _)| at.since(*fetched) < TARGETS_TTL_MS)
            .map(|(_, v)| select(v, group, path).map(str::to_string))
    });
    if let Some(hit) = cached {
        return hit;
    }
    let targets: Vec<(String, Target)> = match catalogue(env, cfg).await {
        Ok(all) => all
            .into_iter()
            .filter_map(|(n, t)| t.map(|t| (n, t)))
            .collect(),
        // The index is unreachable: configured experiments still apply.
        Err(_) => cfg
            .experiments
            .iter()
            .filter_map(|(n, d)| d.target.clone().map(|t| (n.clone(), t)))
            .collect(),
    };
    let chosen = select(&targets, group, path).map(str::to_string);
    TARGETS.with(|t| *t.borrow_mut() = Some((at, targets)));
    chosen
}

/// A unit's cohort on the proxy path.
#[derive(Debug, Clone)]
pub struct Cohort {
    /// Experiment name.
    pub experiment: String,
    /// The arm whose parameters apply.
    pub variant: String,
    /// Those parameters, as the gateway applies them.
    pub params: ArmParams,
    /// Whether outcomes are recorded.
    pub counted: bool,
}

/// How long an isolate reuses a unit's cohort before asking the experiment again (a promotion,
/// rollback or pause reaches a returning caller within this time).
pub const COHORT_TTL_MS: i64 = 5_000;
/// Cohorts an isolate remembers (the cache is cleared when full).
const COHORT_CACHE_MAX: usize = 10_000;
/// Outcomes wait this long to be sent together.
const OUTCOME_FLUSH_MS: u64 = 100;
/// Largest outcome batch.
const OUTCOME_BATCH_MAX: usize = 500;

/// Outcomes waiting for delivery: experiment → (unit, values).
type Outcomes = std::collections::HashMap<String, Vec<(String, Vec<(String, f64)>)>>;

thread_local! {
    static COHORTS: RefCell<std::collections::HashMap<(String, String), (UnixMillis, Cohort)>> =
        RefCell::new(std::collections::HashMap::new());
    static OUTCOMES: RefCell<Outcomes> = RefCell::new(Outcomes::new());
    static FLUSH_SCHEDULED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Assigns `unit` in `experiment` for the proxy path; `None` on any failure (an experiment
/// never fails a proxied request). Answers are reused for [`COHORT_TTL_MS`] per isolate:
/// assignments are sticky, so only a status change can make a cached answer stale.
pub async fn cohort(env: &Env, experiment: &str, unit: &str) -> Option<Cohort> {
    let key = (experiment.to_string(), unit.to_string());
    let at = now();
    let cached = COHORTS.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|(t, _)| at.since(*t) < COHORT_TTL_MS)
            .map(|(_, c)| c.clone())
    });
    if cached.is_some() {
        return cached;
    }
    let msg = ERequest::Assign {
        name: experiment.into(),
        unit: unit.into(),
    };
    let fresh = match send(env, experiment, msg).await.ok()? {
        EResponse::Assigned {
            variant,
            params,
            counted,
            ..
        } => Cohort {
            experiment: experiment.into(),
            variant,
            params: ArmParams::parse(&params).unwrap_or_default(),
            counted,
        },
        _ => return None,
    };
    COHORTS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= COHORT_CACHE_MAX {
            c.clear();
        }
        c.insert(key, (at, fresh.clone()));
    });
    Some(fresh)
}

async fn flush_outcomes(env: &Env) {
    let batches = OUTCOMES.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let sends = batches.into_iter().map(|(name, events)| async move {
        let msg = ERequest::Events {
            name: name.clone(),
            events,
        };
        let _ = send(env, &name, msg).await;
    });
    join_all(sends).await;
}

/// Queues a proxied request's outcome for its cohort. Outcomes are sent per experiment in
/// batches, [`OUTCOME_FLUSH_MS`] after the first one (or at [`OUTCOME_BATCH_MAX`]), through
/// `ctx.wait_until`: one object write per batch instead of one per request.
pub fn record(
    ctx: &dyn crate::telemetry::Defer,
    env: &Env,
    experiment: &str,
    unit: &str,
    values: Vec<(String, f64)>,
) {
    let full = OUTCOMES.with(|o| {
        let mut o = o.borrow_mut();
        let list = o.entry(experiment.to_string()).or_default();
        list.push((unit.to_string(), values));
        list.len() >= OUTCOME_BATCH_MAX
    });
    let env = env.clone();
    crate::telemetry::schedule_flush(
        ctx,
        &FLUSH_SCHEDULED,
        full,
        OUTCOME_FLUSH_MS,
        move || async move {
            flush_outcomes(&env).await;
        },
    );
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
            counted,
        } => json(
            &j!({
                "experiment": name,
                "unit": body.unit,
                "variant": variant,
                "params": params(&p),
                "new": new,
                "counted": counted,
            }),
            200,
        ),
        _ => Err(unexpected("experiment")),
    }
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
    let msg = ERequest::Event {
        name: name.into(),
        unit: body.unit,
        values,
    };
    match send(env, name, msg).await? {
        EResponse::Recorded {
            variant,
            counted,
            ignored,
        } => json(
            &j!({ "recorded": counted, "variant": variant, "ignored": ignored }),
            200,
        ),
        _ => Err(unexpected("experiment")),
    }
}
