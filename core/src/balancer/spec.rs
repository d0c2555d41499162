//! Provider specifications: one provider's configuration (with its serde defaults), its
//! validation, and the rule for a whole group.

use serde::{Deserialize, Serialize};

use super::health::Outcome;
use crate::validate;
use crate::GatewayError;

/// One upstream provider as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Unique name within the group (`[A-Za-z0-9_.-]{1,64}`).
    pub name: String,
    /// Base URL requests are forwarded to (`http://` or `https://`).
    pub url: String,
    /// Relative weight, 1..=1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Path appended to `url` for active health probes.
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Per-attempt timeout of a proxied call, ms (100..=120000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Name of the secret (wrangler secret / `.dev.vars`) holding this provider's API key, sent
    /// upstream as `Authorization: Bearer`. Only the name is stored or shown, never the value.
    #[serde(default)]
    pub secret: Option<String>,
    /// Cost of one call, micro-USD.
    #[serde(default)]
    pub cost_per_request_micro_usd: u64,
    /// Cost per 1 000 input tokens, micro-USD.
    #[serde(default)]
    pub cost_per_1k_input_micro_usd: u64,
    /// Cost per 1 000 output tokens, micro-USD.
    #[serde(default)]
    pub cost_per_1k_output_micro_usd: u64,
    /// Spending cap per `budget_period_ms`, micro-USD; when spent, the provider leaves rotation
    /// until the period ends.
    #[serde(default)]
    pub budget_micro_usd: Option<u64>,
    /// The budget period (default one day).
    #[serde(default = "default_budget_period_ms")]
    pub budget_period_ms: u64,
}

fn default_budget_period_ms() -> u64 {
    86_400_000
}

impl ProviderSpec {
    /// The estimated cost of one outcome, micro-USD.
    pub fn cost_of(&self, o: &Outcome) -> u64 {
        self.cost_per_request_micro_usd
            + (u64::from(o.input_tokens) * self.cost_per_1k_input_micro_usd).div_ceil(1000)
            + (u64::from(o.output_tokens) * self.cost_per_1k_output_micro_usd).div_ceil(1000)
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_weight() -> u32 {
    1
}
fn default_health_path() -> String {
    "/health".into()
}

impl ProviderSpec {
    /// Validates one provider definition.
    pub fn validate(&self) -> Result<(), GatewayError> {
        validate::name("provider name", &self.name)?;
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || self.url.len() > 2048
            || self
                .url
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(GatewayError::bad_request(
                "invalid-provider",
                format!("provider {}: url must be an http(s) URL", self.name),
            ));
        }
        if !(1..=1000).contains(&self.weight) {
            return Err(GatewayError::bad_request(
                "invalid-provider",
                format!("provider {}: weight must be 1..=1000", self.name),
            ));
        }
        if !(1000..=31 * 86_400_000).contains(&self.budget_period_ms) {
            return Err(GatewayError::bad_request(
                "invalid-provider",
                format!(
                    "provider {}: budget_period_ms must be 1000..=2678400000",
                    self.name
                ),
            ));
        }
        if !(100..=120_000).contains(&self.timeout_ms) {
            return Err(GatewayError::bad_request(
                "invalid-provider",
                format!("provider {}: timeout_ms must be 100..=120000", self.name),
            ));
        }
        if let Some(secret) = &self.secret {
            if secret.is_empty()
                || secret.len() > 64
                || !secret
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(GatewayError::bad_request(
                    "invalid-provider",
                    format!(
                        "provider {}: secret must name a variable ([A-Z0-9_]{{1,64}})",
                        self.name
                    ),
                ));
            }
        }
        if !self.health_path.starts_with('/') || self.health_path.len() > 256 {
            return Err(GatewayError::bad_request(
                "invalid-provider",
                format!("provider {}: health_path must start with '/'", self.name),
            ));
        }
        Ok(())
    }
}

/// Validates a whole group: 1..=32 providers with unique names.
pub fn validate_group(specs: &[ProviderSpec]) -> Result<(), GatewayError> {
    if specs.is_empty() || specs.len() > 32 {
        return Err(GatewayError::bad_request(
            "invalid-provider",
            "a group needs 1 to 32 providers",
        ));
    }
    for (i, s) in specs.iter().enumerate() {
        s.validate()?;
        if specs[..i].iter().any(|o| o.name == s.name) {
            return Err(GatewayError::bad_request(
                "invalid-provider",
                format!("duplicate provider name {}", s.name),
            ));
        }
    }
    Ok(())
}
