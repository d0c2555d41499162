//! Public JSON views of the objects' state, built in core next to the `/metrics` export
//! (`observe::export`): route handlers fetch a typed reply through a client and answer
//! `views::…(&reply)`, so what a field is called and how a number is rendered is decided here,
//! once, and tested natively.

use serde_json::{json as j, Value};

use crate::experiment::{MetricKind, Verdict};
use crate::keys::KeyView;
use crate::protocol::experiment::State;
use crate::protocol::ratelimit::PolicyEntry;

/// An arm's parameters as JSON (stored as validated JSON text; `null` if they are not).
pub fn params(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The analysis verdict.
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

/// A number, or `null` when it is not finite (JSON has no NaN or infinity).
fn finite(x: f64) -> Value {
    if x.is_finite() {
        j!(x)
    } else {
        Value::Null
    }
}

/// The public JSON view of an experiment's state (`GET /v1/experiments/{name}`, the list and
/// `/v1/stats/experiments/{name}`).
pub fn experiment(s: &State) -> Value {
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
    let metric_json = |m: &crate::experiment::MetricDef| {
        j!({
            "name": m.name,
            "kind": if m.kind == MetricKind::Binary { "binary" } else { "continuous" },
            "better": if m.better == crate::experiment::Better::Higher { "higher" } else { "lower" },
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
                Some(p) if p < crate::experiment::SRM_ALPHA => "mismatch",
                Some(_) => "ok",
                None => "unknown",
            },
            "verdict": verdict_json(&a.verdict),
            "arms": arms,
        })
    });
    let decision_json = |d: &crate::protocol::experiment::Decision| j!({ "kind": d.kind, "arm": d.arm, "at": d.at.to_rfc3339(), "reason": d.reason });
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

/// A rate-limit policy entry (`GET /v1/policies`, `GET /v1/policies/{name}`).
pub fn policy(e: &PolicyEntry) -> Value {
    j!({
        "name": e.name,
        "policy": e.policy.to_json(),
        "source": match e.source {
            crate::protocol::ratelimit::PolicySource::Config => "config",
            crate::protocol::ratelimit::PolicySource::Admin => "admin",
        },
        "version": e.version,
    })
}

/// A virtual key (`/v1/keys`): its definition and usage, never its secret or hash.
pub fn key(k: &KeyView) -> Value {
    let d = &k.def;
    j!({
        "id": k.id,
        "name": d.name,
        "created_at": k.created_at.to_rfc3339(),
        "revoked_at": k.revoked_at.map(|t| t.to_rfc3339()),
        "policy": d.policy.map(|p| p.to_json()),
        "tokens_per_minute": d.tokens_per_minute,
        "tokens_per_day": d.tokens_per_day,
        "budget_day_micro_usd": d.budget_day_micro_usd,
        "budget_month_micro_usd": d.budget_month_micro_usd,
        "models": d.models,
        "groups": d.groups,
        "metadata": d.metadata,
        "usage": k.usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::ExperimentDef;
    use crate::experiment::{Analysis, ArmData, MetricDef, Moments, Variant};
    use crate::protocol::experiment::{Decision, Status};
    use crate::protocol::ratelimit::PolicySource;
    use crate::rate_limit::policy::PolicyJson;
    use crate::UnixMillis;

    fn state() -> State {
        let variant = |name: &str, params: &str| Variant {
            name: name.into(),
            weight: 50,
            params: params.into(),
            retired: false,
        };
        let decision = |kind: &str| Decision {
            kind: kind.into(),
            arm: None,
            at: UnixMillis(0),
            reason: kind.into(),
        };
        let mut m = Moments::default();
        m.add(1.0);
        m.add(0.0);
        State {
            name: "e".into(),
            def: ExperimentDef {
                seed: "e".into(),
                variants: vec![variant("a", r#"{"ttl":5}"#), variant("b", "not json")],
                min_sample: 100,
                coverage: 2_500,
                primary: MetricDef::well_known("cache_hit").unwrap(),
                guardrails: vec![],
                target: None,
            },
            data: vec![ArmData {
                assigned: 2,
                metrics: vec![m],
            }],
            analysis: Some(Analysis {
                events: 2,
                arms: vec![],
                srm_p: Some(1e-6),
                verdict: Verdict::Halt("srm".into()),
            }),
            status: Status::Halted,
            object: Default::default(),
            winner: None,
            promotions: 0,
            decisions: vec![decision("halt"), decision("pause")],
        }
    }

    #[test]
    fn the_experiment_view_names_and_renders_every_field() {
        let v = experiment(&state());
        assert_eq!(v["status"], "halted");
        assert_eq!(v["coverage"], 0.25);
        assert_eq!(v["variants"][0]["params"]["ttl"], 5);
        // Parameters that are not JSON render as null, an arm with no data as zeros.
        assert_eq!(v["variants"][1]["params"], Value::Null);
        assert_eq!(v["variants"][1]["assigned"], 0);
        assert_eq!(v["variants"][0]["metrics"]["cache_hit"]["mean"], 0.5);
        assert_eq!(v["primary"]["kind"], "binary");
        assert_eq!(v["primary"]["better"], "higher");
        assert_eq!(v["analysis"]["srm"], "mismatch");
        assert_eq!(v["analysis"]["verdict"]["kind"], "halt");
        // The decision shown is the last verdict, not the admin action after it.
        assert_eq!(v["decision"]["kind"], "halt");
        assert_eq!(v["decisions"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn numbers_json_cannot_carry_are_null() {
        assert_eq!(finite(f64::NAN), Value::Null);
        assert_eq!(finite(f64::INFINITY), Value::Null);
        assert_eq!(finite(1.5), j!(1.5));
    }

    #[test]
    fn a_policy_view_says_where_it_came_from() {
        let policy = PolicyJson {
            algorithm: None,
            capacity: Some(10),
            refill: Some(1),
            period_ms: Some(1_000),
            limit: None,
            window_ms: None,
            shadow: false,
        }
        .into_policy()
        .unwrap();
        let entry = PolicyEntry {
            name: "api".into(),
            policy,
            source: PolicySource::Admin,
            version: 3,
        };
        let v = super::policy(&entry);
        assert_eq!(v["source"], "admin");
        assert_eq!(v["version"], 3);
        assert_eq!(v["policy"]["capacity"], 10);
    }
}
