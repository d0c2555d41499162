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
    /// Retired (by an admin or a rollback): no new units, and units already assigned to it are
    /// served the control's parameters and no longer counted.
    pub retired: bool,
}

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricKind {
    /// 0 or 1 per event (a cache hit, an error): two-proportion tests.
    Binary,
    /// Any finite number (latency, cost): Welch's t-test.
    Continuous,
}

/// Which direction of a metric is an improvement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Better {
    /// Larger is better (hit rate, conversion).
    Higher,
    /// Smaller is better (latency, cost, errors).
    Lower,
}

/// A metric an experiment tracks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricDef {
    /// Metric name as sent in outcome events (`cache_hit`, `latency_ms`, `error`, `cost_usd`, ...).
    pub name: String,
    /// Binary or continuous.
    pub kind: MetricKind,
    /// Which direction is better.
    pub better: Better,
}

impl MetricDef {
    /// A metric, with the defaults of the well-known names the proxy records: `cache_hit`
    /// (binary, higher), `error` (binary, lower), `latency_ms` and `cost_usd` (continuous, lower).
    pub fn well_known(name: &str) -> Option<MetricDef> {
        let (kind, better) = match name {
            "cache_hit" => (MetricKind::Binary, Better::Higher),
            "error" => (MetricKind::Binary, Better::Lower),
            "latency_ms" | "cost_usd" => (MetricKind::Continuous, Better::Lower),
            _ => return None,
        };
        Some(MetricDef {
            name: name.into(),
            kind,
            better,
        })
    }

    fn improves(&self, effect: f64) -> bool {
        match self.better {
            Better::Higher => effect > 0.0,
            Better::Lower => effect < 0.0,
        }
    }
}

/// Which proxied traffic an experiment applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Provider group (`/v1/proxy/{group}/...`).
    pub group: String,
    /// Path prefix within the group, starting with `/` (`/` for every path).
    pub path_prefix: String,
}

impl Target {
    /// Whether a proxied request to `group` and `path` (with a leading `/`) is in scope.
    pub fn matches(&self, group: &str, path: &str) -> bool {
        self.group == group && path.starts_with(&self.path_prefix)
    }
}

/// An experiment definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentDef {
    /// Hash seed; changing it re-randomises new units only.
    pub seed: String,
    /// The arms; the first is the control.
    pub variants: Vec<Variant>,
    /// Outcome events each compared arm needs before a promotion (the minimum sample).
    pub min_sample: u64,
    /// Share of units in the experiment, in basis points (10 000 = everyone). Units outside it
    /// get the control's parameters and are not counted.
    pub coverage: u32,
    /// The metric that decides promotion.
    pub primary: MetricDef,
    /// Metrics that must not get significantly worse (a regression rolls the treatment back).
    pub guardrails: Vec<MetricDef>,
    /// The proxied traffic the experiment applies to (none: assignment API only).
    pub target: Option<Target>,
}

/// The definition layout stored before guardrails existed (decoded on load, then upgraded).
#[derive(Debug, Clone, Deserialize)]
pub struct LegacyDef {
    seed: String,
    variants: Vec<LegacyVariant>,
    min_sample: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct LegacyVariant {
    name: String,
    weight: u32,
    params: String,
}

impl From<LegacyDef> for ExperimentDef {
    fn from(l: LegacyDef) -> Self {
        ExperimentDef {
            seed: l.seed,
            variants: l
                .variants
                .into_iter()
                .map(|v| Variant {
                    name: v.name,
                    weight: v.weight,
                    params: v.params,
                    retired: false,
                })
                .collect(),
            min_sample: l.min_sample,
            coverage: 10_000,
            primary: MetricDef {
                name: LEGACY_METRIC.into(),
                kind: MetricKind::Binary,
                better: Better::Higher,
            },
            guardrails: vec![],
            target: None,
        }
    }
}

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

impl ExperimentDef {
    /// The tracked metrics: the primary first, then the guardrails.
    pub fn metrics(&self) -> impl Iterator<Item = &MetricDef> {
        std::iter::once(&self.primary).chain(self.guardrails.iter())
    }

