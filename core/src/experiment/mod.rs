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
}

impl ExperimentDef {
    /// Validates: 2..=8 arms, unique names, weights summing to more than zero.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |d: String| Err(GatewayError::bad_request("invalid-experiment", d));
        if !(2..=8).contains(&self.variants.len()) {
            return bad("an experiment needs 2 to 8 variants".into());
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

/// A snapshot computed by the analysis alarm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Per arm: (name, success rate in 0..=1 or None without events).
    pub rates: Vec<(String, Option<f64>)>,
    /// Total events analysed.
    pub events: u64,
}

/// Computes the per-arm success rates.
pub fn analyse(def: &ExperimentDef, tallies: &[ArmTally]) -> Analysis {
    let rates = def
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = tallies.get(i).copied().unwrap_or_default();
            let rate = (t.events > 0).then(|| t.successes as f64 / t.events as f64);
            (v.name.clone(), rate)
        })
        .collect();
    Analysis {
        rates,
        events: tallies.iter().map(|t| t.events).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(weights: &[u32]) -> ExperimentDef {
        ExperimentDef {
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
    fn validation_rejects_bad_definitions() {
        assert!(def(&[1]).validate().is_err());
        assert!(def(&[0, 0]).validate().is_err());
        assert!(def(&[1, 10_001]).validate().is_err());
        assert!(def(&[1, 1]).validate().is_ok());
    }
}
