//! Typed configuration, parsed from wrangler `[vars]` (all strings; JSON where structured).
//!
//! Every value has a default so an empty environment is a working development setup. A value
//! that is present but malformed is an error naming the variable: the gateway refuses to run on
//! a configuration it does not understand rather than guessing.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::balancer::{validate_group, ProviderSpec};
use crate::experiment::{Better, ExperimentDef, MetricDef, MetricKind, Target, Variant};
use crate::rate_limit::policy::{Policy, PolicyJson};
use crate::validate;
use crate::GatewayError;

/// An experiment as written in the `EXPERIMENTS` variable and in `PUT /v1/experiments/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentVar {
    /// Hash seed (defaults to the experiment name).
    #[serde(default)]
    pub seed: Option<String>,
    /// Arms; the first is the control.
    pub variants: Vec<VariantVar>,
    /// Events per compared arm before a promotion (default 1000).
    #[serde(default)]
    pub min_sample: Option<u64>,
    /// Share of units in the experiment, 0 < coverage <= 1 (default 1).
    #[serde(default)]
    pub coverage: Option<f64>,
    /// The primary metric: a well-known name (`cache_hit`, `error`, `latency_ms`, `cost_usd`) or
    /// `{"name","kind":"binary|continuous","better":"higher|lower"}` (default `cache_hit`).
    #[serde(default)]
    pub primary: Option<MetricVar>,
    /// Guardrail metrics, in the same forms.
    #[serde(default)]
    pub guardrails: Vec<MetricVar>,
    /// The proxied traffic it applies to: `{"group":"search","path_prefix":"/title"}`.
    #[serde(default)]
    pub target: Option<TargetVar>,
}

/// An arm as written in JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantVar {
    /// Arm name.
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// Parameters (a JSON object).
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// Retired arms get no new units.
    #[serde(default)]
    pub retired: bool,
}

/// A metric as written in JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MetricVar {
    /// A well-known metric by name.
    Named(String),
    /// A custom metric.
    Custom {
        /// Name.
        name: String,
        /// `binary` or `continuous`.
        kind: String,
        /// `higher` or `lower`.
        better: String,
    },
}

impl MetricVar {
    fn into_def(self) -> Result<MetricDef, GatewayError> {
        let bad = |d: String| GatewayError::bad_request("invalid-experiment", d);
        match self {
            MetricVar::Named(n) => MetricDef::well_known(&n).ok_or_else(|| {
                bad(format!(
                    "unknown metric {n}: use cache_hit, error, latency_ms, cost_usd or an object with name, kind and better"
                ))
            }),
            MetricVar::Custom { name, kind, better } => Ok(MetricDef {
                name,
                kind: match kind.as_str() {
                    "binary" => MetricKind::Binary,
                    "continuous" => MetricKind::Continuous,
                    _ => return Err(bad("metric kind must be binary or continuous".into())),
                },
                better: match better.as_str() {
                    "higher" => Better::Higher,
                    "lower" => Better::Lower,
                    _ => return Err(bad("metric better must be higher or lower".into())),
                },
            }),
        }
    }
}

/// A target as written in JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetVar {
    /// Provider group.
    pub group: String,
    /// Path prefix (default `/`).
    #[serde(default)]
    pub path_prefix: Option<String>,
}

