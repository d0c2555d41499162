//! The analysis: per-arm moments, the comparison with the control and the decision rule
//! ([`analyse`]; the rule is described in the module documentation of [`super`]).

use serde::{Deserialize, Serialize};

use super::stats;
use super::{
    ExperimentDef, MetricDef, MetricKind, ALPHA, GUARDRAIL_MIN_EVENTS, SRM_ALPHA, TAU2, TAU_STD,
};

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
