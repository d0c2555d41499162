//! Experiment definitions: arms, metrics, targets, their validation, the arm parameters the
//! gateway applies, and the layout stored before guardrails existed.

use serde::{Deserialize, Serialize};

use super::LEGACY_METRIC;
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

    pub(crate) fn improves(&self, effect: f64) -> bool {
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