impl ExperimentVar {
    /// Converts to a validated definition for experiment `name`.
    pub fn into_def(self, name: &str) -> Result<ExperimentDef, GatewayError> {
        let coverage = match self.coverage {
            None => 10_000,
            Some(c) if c > 0.0 && c <= 1.0 => ((c * 10_000.0).round() as u32).max(1),
            Some(_) => {
                return Err(GatewayError::bad_request(
                    "invalid-experiment",
                    "coverage must be in (0, 1]",
                ))
            }
        };
        let def = ExperimentDef {
            min_sample: self
                .min_sample
                .unwrap_or(crate::experiment::DEFAULT_MIN_SAMPLE),
            seed: self.seed.unwrap_or_else(|| name.to_string()),
            variants: self
                .variants
                .into_iter()
                .map(|v| Variant {
                    name: v.name,
                    weight: v.weight,
                    params: serde_json::Value::Object(v.params.unwrap_or_default()).to_string(),
                    retired: v.retired,
                })
                .collect(),
            coverage,
            primary: self
                .primary
                .unwrap_or_else(|| MetricVar::Named("cache_hit".into()))
                .into_def()?,
            guardrails: self
                .guardrails
                .into_iter()
                .map(MetricVar::into_def)
                .collect::<Result<_, _>>()?,
            target: self.target.map(|t| Target {
                group: t.group,
                path_prefix: t.path_prefix.unwrap_or_else(|| "/".into()),
            }),
        };
        def.validate()?;
        Ok(def)
    }
}

/// The gateway's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ENVIRONMENT`: `development` or `production`.
    pub environment: String,
    /// `MAX_BODY_BYTES`: largest accepted request body (413 above).
    pub max_body_bytes: usize,
    /// `RATE_LIMIT_SHARDS`: rate-limiter objects keys are spread over.
    pub rate_limit_shards: u32,
    /// `CACHE_SHARDS`: cache objects keys are spread over.
    pub cache_shards: u32,
    /// `AGGREGATOR_SHARDS`: metric-ingest objects.
    pub aggregator_shards: u32,
    /// `CACHE_MAX_ENTRIES` per shard.
    pub cache_max_entries: usize,
    /// `CACHE_MAX_BYTES` per shard.
    pub cache_max_bytes: u64,
    /// `CACHE_DEFAULT_TTL_S`.
    pub cache_default_ttl_s: u64,
    /// `CACHE_NEGATIVE_TTL_S`: TTL of negative entries the proxy stores for 404/410.
    pub cache_negative_ttl_s: u64,
    /// `CACHE_FILL_LEASE_MS`: how long a fill lease lasts (a crashed filler blocks no longer).
    pub cache_fill_lease_ms: u64,
    /// `CACHE_FILL_WAIT_MS`: how long a coalesced caller waits for another caller's fill.
    pub cache_fill_wait_ms: u64,
    /// `RATE_LIMIT_GC_INTERVAL_MS`: idle-bucket collection period.
    pub rate_limit_gc_interval_ms: u64,
    /// `CACHE_SWEEP_INTERVAL_MS`: expiry sweep period (earlier when an entry expires sooner).
    pub cache_sweep_interval_ms: u64,
    /// `PROVIDER_PROBE_INTERVAL_MS`: active health-probe period.
    pub provider_probe_interval_ms: u64,
    /// `EXPERIMENT_ANALYSIS_INTERVAL_MS`.
    pub experiment_analysis_interval_ms: u64,
    /// `ROLLUP_INTERVAL_MS`: how often the root aggregator merges shards and evaluates alerts
    /// (and shards seal and prune).
    pub rollup_interval_ms: u64,
    /// `ROLLUP_BUCKET_MS`: fine bucket width (60000 = the 1-minute buckets kept 24 h; must divide
    /// an hour; the tests use 1000).
    pub rollup_bucket_ms: u64,
    /// `ROLLUP_SEAL_GRACE_MS`: how long after a bucket ends a shard still accepts its records.
    pub rollup_seal_grace_ms: u64,
    /// `ALERT_RULES`: JSON array of rules (absent: the defaults).
    pub alert_rules: Vec<crate::observe::alerts::Rule>,
    /// `ALERT_WEBHOOK_URL`: where firing/resolved notifications are POSTed (absent: none).
    pub alert_webhook_url: Option<String>,
    /// `ALERT_REPEAT_INTERVAL_MS`: re-notify a still-firing alert after this long (default 4 h).
    pub alert_repeat_interval_ms: u64,
    /// `ALERT_WEBHOOK_TIMEOUT_MS`: per delivery attempt; the alarm spends at most 3× this on
    /// deliveries per run.
    pub alert_webhook_timeout_ms: u64,
    /// `PLATFORM_PRICES`: JSON prices for the platform cost estimate.
    pub platform_prices: crate::observe::export::Prices,
    /// `RATE_LIMIT_POLICIES`: JSON `{"name": {"algorithm":..,"capacity":..,...}}`: the defaults;
    /// admin changes stored in the rate-limiter objects override them.
    pub rate_limit_policies: BTreeMap<String, Policy>,
    /// `RATE_LIMIT_CALLER_POLICY`: the policy the proxy path applies to callers.
    pub rate_limit_caller_policy: String,
    /// `PROVIDERS`: JSON `{"group": [{"name":..,"url":..,"weight":..}]}`.
    pub providers: BTreeMap<String, Vec<ProviderSpec>>,
    /// `EXPERIMENTS`: JSON `{"name": {"variants":[{"name":..,"weight":..,"params":{..}}]}}`.
    pub experiments: BTreeMap<String, ExperimentDef>,
    /// `PROXY_CACHE_QUERY`: JSON `{"group": ["param", ..]}`: a group whose proxy cache key keeps
    /// only these query parameters (absent: every parameter is part of the key).
    pub proxy_cache_query: BTreeMap<String, Vec<String>>,
    /// `PROXY_BUFFER_MAX_BYTES`: the largest upstream body the proxy buffers or caches (default
    /// 1 MiB, at most `CACHE_MAX_BYTES`); larger, unknown-length and event-stream bodies stream.
    pub proxy_buffer_max_bytes: usize,
    /// `AI_MODELS`: the OpenAI-compatible routes' models, each an ordered list of targets
    /// (`{"gpt-4o":[{"group":"openai"},{"group":"azure","model":"gpt-4o-eu"}]}`).
    pub ai_models: crate::ai::Models,
    /// `AI_DEFAULT_MAX_TOKENS`: the completion tokens reserved for a request that sets no
    /// `max_tokens` (default 256).
    pub ai_default_max_tokens: u64,
}

