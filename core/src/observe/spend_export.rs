//! Spend in the documents: the `spend` object of the `/metrics` JSON and of the daily report,
//! and the per-key and per-model gauges of the Prometheus exposition.
//!
//! The JSON lists the [`TOP_SPEND_SHOWN`] keys and models with the highest cost; everything else
//! (the rest of the entries and the bucket's own `other`) is summed into `other` /
//! `models_other`. Prometheus gets the same top entries as gauges over the period (not counters:
//! the membership of the top changes), the rest under the label value [`OTHER`].

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::series::Period;
use super::spend::{Spend, Usage};

/// Keys and models listed.
pub const TOP_SPEND_SHOWN: usize = 20;
/// The label value of the rest in the Prometheus gauges (no key id or model name has it).
pub const OTHER: &str = "(other)";

fn usage(u: &Usage) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("requests".into(), json!(u.requests));
    m.insert("input_tokens".into(), json!(u.input_tokens));
    m.insert("output_tokens".into(), json!(u.output_tokens));
    m.insert("cost_micro_usd".into(), json!(u.cost_micro_usd));
    m
}

/// Splits `spend` into the shown keys and the rest, and the shown models and the rest.
fn split(spend: &Spend) -> (Usage, Usage) {
    let mut other = spend.other_keys;
    let top = spend.top_keys(TOP_SPEND_SHOWN);
    for (k, s) in &spend.keys {
        if !top.iter().any(|(n, _)| n == k) {
            other.add(&s.usage);
        }
    }
    let mut models_other = spend.other_models;
    let shown = spend.top_models(TOP_SPEND_SHOWN);
    for (m, u) in &spend.models {
        if !shown.iter().any(|(n, _)| n == m) {
            models_other.add(u);
        }
    }
    (other, models_other)
}

/// The `spend` object: `{keys: [{key, requests, input_tokens, output_tokens, cost_micro_usd,
/// budget_day_micro_usd?, budget_month_micro_usd?, budget_used_day_pct?}], other: {...},
/// models: [{model, ...}], models_other: {...}}`. `today` (spend since UTC midnight) gives
/// `budget_used_day_pct` for keys with a daily budget.
pub fn spend_json(spend: &Spend, today: Option<&Spend>) -> Value {
    let keys: Vec<Value> = spend
        .top_keys(TOP_SPEND_SHOWN)
        .into_iter()
        .map(|(k, s)| {
            let mut m = serde_json::Map::new();
            m.insert("key".into(), json!(k));
            m.extend(usage(&s.usage));
            if let Some(b) = s.budget.day_micro_usd {
                m.insert("budget_day_micro_usd".into(), json!(b));
            }
            if let Some(b) = s.budget.month_micro_usd {
                m.insert("budget_month_micro_usd".into(), json!(b));
            }
            if let Some(p) = today.and_then(|t| t.budget_used_day_pct(k)) {
                m.insert(
                    "budget_used_day_pct".into(),
                    json!((p * 100.0).round() / 100.0),
                );
            }
            Value::Object(m)
        })
        .collect();
    let models: Vec<Value> = spend
        .top_models(TOP_SPEND_SHOWN)
        .into_iter()
        .map(|(name, u)| {
            let mut m = serde_json::Map::new();
            m.insert("model".into(), json!(name));
            m.extend(usage(u));
            Value::Object(m)
        })
        .collect();
    let (other, models_other) = split(spend);
    json!({
        "keys": keys,
        "other": Value::Object(usage(&other)),
        "models": models,
        "models_other": Value::Object(usage(&models_other)),
    })
}

