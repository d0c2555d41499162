//! Virtual keys: credentials the gateway issues per team or app, each with its own request
//! rate, token limits, budgets and allowed models.
//!
//! **Identity.** A key's secret is `sk-eg-` followed by 48 hex digits (24 random bytes, drawn by
//! the worker). Only its SHA-256 is stored. The key's public id is `key_` + the first 16 hex
//! digits of that hash, so a request's secret names its id (and so its shard,
//! `ratelimit:{fnv1a64("key/" + id) % RATE_LIMIT_SHARDS}`) without a lookup, and the object
//! compares the whole hash in constant time.
//!
//! **Admission** ([`usage::Usage::admit`]) runs in the key's rate-limiter shard, in one
//! synchronous step: the key exists and is not revoked; the model (and group) is allowed; the
//! day's and month's spend are under budget; the token windows have room for the request's
//! estimate; the key's request policy admits it. Only then is anything written: one token of the
//! request policy and a *reservation* of the estimate in the minute and day windows. After the
//! answer the worker *settles* the reservation with the real usage ([`usage::Usage::settle`]):
//! the estimate is released and the real count charged, and the cost added to the spend.
//!
//! **Exactness.** Reserved plus used tokens never exceed a window's limit at admission, so the
//! only overshoot is a request whose real usage exceeds its estimate: at most the sum of the
//! in-flight requests' under-estimates, per key. The estimate is `ceil(body bytes / 4)` for the
//! prompt plus `max_tokens` (or `max_completion_tokens`, else `AI_DEFAULT_MAX_TOKENS`), so with
//! `max_tokens` set and prompts of ordinary text it is an over-estimate and nothing overshoots.
//! Budgets are checked against settled spend: the overshoot is at most the cost of the requests
//! in flight when the budget ran out. A reservation never settled (its isolate died) is charged
//! at its estimate after [`RESERVATION_TTL_MS`].

pub mod store;
#[cfg(test)]
mod tests;
pub mod usage;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rate_limit::policy::{Policy, PolicyJson};
use crate::{validate, GatewayError, UnixMillis};

pub use usage::{Admission, Admitted, Limit, Refusal, Usage};

/// The secret's prefix.
pub const SECRET_PREFIX: &str = "sk-eg-";
/// Random bytes in a secret.
pub const SECRET_BYTES: usize = 24;
/// A reservation not settled within this long is charged at its estimate.
pub const RESERVATION_TTL_MS: i64 = 3_600_000;
/// Most reservations in flight per key (a request beyond is refused, 429).
pub const MAX_IN_FLIGHT: usize = 1_024;
/// Most entries of a key's metadata.
pub const MAX_METADATA: usize = 16;
/// Most models or groups a key may name.
pub const MAX_ALLOWED: usize = 64;

/// What an admin sends to create a key (`POST /v1/keys`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// A label for humans.
    #[serde(default)]
    pub name: Option<String>,
    /// The request-rate policy (as `RATE_LIMIT_POLICIES` entries); none: unlimited requests.
    #[serde(default)]
    pub policy: Option<PolicyJson>,
    /// Tokens (prompt + completion) per UTC minute.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day.
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Spend per UTC day, micro-USD.
    #[serde(default)]
    pub budget_day_micro_usd: Option<u64>,
    /// Spend per UTC calendar month, micro-USD.
    #[serde(default)]
    pub budget_month_micro_usd: Option<u64>,
    /// Models the key may call (empty: any configured model).
    #[serde(default)]
    pub models: Vec<String>,
    /// Provider groups the key may reach (empty: any).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form labels, e.g. `team`, `app`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A key's validated definition, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDef {
    /// Label.
    pub name: Option<String>,
    /// Request-rate policy.
    pub policy: Option<Policy>,
    /// Tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Tokens per day.
    pub tokens_per_day: Option<u64>,
    /// Daily budget, micro-USD.
    pub budget_day_micro_usd: Option<u64>,
    /// Monthly budget, micro-USD.
    pub budget_month_micro_usd: Option<u64>,
    /// Allowed models (empty: any).
    pub models: Vec<String>,
    /// Allowed groups (empty: any).
    pub groups: Vec<String>,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
}

fn bad(detail: impl Into<String>) -> GatewayError {
    GatewayError::bad_request("invalid-key", detail)
}