fn num<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, GatewayError> {
    match get(var) {
        None => Ok(default),
        Some(s) => match s.trim().parse::<T>() {
            Ok(v) if v >= min && v <= max => Ok(v),
            _ => Err(GatewayError::Internal(format!(
                "configuration: {var} must be a number in {min}..={max}, got {s:?}"
            ))),
        },
    }
}

fn json<T: serde::de::DeserializeOwned>(
    get: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<T, GatewayError> {
    let text = get(var).unwrap_or_else(|| default.to_string());
    serde_json::from_str(&text)
        .map_err(|e| GatewayError::Internal(format!("configuration: {var} is not valid: {e}")))
}

const DEFAULT_POLICIES: &str = r#"{"default":{"capacity":100,"refill":100,"period_ms":60000}}"#;

impl Config {
    /// Parses the configuration from a variable lookup (`env.var(name)` in the worker).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Config, GatewayError> {
        let raw: BTreeMap<String, PolicyJson> = json(get, "RATE_LIMIT_POLICIES", DEFAULT_POLICIES)?;
        let mut policies = BTreeMap::new();
        for (name, p) in raw {
            let policy = validate::name("policy", &name)
                .and_then(|_| p.into_policy())
                .map_err(|e| {
                    GatewayError::Internal(format!("configuration: policy {name}: {e}"))
                })?;
            policies.insert(name, policy);
        }
        let providers: BTreeMap<String, Vec<ProviderSpec>> = json(get, "PROVIDERS", "{}")?;
        for (group, specs) in &providers {
            validate::name("group", group)
                .and_then(|_| validate_group(specs))
                .map_err(|e| {
                    GatewayError::Internal(format!("configuration: group {group}: {e}"))
                })?;
        }
        let experiments_raw: BTreeMap<String, ExperimentVar> = json(get, "EXPERIMENTS", "{}")?;
        let mut experiments = BTreeMap::new();
        for (name, e) in experiments_raw {
            let def = validate::name("experiment", &name)
                .and_then(|_| e.into_def(&name))
                .map_err(|e| {
                    GatewayError::Internal(format!("configuration: experiment {name}: {e}"))
                })?;
            experiments.insert(name, def);
        }
        let proxy_cache_query: BTreeMap<String, Vec<String>> =
            json(get, "PROXY_CACHE_QUERY", "{}")?;
        for (group, params) in &proxy_cache_query {
            validate::name("group", group).map_err(|e| {
                GatewayError::Internal(format!("configuration: PROXY_CACHE_QUERY: {e}"))
            })?;
            if params.len() > 64 || params.iter().any(|p| p.is_empty() || p.len() > 256) {
                return Err(GatewayError::Internal(format!(
                    "configuration: PROXY_CACHE_QUERY: group {group} needs at most 64 parameter names of 1..=256 bytes"
                )));
            }
        }
        let ai_models: crate::ai::Models = json(get, "AI_MODELS", "{}")?;
        crate::ai::validate_models(&ai_models)
            .map_err(|e| GatewayError::Internal(format!("configuration: AI_MODELS: {e}")))?;
        let cache_max_bytes: u64 = num(get, "CACHE_MAX_BYTES", 4 << 20, 1024, 64 << 20)?;
        let proxy_buffer_max_bytes: usize =
            num(get, "PROXY_BUFFER_MAX_BYTES", 1 << 20, 0, 64 << 20)?;
        Ok(Config {
            ai_models,
            ai_default_max_tokens: num(get, "AI_DEFAULT_MAX_TOKENS", 256, 1, 1_000_000)?,
            proxy_cache_query,
            proxy_buffer_max_bytes: proxy_buffer_max_bytes
                .min(usize::try_from(cache_max_bytes).unwrap_or(usize::MAX)),
            environment: get("ENVIRONMENT").unwrap_or_else(|| "development".into()),
            max_body_bytes: num(get, "MAX_BODY_BYTES", 1 << 20, 1024, 100 << 20)?,
            rate_limit_shards: num(get, "RATE_LIMIT_SHARDS", 32, 1, 1_000)?,
            rate_limit_caller_policy: get("RATE_LIMIT_CALLER_POLICY")
                .unwrap_or_else(|| "default".into()),
            cache_shards: num(get, "CACHE_SHARDS", 16, 1, 65_536)?,
            aggregator_shards: num(get, "AGGREGATOR_SHARDS", 4, 1, 256)?,
            cache_max_entries: num(get, "CACHE_MAX_ENTRIES", 10_000, 1, 10_000_000)?,
            cache_max_bytes,
            cache_default_ttl_s: num(get, "CACHE_DEFAULT_TTL_S", 300, 1, 31_536_000)?,
            cache_negative_ttl_s: num(get, "CACHE_NEGATIVE_TTL_S", 30, 0, 86_400)?,
            cache_fill_lease_ms: num(get, "CACHE_FILL_LEASE_MS", 10_000, 100, 120_000)?,
            cache_fill_wait_ms: num(get, "CACHE_FILL_WAIT_MS", 5_000, 0, 60_000)?,
            rate_limit_gc_interval_ms: num(
                get,
                "RATE_LIMIT_GC_INTERVAL_MS",
                300_000,
                100,
                86_400_000,
            )?,
            cache_sweep_interval_ms: num(get, "CACHE_SWEEP_INTERVAL_MS", 60_000, 100, 86_400_000)?,
            provider_probe_interval_ms: num(
                get,
                "PROVIDER_PROBE_INTERVAL_MS",
                15_000,
                100,
                86_400_000,
            )?,
            experiment_analysis_interval_ms: num(
                get,
                "EXPERIMENT_ANALYSIS_INTERVAL_MS",
                60_000,
                100,
                86_400_000,
            )?,
            rollup_interval_ms: num(get, "ROLLUP_INTERVAL_MS", 60_000, 100, 86_400_000)?,
            rollup_bucket_ms: {
                let b: u64 = num(get, "ROLLUP_BUCKET_MS", 60_000, 1_000, 3_600_000)?;
                if 3_600_000 % b != 0 {
                    return Err(GatewayError::Internal(
                        "configuration: ROLLUP_BUCKET_MS must divide an hour (3600000)".into(),
                    ));
                }
                b
            },
            rollup_seal_grace_ms: num(get, "ROLLUP_SEAL_GRACE_MS", 5_000, 0, 600_000)?,
            alert_rules: crate::observe::alerts::parse_rules(get("ALERT_RULES").as_deref())
                .map_err(|e| GatewayError::Internal(format!("configuration: ALERT_RULES: {e}")))?,
            alert_webhook_url: match get("ALERT_WEBHOOK_URL").filter(|u| !u.trim().is_empty()) {
                None => None,
                Some(u)
                    if (u.starts_with("https://") || u.starts_with("http://"))
                        && u.len() <= 2048 =>
                {
                    Some(u)
                }
                Some(_) => {
                    return Err(GatewayError::Internal(
                        "configuration: ALERT_WEBHOOK_URL must be an http(s) URL".into(),
                    ))
                }
            },
            alert_repeat_interval_ms: num(
                get,
                "ALERT_REPEAT_INTERVAL_MS",
                4 * 3_600_000,
                1_000,
                7 * 86_400_000,
            )?,
            alert_webhook_timeout_ms: num(get, "ALERT_WEBHOOK_TIMEOUT_MS", 2_000, 100, 30_000)?,
            platform_prices: crate::observe::export::Prices::parse(
                get("PLATFORM_PRICES").as_deref(),
            )?,
            rate_limit_policies: policies,
            providers,
            experiments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_environment_gives_working_defaults() {
        let c = Config::from_lookup(&|_| None).unwrap();
        assert_eq!(c.cache_shards, 16);
        assert_eq!(
            c.rate_limit_policies["default"].to_json().capacity,
            Some(100),
            "a policy named default exists out of the box"
        );
        assert!(c.providers.is_empty());
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let e =
            Config::from_lookup(&|k| (k == "CACHE_SHARDS").then(|| "0".to_string())).unwrap_err();
        assert!(e.to_string().contains("CACHE_SHARDS"));
        let e = Config::from_lookup(&|k| (k == "PROVIDERS").then(|| "{\"g\":[]}".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("group g"));
        let e = Config::from_lookup(&|k| (k == "ROLLUP_BUCKET_MS").then(|| "7000".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("ROLLUP_BUCKET_MS"));
        let e = Config::from_lookup(&|k| (k == "ALERT_WEBHOOK_URL").then(|| "ftp://x".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("ALERT_WEBHOOK_URL"));
        let e =
            Config::from_lookup(&|k| (k == "ALERT_RULES").then(|| "[{}]".to_string())).unwrap_err();
        assert!(e.to_string().contains("ALERT_RULES"));
    }

    #[test]
    fn parses_structured_variables() {
        let c = Config::from_lookup(&|k| match k {
            "PROVIDERS" => Some(r#"{"llm":[{"name":"a","url":"http://127.0.0.1:9/a","weight":2}]}"#.into()),
            "EXPERIMENTS" => Some(r#"{"ttl":{"variants":[{"name":"control","weight":50,"params":{"cache_ttl_s":86400}},{"name":"treatment","weight":50}]}}"#.into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.providers["llm"][0].weight, 2);
        assert_eq!(c.providers["llm"][0].health_path, "/health");
        assert_eq!(c.experiments["ttl"].seed, "ttl");
        assert_eq!(
            c.experiments["ttl"].variants[0].params,
            r#"{"cache_ttl_s":86400}"#
        );
    }
}
