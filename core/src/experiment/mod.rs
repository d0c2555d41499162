//! `Experiment`: deterministic cohort assignment, per-arm metric moments and the decision rule.
//!
//! **Assignment hash** (stable across versions; `tests::assignment_is_pinned` guards it):
//! `bucket = fnv1a64(seed ++ 0x1F ++ unit) % 10_000`, then the arm whose cumulative share of the
//! total weight (scaled to 10 000 basis points, rounded down, the last arm taking the remainder)
//! first exceeds `bucket`. The seed defaults to the experiment name. **Coverage** uses an
//! independent bucket, `fnv1a64(seed ++ "#coverage" ++ 0x1F ++ unit) % 10_000 < coverage`, so
//! changing the coverage never reshuffles arms.
//!
//! Assignments are sticky: the Durable Object stores each unit's arm the first time it is
//! assigned and always answers from storage afterwards, so changing weights or retiring an arm
//! never moves a unit already assigned to another arm.
//!
//! **Metrics.** Every arm keeps, per metric, the moments `n`, `Σx`, `Σx²` (a binary metric is
//! the special case x ∈ {0, 1}). The primary metric decides promotion; guardrail metrics can
//! only block it or roll a treatment back. Each metric says which direction is better.
//!
//! **Decision rule** ([`analyse`], run by the alarm at every look):
//! 1. Sample-ratio mismatch (χ², p < 0.001) → **halt**: the data cannot be trusted.
//! 2. A treatment with at least [`GUARDRAIL_MIN_EVENTS`] events (or `min_sample`, if smaller)
//!    in both arms whose running sequential p-value on a guardrail is below `α / treatments`
//!    with the effect in the worse direction → **roll back** that treatment.
//! 3. A treatment whose running sequential p-value on the primary metric is below
//!    `α / treatments` (Bonferroni), with the effect in the better direction, once it and the
//!    control each have `min_sample` events → **promote** (the largest improvement wins).
//! 4. Otherwise **continue**.
//!
//! The sequential p-value is the mSPRT always-valid p-value (normal mixture), and the rule keeps
//! its running minimum across looks, so analysing at every alarm does not inflate false
//! positives (see `core/tests/experiment_sim.rs`).

mod analysis;
mod assign;
mod def;
mod machine;
pub mod stats;
mod stored;
#[cfg(test)]
mod tests;

pub use analysis::{analyse, Analysis, ArmAnalysis, ArmData, MetricAnalysis, Moments, Verdict};
pub use assign::{assign, bucket, covered, select};
pub use def::{
    ArmParams, Better, ExperimentDef, LegacyDef, MetricDef, MetricKind, Target, Variant,
};
pub use machine::{Machine, MAX_VALUE};
pub use stored::{Change, Effects, Known, Stored, StoredDef, Writes, DECISIONS_SHOWN, DEF_LAYOUT};

/// In an outcome event, stands for the experiment's primary metric whatever its name (the events
/// API's `"success": true` shorthand).
pub const PRIMARY_ALIAS: &str = "@primary";
/// The primary metric of definitions stored before metrics were named (`success`).
pub const LEGACY_METRIC: &str = "success";
/// Default minimum sample per arm (see `core/tests/experiment_sim.rs` for the power it gives).
pub const DEFAULT_MIN_SAMPLE: u64 = 1_000;
/// Events both arms need before a guardrail can roll a treatment back (or `min_sample`, if
/// smaller): the normal approximation behind the tests needs a few dozen observations.
pub const GUARDRAIL_MIN_EVENTS: u64 = 100;
/// Significance level of the decision rule (split over the treatments, Bonferroni).
pub const ALPHA: f64 = 0.05;
/// Sample-ratio mismatch halts the experiment below this p-value.
pub const SRM_ALPHA: f64 = 0.001;
/// Mixing variance of the sequential test for binary metrics (effects of about ±3 points).
pub const TAU2: f64 = 0.0009;
/// Mixing standard deviation of the sequential test for continuous metrics, in units of the
/// pooled standard deviation (effects of about a tenth of a standard deviation).
pub const TAU_STD: f64 = 0.1;
