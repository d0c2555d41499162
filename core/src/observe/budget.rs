//! The per-key budget rule: an alert rule whose `metric` is `key_budget_used_pct` is evaluated
//! once per virtual key, as the percent of the key's daily budget spent today (UTC, the root's
//! merged spend buckets plus the shards' open spend windows), for every key whose spend records
//! carried a daily budget.
//!
//! Each key gets its own instance of the rule, named `{rule}:{key}`, with its own state in the
//! [`Engine`](super::alerts::Engine): pending → firing → resolved exactly like any other rule
//! (`for_ms`, `keep_firing_ms`, the repeat interval). `min_requests` counts the key's requests
//! today; `window_ms` is not used (the window is the UTC day). An instance that is pending or
//! firing stays evaluated after its key stopped spending (its value is then unknown, so it
//! resolves after `keep_firing_ms`); an inactive instance of a key without spend today is
//! dropped.
//!
//! As JSON (`ALERT_RULES`): `{"name":"budget","severity":"warning","metric":"key_budget_used_pct",
//! "op":"above","threshold":80,"for_ms":0,"min_requests":1}`.

use std::collections::BTreeMap;

use super::alerts::{AlertState, Metric, Phase, Rule};
use super::spend::Spend;

/// Separates a budget rule's name from the key in an instance's name.
pub const SEP: char = ':';

/// The rules to evaluate (or show): every rule that is not per key as it is, and per
/// `key_budget_used_pct` rule one instance per key with a daily budget in `today` and per
/// instance that is pending or firing in `states`. Returns the rules and, per instance name,
/// its key.
pub fn expand(
    rules: &[Rule],
    states: &[AlertState],
    today: Option<&Spend>,
) -> (Vec<Rule>, BTreeMap<String, String>) {
    let mut out = Vec::new();
    let mut keys = BTreeMap::new();
    for r in rules {
        if r.metric != Metric::KeyBudgetUsedPct {
            out.push(r.clone());
            continue;
        }
        let prefix = format!("{}{SEP}", r.name);
        let mut mine: Vec<String> = today
            .map(|t| {
                t.keys
                    .iter()
                    .filter(|(_, k)| k.budget.day_micro_usd.is_some_and(|b| b > 0))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for s in states.iter().filter(|s| s.phase != Phase::Inactive) {
            if let Some(key) = s.rule.strip_prefix(&prefix) {
                if !mine.iter().any(|k| k == key) {
                    mine.push(key.to_string());
                }
            }
        }
        mine.sort();
        for key in mine {
            let mut inst = r.clone();
            inst.name = format!("{prefix}{key}");
            keys.insert(inst.name.clone(), key);
            out.push(inst);
        }
    }
    (out, keys)
}

/// A budget instance's value (percent of the daily budget spent today) and the key's requests
/// today; `None` when the key has no spend or no daily budget today.
pub fn observe(today: &Spend, key: &str) -> Option<(f64, u64)> {
    let pct = today.budget_used_day_pct(key)?;
    Some((pct, today.keys.get(key)?.usage.requests))
}

#[cfg(test)]
mod tests {
    use super::super::alerts::{Engine, Op, Severity, Status};
    use super::super::spend::tests::srec;
    use super::*;
    use crate::UnixMillis;

    fn budget_rule() -> Rule {
        serde_json::from_str(
            r#"{"name":"budget","severity":"warning","metric":"key_budget_used_pct","op":"above",
                "threshold":80,"for_ms":1000,"keep_firing_ms":0,"min_requests":1}"#,
        )
        .unwrap()
    }

    fn run(engine: &mut Engine, rules: &[Rule], today: &Spend, now: i64) -> Vec<(String, Status)> {
        let (expanded, keys) = expand(rules, &engine.states, Some(today));
        engine
            .evaluate(UnixMillis(now), &expanded, 3_600_000, |r| {
                keys.get(&r.name).and_then(|k| observe(today, k))
            })
            .into_iter()
            .map(|n| (n.rule, n.status))
            .collect()
    }

    #[test]
    fn a_key_over_its_budget_goes_pending_then_firing_then_resolves() {
        let rule = budget_rule();
        assert_eq!((rule.op, rule.severity), (Op::Above, Severity::Warning));
        let rules = vec![rule];
        let mut engine = Engine::default();
        let mut today = Spend::default();
        // Budget 1000: key_a spends 900 (90 %), key_b 100 (10 %), key_c has no budget.
        today.record(&srec(0, "key_a", "m", 900));
        today.record(&srec(0, "key_b", "m", 100));
        let mut no_budget = srec(0, "key_c", "m", 5_000);
        no_budget.budget_day_micro_usd = None;
        today.record(&no_budget);
        assert!(
            run(&mut engine, &rules, &today, 10_000).is_empty(),
            "pending first"
        );
        let names: Vec<&str> = engine.states.iter().map(|s| s.rule.as_str()).collect();
        assert_eq!(names, vec!["budget:key_a", "budget:key_b"]);
        assert!(matches!(engine.states[0].phase, Phase::Pending { .. }));
        assert_eq!(engine.states[0].value, Some(90.0));
        assert_eq!(engine.states[1].phase, Phase::Inactive);
        let fired = run(&mut engine, &rules, &today, 11_000);
        assert_eq!(fired, vec![("budget:key_a".to_string(), Status::Firing)]);
        let (shown, _) = expand(&rules, &engine.states, None);
        assert_eq!(
            engine.issues(&shown).len(),
            1,
            "the firing instance is an issue"
        );
        // A new day: key_a has no spend yet; its firing instance resolves, key_b's is dropped.
        let resolved = run(&mut engine, &rules, &Spend::default(), 90_000_000);
        assert_eq!(
            resolved,
            vec![("budget:key_a".to_string(), Status::Resolved)]
        );
        run(&mut engine, &rules, &Spend::default(), 90_001_000);
        assert!(engine.states.is_empty(), "{:?}", engine.states);
    }
}