/// Escapes a label value for the text exposition format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the spend gauges: `edge_gateway_key_spend_micro_usd{key,period}`,
/// `edge_gateway_key_requests{key,period}`, `edge_gateway_key_tokens{key,kind,period}` and the
/// same three for models (`edge_gateway_model_…{model,…}`), top entries plus [`OTHER`].
pub fn spend_prometheus(out: &mut String, spend: &Spend, period: Period) {
    let p = period.name();
    let (other, models_other) = split(spend);
    let mut keys: Vec<(String, Usage)> = spend
        .top_keys(TOP_SPEND_SHOWN)
        .into_iter()
        .map(|(k, s)| (k.to_string(), s.usage))
        .collect();
    if other != Usage::default() {
        keys.push((OTHER.into(), other));
    }
    let mut models: Vec<(String, Usage)> = spend
        .top_models(TOP_SPEND_SHOWN)
        .into_iter()
        .map(|(m, u)| (m.to_string(), *u))
        .collect();
    if models_other != Usage::default() {
        models.push((OTHER.into(), models_other));
    }
    for (what, rows) in [("key", &keys), ("model", &models)] {
        let families = [
            (
                "spend_micro_usd",
                "Provider cost over the period, micro-USD",
            ),
            ("requests", "Settled AI requests over the period"),
            ("tokens", "Tokens over the period, by kind (input, output)"),
        ];
        for (suffix, help) in families {
            let name = format!("edge_gateway_{what}_{suffix}");
            let _ = writeln!(
                out,
                "# HELP {name} {help}, per {what} (top {TOP_SPEND_SHOWN})."
            );
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (n, u) in rows.iter() {
                let l = format!("{what}=\"{}\"", label(n));
                match suffix {
                    "spend_micro_usd" => {
                        let _ = writeln!(out, "{name}{{{l},period=\"{p}\"}} {}", u.cost_micro_usd);
                    }
                    "requests" => {
                        let _ = writeln!(out, "{name}{{{l},period=\"{p}\"}} {}", u.requests);
                    }
                    _ => {
                        for (kind, v) in [("input", u.input_tokens), ("output", u.output_tokens)] {
                            let _ =
                                writeln!(out, "{name}{{{l},kind=\"{kind}\",period=\"{p}\"}} {v}");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spend::tests::srec;
    use super::*;

    #[test]
    fn json_lists_the_top_keys_with_budget_use_and_sums_the_rest() {
        let mut s = Spend::default();
        for i in 0..(TOP_SPEND_SHOWN as u64 + 3) {
            s.record(&srec(0, &format!("key_{i:02}"), "gpt", 10 * (i + 1)));
        }
        let v = spend_json(&s, Some(&s));
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), TOP_SPEND_SHOWN);
        assert_eq!(keys[0]["key"], "key_22");
        assert_eq!(keys[0]["cost_micro_usd"], 230);
        assert_eq!(keys[0]["budget_day_micro_usd"], 1_000);
        assert_eq!(keys[0]["budget_used_day_pct"], 23.0);
        assert_eq!(v["other"]["cost_micro_usd"], 10 + 20 + 30);
        assert_eq!(v["other"]["requests"], 3);
        assert_eq!(v["models"][0]["model"], "gpt");
        assert_eq!(v["models"][0]["requests"], 23);
        assert_eq!(v["models_other"]["requests"], 0);
    }

    #[test]
    fn prometheus_gauges_escape_labels_and_put_the_rest_under_other() {
        let mut s = Spend::default();
        s.record(&srec(0, "key_a", "m\"x\\", 116));
        let mut text = String::new();
        spend_prometheus(&mut text, &s, Period::Hour);
        assert!(
            text.contains("edge_gateway_key_spend_micro_usd{key=\"key_a\",period=\"1h\"} 116\n"),
            "{text}"
        );
        assert!(text
            .contains("edge_gateway_key_tokens{key=\"key_a\",kind=\"output\",period=\"1h\"} 16\n"));
        assert!(
            text.contains(
                "edge_gateway_model_spend_micro_usd{model=\"m\\\"x\\\\\",period=\"1h\"} 116\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE edge_gateway_model_requests gauge\n"));
        assert!(!text.contains(OTHER));
    }
}
