//! `Experiment`: deterministic cohort assignment and per-arm outcome tallies.
//!
//! **Assignment hash** (stable across versions; `tests::assignment_is_pinned` guards it):
//! `bucket = fnv1a64(seed ++ 0x1F ++ unit) % 10_000`, then the arm whose cumulative share of the
//! total weight (scaled to 10 000 basis points, rounded down, the last arm taking the remainder)
//! first exceeds `bucket`. The seed defaults to the experiment name.
//!
//! Assignments are sticky: the Durable Object stores each unit's arm the first time it is
//! assigned and always answers from storage afterwards, so changing weights never moves a unit.

pub mod stats;

use serde::{Deserialize, Serialize};

use crate::shard::fnv1a64;
use crate::validate;
use crate::GatewayError;

/// One arm of an experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Arm name (`[A-Za-z0-9_.-]{1,64}`), e.g. `control`.
    pub name: String,
    /// Relative weight, 0..=10 000 (0 stops new assignments to the arm).
    pub weight: u32,
    /// The arm's parameters as a JSON object text, e.g. `{"cache_ttl_s":86400}`.
    pub params: String,
}

/// An experiment definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentDef {
    /// Hash seed; changing it re-randomises new units only.
    pub seed: String,
    /// The arms; the first is the control.
    pub variants: Vec<Variant>,
    /// Outcome events each compared arm needs before a decision (the minimum sample).
    pub min_sample: u64,
}

/// Default minimum sample per arm (see `core/tests/experiment_sim.rs` for the power it gives).
pub const DEFAULT_MIN_SAMPLE: u64 = 1_000;
/// Significance level of the decision rule (split over the treatments, Bonferroni).
pub const ALPHA: f64 = 0.05;
/// Sample-ratio mismatch halts the experiment below this p-value.
pub const SRM_ALPHA: f64 = 0.001;
/// Mixing variance of the sequential test (effects of about ±3 points).
pub const TAU2: f64 = 0.0009;

impl ExperimentDef {
    /// Validates: 2..=8 arms, unique names, weights summing to more than zero.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |d: String| Err(GatewayError::bad_request("invalid-experiment", d));
        if !(2..=8).contains(&self.variants.len()) {
            return bad("an experiment needs 2 to 8 variants".into());
        }
        if !(10..=10_000_000).contains(&self.min_sample) {
            return bad("min_sample must be 10..=10000000".into());
        }
        if self.seed.is_empty() || self.seed.len() > 128 {
            return bad("seed must be 1 to 128 bytes".into());
        }
        let mut total = 0u64;
        for (i, v) in self.variants.iter().enumerate() {
            validate::name("variant name", &v.name)?;
            if self.variants[..i].iter().any(|o| o.name == v.name) {
                return bad(format!("duplicate variant {}", v.name));
            }
            if v.weight > 10_000 {
                return bad("variant weight must be 0..=10000".into());
            }
            if v.params.len() > 4096 {
                return bad("variant params must be at most 4096 bytes".into());
            }
            total += u64::from(v.weight);
        }
        if total == 0 {
            return bad("at least one variant needs a positive weight".into());
        }
        Ok(())
    }
}

/// The bucket in `0..10_000` a unit falls into for `seed`.
pub fn bucket(seed: &str, unit: &str) -> u32 {
    let mut bytes = Vec::with_capacity(seed.len() + unit.len() + 1);
    bytes.extend_from_slice(seed.as_bytes());
    bytes.push(0x1f);
    bytes.extend_from_slice(unit.as_bytes());
    (fnv1a64(&bytes) % 10_000) as u32
}

/// The arm index for a unit that has no stored assignment yet.
pub fn assign(def: &ExperimentDef, unit: &str) -> usize {
    let b = u64::from(bucket(&def.seed, unit));
    let total: u64 = def
        .variants
        .iter()
        .map(|v| u64::from(v.weight))
        .sum::<u64>()
        .max(1);
    let mut cumulative = 0u64;
    let last_weighted = def.variants.iter().rposition(|v| v.weight > 0).unwrap_or(0);
    for (i, v) in def.variants.iter().enumerate() {
        cumulative += u64::from(v.weight);
        if v.weight > 0 && b < cumulative * 10_000 / total {
            return i;
        }
    }
    last_weighted
}

/// Per-arm tallies of a binary primary metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmTally {
    /// Units assigned.
    pub assigned: u64,
    /// Outcome events recorded.
    pub events: u64,
    /// Events counted as success for the primary metric.
    pub successes: u64,
}

/// One arm compared with the control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmAnalysis {
    /// Arm name.
    pub name: String,
    /// Tallies.
    pub tally: ArmTally,
    /// Success rate, when it has events.
    pub rate: Option<f64>,
    /// Fixed-horizon two-proportion test against the control (for reporting).
    pub vs_control: Option<stats::TestResult>,
    /// Running minimum of the always-valid (mSPRT) p-value over every analysis so far.
    pub sequential_p: f64,
}

/// What the analysis concluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// Keep collecting.
    Continue(String),
    /// Promote this arm.
    Promote(String),
    /// Stop: the data cannot be trusted (sample-ratio mismatch).
    Halt(String),
}

/// A snapshot computed by the analysis alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Total events analysed.
    pub events: u64,
    /// Per arm, the control first.
    pub arms: Vec<ArmAnalysis>,
    /// Sample-ratio-mismatch p-value of the assignments against the weights.
    pub srm_p: Option<f64>,
    /// The decision so far.
    pub verdict: Verdict,
}