    /// Validates: 2..=8 arms, unique names, weights summing to more than zero among arms not
    /// retired, a control that is not retired, distinct metric names.
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
        if !(1..=10_000).contains(&self.coverage) {
            return bad("coverage must be 1..=10000 basis points".into());
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
            ArmParams::parse(&v.params)?;
            if !v.retired {
                total += u64::from(v.weight);
            }
        }
        if total == 0 {
            return bad("at least one variant that is not retired needs a positive weight".into());
        }
        if self.variants.first().is_some_and(|c| c.retired) {
            return bad("the control (first variant) cannot be retired".into());
        }
        if self.guardrails.len() > 4 {
            return bad("at most 4 guardrail metrics".into());
        }
        let metrics: Vec<&MetricDef> = self.metrics().collect();
        for (i, m) in metrics.iter().enumerate() {
            validate::name("metric name", &m.name)?;
            if metrics[..i].iter().any(|o| o.name == m.name) {
                return bad(format!("metric {} is listed twice", m.name));
            }
        }
        if let Some(t) = &self.target {
            validate::name("target group", &t.group)?;
            if !t.path_prefix.starts_with('/') || t.path_prefix.len() > 256 {
                return bad("target path_prefix must start with / (at most 256 bytes)".into());
            }
        }
        Ok(())
    }

    /// The index of a variant by name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.name == name)
    }
}

/// The parameters of an arm the gateway itself applies on the proxy path. Other keys are
/// passed through to assignment callers untouched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArmParams {
    /// `cache_ttl_s`: the TTL of cache fills (replaces `CACHE_DEFAULT_TTL_S`; an upstream's own
    /// `max-age` still wins).
    pub cache_ttl_s: Option<u64>,
    /// `strategy`: the balancing strategy for the request.
    pub strategy: Option<crate::balancer::Strategy>,
    /// `provider`: the preferred provider (used while it is healthy).
    pub provider: Option<String>,
}

impl ArmParams {
    /// Parses and validates an arm's parameters (a JSON object text).
    pub fn parse(params: &str) -> Result<ArmParams, GatewayError> {
        let bad = |d: &str| GatewayError::bad_request("invalid-experiment", d.to_string());
        let value: serde_json::Value = serde_json::from_str(params)
            .map_err(|_| bad("variant params must be a JSON object"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("variant params must be a JSON object"))?;
        let mut out = ArmParams::default();
        if let Some(v) = obj.get("cache_ttl_s") {
            out.cache_ttl_s = Some(
                v.as_u64()
                    .filter(|t| (1..=31_536_000).contains(t))
                    .ok_or_else(|| bad("cache_ttl_s must be an integer in 1..=31536000"))?,
            );
        }
        if let Some(v) = obj.get("strategy") {
            let name = v.as_str().unwrap_or_default();
            let strategy = crate::balancer::Strategy::from_name(name);
            if strategy.name() != name {
                return Err(bad("strategy must be weighted, least_latency, p2c or cost"));
            }
            out.strategy = Some(strategy);
        }
        if let Some(v) = obj.get("provider") {
            let name = v.as_str().ok_or_else(|| bad("provider must be a name"))?;
            validate::name("provider", name)?;
            out.provider = Some(name.to_string());
        }
        Ok(out)
    }

    /// The balancer preference these parameters express.
    pub fn preference(&self) -> crate::balancer::Preference {
        crate::balancer::Preference {
            provider: self.provider.clone(),
            strategy: self.strategy,
        }
    }
}

/// The experiment that applies to a proxied request: among `targets`, the one with the longest
/// matching path prefix (ties: the first by name). At most one experiment applies per request,
/// so overlapping experiments cannot confound each other.
pub fn select<'a>(targets: &'a [(String, Target)], group: &str, path: &str) -> Option<&'a str> {
    targets
        .iter()
        .filter(|(_, t)| t.matches(group, path))
        .max_by(|a, b| {
            a.1.path_prefix
                .len()
                .cmp(&b.1.path_prefix.len())
                .then_with(|| b.0.cmp(&a.0))
        })
        .map(|(n, _)| n.as_str())
}

fn hash_bucket(parts: &[&[u8]]) -> u32 {
    let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            bytes.push(0x1f);
        }
        bytes.extend_from_slice(p);
    }
    (fnv1a64(&bytes) % 10_000) as u32
}

/// The bucket in `0..10_000` a unit falls into for `seed`.
pub fn bucket(seed: &str, unit: &str) -> u32 {
    hash_bucket(&[seed.as_bytes(), unit.as_bytes()])
}