fn limit(name: &str, v: Option<u64>, max: u64) -> Result<Option<u64>, GatewayError> {
    match v {
        Some(0) => Err(bad(format!(
            "{name} must be at least 1 (omit it for no limit)"
        ))),
        Some(n) if n > max => Err(bad(format!("{name} must be at most {max}"))),
        other => Ok(other),
    }
}

/// A model name: 1..=128 printable ASCII bytes without spaces.
pub fn validate_model(model: &str) -> Result<(), GatewayError> {
    if model.is_empty() || model.len() > 128 || !model.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GatewayError::bad_request(
            "invalid-model",
            "a model name is 1 to 128 printable ASCII characters",
        ));
    }
    Ok(())
}

impl KeySpec {
    /// Validates into the stored definition.
    pub fn into_def(self) -> Result<KeyDef, GatewayError> {
        if let Some(n) = &self.name {
            if n.is_empty() || n.len() > 128 || n.chars().any(char::is_control) {
                return Err(bad(
                    "name must be 1 to 128 characters without control characters",
                ));
            }
        }
        if self.models.len() > MAX_ALLOWED || self.groups.len() > MAX_ALLOWED {
            return Err(bad(format!(
                "at most {MAX_ALLOWED} models and {MAX_ALLOWED} groups"
            )));
        }
        for m in &self.models {
            validate_model(m)?;
        }
        for g in &self.groups {
            validate::name("group", g)?;
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(bad(format!("at most {MAX_METADATA} metadata entries")));
        }
        for (k, v) in &self.metadata {
            validate::name("metadata key", k)?;
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(bad(format!(
                    "metadata {k}: at most 256 characters, no control characters"
                )));
            }
        }
        const MAX_TOKENS: u64 = 1_000_000_000_000;
        const MAX_MICRO_USD: u64 = 1_000_000_000_000_000;
        Ok(KeyDef {
            name: self.name,
            policy: self.policy.map(PolicyJson::into_policy).transpose()?,
            tokens_per_minute: limit("tokens_per_minute", self.tokens_per_minute, MAX_TOKENS)?,
            tokens_per_day: limit("tokens_per_day", self.tokens_per_day, MAX_TOKENS)?,
            budget_day_micro_usd: limit(
                "budget_day_micro_usd",
                self.budget_day_micro_usd,
                MAX_MICRO_USD,
            )?,
            budget_month_micro_usd: limit(
                "budget_month_micro_usd",
                self.budget_month_micro_usd,
                MAX_MICRO_USD,
            )?,
            models: self.models,
            groups: self.groups,
            metadata: self.metadata,
        })
    }
}

impl KeyDef {
    /// Whether the key may call `model` through `group`.
    pub fn allows(&self, model: &str, group: &str) -> bool {
        (self.models.is_empty() || self.models.iter().any(|m| m == model))
            && (self.groups.is_empty() || self.groups.iter().any(|g| g == group))
    }
}

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id (`key_…`).
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// The definition.
    pub def: KeyDef,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it was revoked.
    pub revoked_at: Option<UnixMillis>,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// A new secret from `SECRET_BYTES` random bytes.
pub fn secret_from(random: &[u8; SECRET_BYTES]) -> String {
    format!("{SECRET_PREFIX}{}", hex(random))
}

/// The id and hash a secret names; `None` when it is not shaped like one of ours (refused
/// without a hop).
pub fn identify(secret: &str) -> Option<(String, String)> {
    let body = secret.strip_prefix(SECRET_PREFIX)?;
    if body.len() != SECRET_BYTES * 2 || !body.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hash = hex(&Sha256::digest(secret.as_bytes()));
    Some((format!("key_{}", &hash[..16]), hash))
}

/// A key id as given in a path: `key_` + 16 lower-case hex digits.
pub fn validate_id(id: &str) -> Result<(), GatewayError> {
    let ok = id.strip_prefix("key_").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(GatewayError::bad_request(
            "invalid-key-id",
            "a key id is key_ followed by 16 hex digits",
        ))
    }
}

/// The shard-routing string of a key.
pub fn shard_key(id: &str) -> String {
    format!("key/{id}")
}

/// A key's public view (never the secret or its hash), with its usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Id.
    pub id: String,
    /// Definition.
    pub def: KeyDef,
    /// Created.
    pub created_at: UnixMillis,
    /// Revoked.
    pub revoked_at: Option<UnixMillis>,
    /// Usage so far.
    pub usage: usage::UsageView,
}