/// Analyses the tallies. `previous` carries the running minima of the sequential p-values, so
/// repeated looks never lose evidence and never inflate false positives.
///
/// Rule: halt on SRM (p < 0.001); otherwise promote the treatment with the largest positive
/// effect whose running sequential p-value is below `ALPHA / treatments`, once it and the control
/// each have `min_sample` events; otherwise continue.
pub fn analyse(def: &ExperimentDef, tallies: &[ArmTally], previous: Option<&Analysis>) -> Analysis {
    let t = |i: usize| tallies.get(i).copied().unwrap_or_default();
    let control = t(0);
    let arms: Vec<ArmAnalysis> = def
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let a = t(i);
            let rate = (a.events > 0).then(|| a.successes as f64 / a.events as f64);
            let (vs_control, p) = if i == 0 {
                (None, 1.0)
            } else {
                (
                    stats::two_proportion(control.successes, control.events, a.successes, a.events),
                    stats::msprt_p_value(
                        control.successes,
                        control.events,
                        a.successes,
                        a.events,
                        TAU2,
                    ),
                )
            };
            let prev = previous
                .and_then(|p| p.arms.iter().find(|x| x.name == v.name))
                .map_or(1.0, |x| x.sequential_p);
            ArmAnalysis {
                name: v.name.clone(),
                tally: a,
                rate,
                vs_control,
                sequential_p: p.min(prev),
            }
        })
        .collect();
    let weighted: Vec<(u64, f64)> = def
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.weight > 0)
        .map(|(i, v)| (t(i).assigned, f64::from(v.weight)))
        .collect();
    let srm_p = stats::srm_p_value(
        &weighted.iter().map(|w| w.0).collect::<Vec<_>>(),
        &weighted.iter().map(|w| w.1).collect::<Vec<_>>(),
    );
    let treatments = def.variants.len().saturating_sub(1).max(1) as f64;
    let verdict = if srm_p.is_some_and(|p| p < SRM_ALPHA) {
        Verdict::Halt(format!(
            "sample-ratio mismatch (p = {:.2e})",
            srm_p.unwrap_or(0.0)
        ))
    } else if control.events < def.min_sample {
        Verdict::Continue(format!(
            "control has {} of {} events",
            control.events, def.min_sample
        ))
    } else {
        let winner = arms
            .iter()
            .skip(1)
            .filter(|a| a.tally.events >= def.min_sample && a.sequential_p < ALPHA / treatments)
            .filter_map(|a| a.vs_control.map(|r| (a, r.effect)))
            .filter(|(_, effect)| *effect > 0.0)
            .max_by(|x, y| x.1.total_cmp(&y.1));
        match winner {
            Some((a, _)) => Verdict::Promote(a.name.clone()),
            None => Verdict::Continue("no treatment is significantly better yet".into()),
        }
    };
    Analysis {
        events: tallies.iter().map(|t| t.events).sum(),
        arms,
        srm_p,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(weights: &[u32]) -> ExperimentDef {
        ExperimentDef {
            min_sample: DEFAULT_MIN_SAMPLE,
            seed: "ttl-test".into(),
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Variant {
                    name: format!("v{i}"),
                    weight: *w,
                    params: "{}".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn assignment_is_pinned() {
        // Expected buckets computed by an independent Python FNV-1a implementation.
        assert_eq!(bucket("ttl-test", "user-1"), 8_318);
        assert_eq!(bucket("ttl-test", "user-2"), 107);
        assert_eq!(bucket("other-seed", "user-1"), 2_183);
        let d = def(&[50, 50]);
        assert_eq!(assign(&d, "user-1"), 1);
        assert_eq!(assign(&d, "user-2"), 0);
    }

    #[test]
    fn split_follows_weights() {
        let d = def(&[25, 75]);
        let n = 20_000;
        let ones = (0..n).filter(|i| assign(&d, &format!("u{i}")) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((0.73..0.77).contains(&share), "share {share}");
    }

    #[test]
    fn zero_weight_arm_gets_no_new_units() {
        let d = def(&[0, 1, 0]);
        assert!((0..1000).all(|i| assign(&d, &format!("u{i}")) == 1));
    }

    #[test]
    fn promotes_a_clear_winner_only_after_the_minimum_sample_and_halts_on_srm() {
        let mut d = def(&[50, 50]);
        d.min_sample = 500;
        let tally = |n: u64, rate: f64| ArmTally {
            assigned: n,
            events: n,
            successes: (n as f64 * rate) as u64,
        };
        let small = analyse(&d, &[tally(400, 0.30), tally(400, 0.45)], None);
        assert!(
            matches!(small.verdict, Verdict::Continue(_)),
            "{:?}",
            small.verdict
        );
        let big = analyse(&d, &[tally(2000, 0.30), tally(2000, 0.45)], Some(&small));
        assert_eq!(big.verdict, Verdict::Promote("v1".into()));
        let worse = analyse(&d, &[tally(2000, 0.45), tally(2000, 0.30)], None);
        assert!(
            matches!(worse.verdict, Verdict::Continue(_)),
            "a loser is never promoted"
        );
        let srm = analyse(
            &d,
            &[
                ArmTally {
                    assigned: 4500,
                    ..tally(4500, 0.3)
                },
                tally(5500, 0.4),
            ],
            None,
        );
        assert!(matches!(srm.verdict, Verdict::Halt(_)), "{:?}", srm.verdict);
    }

    #[test]
    fn validation_rejects_bad_definitions() {
        assert!(def(&[1]).validate().is_err());
        assert!(def(&[0, 0]).validate().is_err());
        assert!(def(&[1, 10_001]).validate().is_err());
        assert!(def(&[1, 1]).validate().is_ok());
    }
}