/// Whether a unit is inside the experiment's coverage.
pub fn covered(def: &ExperimentDef, unit: &str) -> bool {
    def.coverage >= 10_000
        || hash_bucket(&[format!("{}#coverage", def.seed).as_bytes(), unit.as_bytes()])
            < def.coverage
}

/// The arm index for a unit that has no stored assignment yet (retired arms get nobody).
pub fn assign(def: &ExperimentDef, unit: &str) -> usize {
    let b = u64::from(bucket(&def.seed, unit));
    let weight = |v: &Variant| if v.retired { 0 } else { u64::from(v.weight) };
    let total: u64 = def.variants.iter().map(weight).sum::<u64>().max(1);
    let mut cumulative = 0u64;
    let last_weighted = def
        .variants
        .iter()
        .rposition(|v| weight(v) > 0)
        .unwrap_or(0);
    for (i, v) in def.variants.iter().enumerate() {
        cumulative += weight(v);
        if weight(v) > 0 && b < cumulative * 10_000 / total {
            return i;
        }
    }
    last_weighted
}

/// Running moments of one metric in one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Observations.
    pub n: u64,
    /// Sum of values.
    pub sum: f64,
    /// Sum of squared values.
    pub sum_sq: f64,
}

impl Moments {
    /// Adds one observation.
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    /// The mean, when there are observations.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The unbiased sample variance (0 below two observations).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }
}

/// One arm's data: units assigned and the moments of each metric (in `ExperimentDef::metrics`
/// order: the primary first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmData {
    /// Units assigned.
    pub assigned: u64,
    /// Moments per metric.
    pub metrics: Vec<Moments>,
}

impl ArmData {
    /// The moments of metric `i` (empty when absent).
    pub fn metric(&self, i: usize) -> Moments {
        self.metrics.get(i).copied().unwrap_or_default()
    }
}

/// One metric of one arm, compared with the control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricAnalysis {
    /// Metric name.
    pub metric: String,
    /// Observations.
    pub n: u64,
    /// Mean (the rate, for a binary metric).
    pub mean: Option<f64>,
    /// 95 % interval of the mean (normal approximation).
    pub ci: Option<(f64, f64)>,
    /// Fixed-horizon test against the control (two-proportion or Welch), for reporting.
    pub vs_control: Option<stats::TestResult>,
    /// Running minimum of the always-valid (mSPRT) p-value over every analysis so far.
    pub sequential_p: f64,
}

/// One arm's analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmAnalysis {
    /// Arm name.
    pub name: String,
    /// Units assigned.
    pub assigned: u64,
    /// Retired arms are reported but never promoted.
    pub retired: bool,
    /// The primary metric first, then the guardrails.
    pub metrics: Vec<MetricAnalysis>,
}

/// What the analysis concluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Verdict {
    /// Keep collecting.
    Continue(String),
    /// Promote this arm.
    Promote(String),
    /// Roll this arm back (a guardrail got significantly worse); the reason.
    Rollback(String, String),
    /// Stop: the data cannot be trusted (sample-ratio mismatch).
    Halt(String),
}

/// A snapshot computed by the analysis alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Primary-metric events analysed.
    pub events: u64,
    /// Per arm, the control first.
    pub arms: Vec<ArmAnalysis>,
    /// Sample-ratio-mismatch p-value of the assignments against the weights.
    pub srm_p: Option<f64>,
    /// The decision so far.
    pub verdict: Verdict,
}

fn compare(m: &MetricDef, c: Moments, t: Moments) -> (Option<stats::TestResult>, f64) {
    match m.kind {
        MetricKind::Binary => {
            let s = |x: Moments| x.sum.round().max(0.0) as u64;
            (
                stats::two_proportion(s(c), c.n, s(t), t.n),
                stats::msprt_p_value(s(c), c.n, s(t), t.n, TAU2),
            )
        }
        MetricKind::Continuous => {
            let (Some(mc), Some(mt)) = (c.mean(), t.mean()) else {
                return (None, 1.0);
            };
            let (vc, vt) = (c.variance(), t.variance());
            if c.n < 2 || t.n < 2 {
                return (None, 1.0);
            }
            let pooled = (vc + vt) / 2.0;
            let v = vc / c.n as f64 + vt / t.n as f64;
            (
                stats::welch(mc, vc, c.n, mt, vt, t.n),
                stats::msprt_normal(mt - mc, v, TAU_STD * TAU_STD * pooled),
            )
        }
    }
}

fn mean_ci(m: &MetricDef, x: Moments) -> Option<(f64, f64)> {
    let mean = x.mean()?;
    let var = match m.kind {
        MetricKind::Binary => mean * (1.0 - mean),
        MetricKind::Continuous => x.variance(),
    };
    let half = stats::normal_quantile(0.975) * (var / x.n as f64).sqrt();
    Some((mean - half, mean + half))
}

/// Analyses the arms' data. `previous` carries the running minima of the sequential p-values,
/// so repeated looks never lose evidence and never inflate false positives. See the module
/// documentation for the rule.
pub fn analyse(def: &ExperimentDef, data: &[ArmData], previous: Option<&Analysis>) -> Analysis {
    let d = |i: usize| data.get(i).cloned().unwrap_or_default();
    let control = d(0);
    let metric_defs: Vec<&MetricDef> = def.metrics().collect();
    let arms: Vec<ArmAnalysis> = def
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let a = d(i);
            let prev_arm = previous.and_then(|p| p.arms.iter().find(|x| x.name == v.name));
            let metrics = metric_defs
                .iter()
                .enumerate()
                .map(|(k, m)| {
                    let x = a.metric(k);
                    let (vs_control, p) = if i == 0 {
                        (None, 1.0)
                    } else {
                        compare(m, control.metric(k), x)
                    };
                    let prev = prev_arm
                        .and_then(|pa| pa.metrics.iter().find(|pm| pm.metric == m.name))
                        .map_or(1.0, |pm| pm.sequential_p);
                    MetricAnalysis {
                        metric: m.name.clone(),
                        n: x.n,
                        mean: x.mean(),
                        ci: mean_ci(m, x),
                        vs_control,
                        sequential_p: p.min(prev),
                    }
                })
                .collect();
            ArmAnalysis {
                name: v.name.clone(),
                assigned: a.assigned,
                retired: v.retired,
                metrics,
            }
        })
        .collect();
    let weighted: Vec<(u64, f64)> = def
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.weight > 0 && !v.retired)
        .map(|(i, v)| (d(i).assigned, f64::from(v.weight)))
        .collect();
    let srm_p = stats::srm_p_value(
        &weighted.iter().map(|w| w.0).collect::<Vec<_>>(),
        &weighted.iter().map(|w| w.1).collect::<Vec<_>>(),
    );
    let active: Vec<&ArmAnalysis> = arms.iter().skip(1).filter(|a| !a.retired).collect();
    let threshold = ALPHA / active.len().max(1) as f64;
    let control_n = control.metric(0).n;
    let guard_floor = GUARDRAIL_MIN_EVENTS.min(def.min_sample);
    let regression = active.iter().find_map(|a| {
        metric_defs.iter().enumerate().skip(1).find_map(|(k, m)| {
            let ma = a.metrics.get(k)?;
            let r = ma.vs_control?;
            let enough = ma.n >= guard_floor && control.metric(k).n >= guard_floor;
            (enough && ma.sequential_p < threshold && !m.improves(r.effect) && r.effect != 0.0)
                .then(|| {
                    (
                        a.name.clone(),
                        format!(
                            "guardrail {} regressed by {:+.4} (sequential p = {:.2e})",
                            m.name, r.effect, ma.sequential_p
                        ),
                    )
                })
        })
    });
    let verdict = if let Some(p) = srm_p.filter(|p| *p < SRM_ALPHA) {
        Verdict::Halt(format!("sample-ratio mismatch (p = {p:.2e})"))
    } else if let Some((arm, reason)) = regression {
        Verdict::Rollback(arm, reason)
    } else if control_n < def.min_sample {
        Verdict::Continue(format!(
            "control has {control_n} of {} events",
            def.min_sample
        ))
    } else {
        let winner = active
            .iter()
            .filter_map(|a| {
                let m = a.metrics.first()?;
                let r = m.vs_control?;
                (m.n >= def.min_sample
                    && m.sequential_p < threshold
                    && def.primary.improves(r.effect))
                .then_some((a, r.effect.abs()))
            })
            .max_by(|x, y| x.1.total_cmp(&y.1));
        match winner {
            Some((a, _)) => Verdict::Promote(a.name.clone()),
            None => Verdict::Continue("no treatment is significantly better yet".into()),
        }
    };
    Analysis {
        events: data.iter().map(|a| a.metric(0).n).sum(),
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
                    retired: false,
                })
                .collect(),
            coverage: 10_000,
            primary: MetricDef::well_known("cache_hit").unwrap(),
            guardrails: vec![MetricDef::well_known("latency_ms").unwrap()],
            target: None,
        }
    }

    /// Arm data with a binary primary at `rate` over `n` events and a latency guardrail with the
    /// given mean and a spread of ±`spread` (half the events each side).
    fn arm(n: u64, rate: f64, latency: f64, spread: f64) -> ArmData {
        let mut primary = Moments::default();
        let mut guard = Moments::default();
        let hits = (n as f64 * rate).round() as u64;
        for i in 0..n {
            primary.add(if i < hits { 1.0 } else { 0.0 });
            guard.add(latency + if i % 2 == 0 { spread } else { -spread });
        }
        ArmData {
            assigned: n,
            metrics: vec![primary, guard],
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
    fn zero_weight_and_retired_arms_get_no_new_units() {
        let d = def(&[0, 1, 0]);
        assert!((0..1000).all(|i| assign(&d, &format!("u{i}")) == 1));
        let mut d = def(&[1, 1, 1]);
        d.variants[2].retired = true;
        let counts = (0..3000).fold([0; 3], |mut c, i| {
            c[assign(&d, &format!("u{i}"))] += 1;
            c
        });
        assert_eq!(counts[2], 0);
        assert!(counts[0] > 1300 && counts[1] > 1300, "{counts:?}");
    }

    #[test]
    fn coverage_is_independent_of_the_arm_split() {
        let mut d = def(&[50, 50]);
        d.coverage = 2_500;
        let n = 20_000;
        let inside: Vec<String> = (0..n)
            .map(|i| format!("u{i}"))
            .filter(|u| covered(&d, u))
            .collect();
        let share = inside.len() as f64 / n as f64;
        assert!((0.23..0.27).contains(&share), "coverage share {share}");
        let treated = inside.iter().filter(|u| assign(&d, u) == 1).count();
        let split = treated as f64 / inside.len() as f64;
        assert!(
            (0.46..0.54).contains(&split),
            "split inside coverage {split}"
        );
        d.coverage = 10_000;
        assert!((0..100).all(|i| covered(&d, &format!("u{i}"))));
    }

    #[test]
    fn promotes_a_clear_winner_only_after_the_minimum_sample_and_halts_on_srm() {
        let mut d = def(&[50, 50]);
        d.min_sample = 500;
        let small = analyse(
            &d,
            &[arm(400, 0.30, 100.0, 10.0), arm(400, 0.45, 100.0, 10.0)],
            None,
        );
        assert!(
            matches!(small.verdict, Verdict::Continue(_)),
            "{:?}",
            small.verdict
        );
        let big = analyse(
            &d,
            &[arm(2000, 0.30, 100.0, 10.0), arm(2000, 0.45, 100.0, 10.0)],
            Some(&small),
        );
        assert_eq!(big.verdict, Verdict::Promote("v1".into()));
        let worse = analyse(
            &d,
            &[arm(2000, 0.45, 100.0, 10.0), arm(2000, 0.30, 100.0, 10.0)],
            None,
        );
        assert!(
            matches!(worse.verdict, Verdict::Continue(_)),
            "a loser is never promoted"
        );
        let mut skewed = arm(4500, 0.3, 100.0, 10.0);
        skewed.assigned = 4500;
        let srm = analyse(&d, &[skewed, arm(5500, 0.4, 100.0, 10.0)], None);
        assert!(matches!(srm.verdict, Verdict::Halt(_)), "{:?}", srm.verdict);
    }

    #[test]
    fn a_guardrail_regression_rolls_back_even_a_primary_winner() {
        let mut d = def(&[50, 50]);
        d.min_sample = 500;
        // Better hit rate, but latency 100 → 130 ms: rolled back, not promoted.
        let a = analyse(
            &d,
            &[arm(2000, 0.30, 100.0, 20.0), arm(2000, 0.45, 130.0, 20.0)],
            None,
        );
        match &a.verdict {
            Verdict::Rollback(arm, reason) => {
                assert_eq!(arm, "v1");
                assert!(reason.contains("latency_ms"), "{reason}");
            }
            other => panic!("expected a rollback, got {other:?}"),
        }
        // A guardrail that improves never rolls back.
        let b = analyse(
            &d,
            &[arm(2000, 0.30, 130.0, 20.0), arm(2000, 0.45, 100.0, 20.0)],
            None,
        );
        assert_eq!(b.verdict, Verdict::Promote("v1".into()));
        // Retired arms are neither rolled back again nor promoted.
        d.variants.push(Variant {
            name: "v2".into(),
            weight: 50,
            params: "{}".into(),
            retired: false,
        });
        d.variants[1].retired = true;
        let c = analyse(
            &d,
            &[
                arm(2000, 0.30, 100.0, 20.0),
                arm(2000, 0.45, 130.0, 20.0),
                arm(2000, 0.30, 100.0, 20.0),
            ],
            None,
        );
        assert!(matches!(c.verdict, Verdict::Continue(_)), "{:?}", c.verdict);
    }

    #[test]
    fn continuous_primary_lower_is_better() {
        let mut d = def(&[50, 50]);
        d.min_sample = 200;
        d.primary = MetricDef::well_known("latency_ms").unwrap();
        d.guardrails = vec![MetricDef::well_known("error").unwrap()];
        let mk = |lat: f64| {
            let mut x = arm(1000, 0.0, lat, 30.0);
            x.metrics.swap(0, 1);
            x
        };
        let a = analyse(&d, &[mk(120.0), mk(100.0)], None);
        assert_eq!(a.verdict, Verdict::Promote("v1".into()));
        let r = a.arms[1].metrics[0].vs_control.unwrap();
        assert!((r.effect + 20.0).abs() < 1e-9, "{r:?}");
        let slower = analyse(&d, &[mk(100.0), mk(120.0)], None);
        assert!(matches!(slower.verdict, Verdict::Continue(_)));
    }

    #[test]
    fn arm_params_are_parsed_and_validated() {
        let p = ArmParams::parse(
            r#"{"cache_ttl_s":86400,"strategy":"least_latency","provider":"beta","note":"x"}"#,
        )
        .unwrap();
        assert_eq!(p.cache_ttl_s, Some(86_400));
        assert_eq!(p.strategy, Some(crate::balancer::Strategy::LeastLatency));
        assert_eq!(p.provider.as_deref(), Some("beta"));
        assert_eq!(ArmParams::parse("{}").unwrap(), ArmParams::default());
        for bad in [
            r#"{"cache_ttl_s":0}"#,
            r#"{"cache_ttl_s":"1"}"#,
            r#"{"strategy":"fastest"}"#,
            r#"{"provider":"a b"}"#,
            "[]",
            "nope",
        ] {
            assert!(ArmParams::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_most_specific_target_applies() {
        let t = |n: &str, g: &str, p: &str| {
            (
                n.to_string(),
                Target {
                    group: g.into(),
                    path_prefix: p.into(),
                },
            )
        };
        let targets = vec![
            t("b-all", "search", "/"),
            t("a-title", "search", "/title"),
            t("c-other", "llm", "/"),
        ];
        assert_eq!(select(&targets, "search", "/title/42"), Some("a-title"));
        assert_eq!(select(&targets, "search", "/people"), Some("b-all"));
        assert_eq!(select(&targets, "llm", "/x"), Some("c-other"));
        assert_eq!(select(&targets, "other", "/x"), None);
        let tie = vec![t("z", "g", "/"), t("a", "g", "/")];
        assert_eq!(select(&tie, "g", "/"), Some("a"));
    }

    #[test]
    fn moments_give_mean_and_unbiased_variance() {
        let mut m = Moments::default();
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            m.add(x);
        }
        assert_eq!(m.mean(), Some(5.0));
        assert!((m.variance() - 32.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn validation_rejects_bad_definitions() {
        assert!(def(&[1]).validate().is_err());
        assert!(def(&[0, 0]).validate().is_err());
        assert!(def(&[1, 10_001]).validate().is_err());
        assert!(def(&[1, 1]).validate().is_ok());
        let mut d = def(&[1, 1]);
        d.variants[0].retired = true;
        assert!(d.validate().is_err(), "the control cannot be retired");
        let mut d = def(&[1, 1]);
        d.guardrails
            .push(MetricDef::well_known("cache_hit").unwrap());
        assert!(d.validate().is_err(), "duplicate metric");
        let mut d = def(&[1, 1]);
        d.coverage = 0;
        assert!(d.validate().is_err());
        let mut d = def(&[1, 1]);
        d.target = Some(Target {
            group: "search".into(),
            path_prefix: "title".into(),
        });
        assert!(d.validate().is_err(), "prefix must start with /");
    }
}
