//! Named rate-limit policies: an algorithm, its numbers, and shadow mode.
//!
//! In **shadow mode** a policy computes every decision exactly as it would when enforcing (state
//! evolves identically), counts would-be denials, and reports them, but never denies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::sliding::{self, SlidingWindowPolicy, WindowState};
use super::{Decision, TokenBucketPolicy};
use crate::{GatewayError, UnixMillis};

/// The algorithm and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    /// GCRA token bucket (exact).
    TokenBucket(TokenBucketPolicy),
    /// Weighted two-window sliding counter (estimated; see `sliding`).
    SlidingWindow(SlidingWindowPolicy),
}

/// A named policy's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// How decisions are made.
    pub algorithm: Algorithm,
    /// Compute and count, never deny.
    pub shadow: bool,
}

/// A policy as written in JSON (`[vars]` and the admin API). Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyJson {
    /// `token_bucket` (default) or `sliding_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Token bucket: bucket size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    /// Token bucket: tokens per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<u64>,
    /// Token bucket: the refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_ms: Option<u64>,
    /// Sliding window: cost per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Sliding window: window length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// Shadow mode.
    #[serde(default)]
    pub shadow: bool,
}

impl PolicyJson {
    /// Validates into a [`Policy`]: the fields of the chosen algorithm are required, the other
    /// algorithm's fields are refused.
    pub fn into_policy(self) -> Result<Policy, GatewayError> {
        let bad = |d: &str| Err(GatewayError::bad_request("invalid-policy", d.to_string()));
        let algorithm = match self.algorithm.as_deref().unwrap_or("token_bucket") {
            "token_bucket" => {
                if self.limit.is_some() || self.window_ms.is_some() {
                    return bad("limit/window_ms belong to sliding_window");
                }
                let (Some(capacity), Some(period_ms)) = (self.capacity, self.period_ms) else {
                    return bad(
                        "token_bucket needs capacity and period_ms (refill defaults to capacity)",
                    );
                };
                let refill = self.refill.unwrap_or(capacity);
                Algorithm::TokenBucket(
                    TokenBucketPolicy {
                        capacity,
                        refill,
                        period_ms,
                    }
                    .validated()?,
                )
            }
            "sliding_window" => {
                if self.capacity.is_some() || self.refill.is_some() || self.period_ms.is_some() {
                    return bad("capacity/refill/period_ms belong to token_bucket");
                }
                let (Some(limit), Some(window_ms)) = (self.limit, self.window_ms) else {
                    return bad("sliding_window needs limit and window_ms");
                };
                Algorithm::SlidingWindow(SlidingWindowPolicy { limit, window_ms }.validated()?)
            }
            _ => return bad("algorithm must be token_bucket or sliding_window"),
        };
        Ok(Policy {
            algorithm,
            shadow: self.shadow,
        })
    }
}

impl Policy {
    /// The JSON view (round-trips through [`PolicyJson::into_policy`]).
    pub fn to_json(&self) -> PolicyJson {
        match self.algorithm {
            Algorithm::TokenBucket(t) => PolicyJson {
                algorithm: Some("token_bucket".into()),
                capacity: Some(t.capacity),
                refill: Some(t.refill),
                period_ms: Some(t.period_ms),
                shadow: self.shadow,
                ..PolicyJson::default()
            },
            Algorithm::SlidingWindow(s) => PolicyJson {
                algorithm: Some("sliding_window".into()),
                limit: Some(s.limit),
                window_ms: Some(s.window_ms),
                shadow: self.shadow,
                ..PolicyJson::default()
            },
        }
    }

    /// The quota `q` and window `w` (seconds) for the `RateLimit-Policy` header.
    pub fn quota_and_window_s(&self) -> (u64, u64) {
        match self.algorithm {
            Algorithm::TokenBucket(t) => (
                t.capacity,
                u64::try_from(t.burst_us())
                    .unwrap_or(0)
                    .div_ceil(1_000_000)
                    .max(1),
            ),
            Algorithm::SlidingWindow(s) => (s.limit, s.window_ms.div_ceil(1000).max(1)),
        }
    }
}

/// The stored state of one key, per algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Token bucket TAT in µs.
    Tat(i64),
    /// Sliding window counters.
    Window(WindowState),
}

/// What a take did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The decision as answered (in shadow mode, never a denial).
    pub decision: Decision,
    /// The new state to persist, if any.
    pub new_state: Option<KeyState>,
    /// Shadow mode would have denied this request.
    pub shadow_denied: bool,
}

/// Which per-policy counter a take adds one to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Allowed (and not a shadow denial).
    Allowed,
    /// Denied.
    Denied,
    /// Allowed only because the policy is in shadow mode.
    ShadowDenied,
}

impl Counter {
    /// The counter's name (`allowed`, `denied`, `shadow_denied`: the stats field and column).
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::Allowed => "allowed",
            Counter::Denied => "denied",
            Counter::ShadowDenied => "shadow_denied",
        }
    }
}

impl Outcome {
    /// The counter this take adds to: a shadow denial counts as such, not as allowed.
    pub fn counter(&self) -> Counter {
        if self.shadow_denied {
            Counter::ShadowDenied
        } else if self.decision.allowed {
            Counter::Allowed
        } else {
            Counter::Denied
        }
    }
}

/// Takes `cost` under `policy`. State of the other algorithm (after a policy change) is ignored.
pub fn take(
    policy: &Policy,
    state: Option<KeyState>,
    cost: u64,
    now: UnixMillis,
) -> Result<Outcome, GatewayError> {
    let (decision, new_state) = match policy.algorithm {
        Algorithm::TokenBucket(p) => {
            let tat = match state {
                Some(KeyState::Tat(t)) => Some(t),
                _ => None,
            };
            let (d, t) = super::take(&p, tat, cost, now)?;
            (d, t.map(KeyState::Tat))
        }
        Algorithm::SlidingWindow(p) => {
            let ws = match state {
                Some(KeyState::Window(w)) => Some(w),
                _ => None,
            };
            let (d, w) = sliding::take(&p, ws, cost, now)?;
            (d, w.map(KeyState::Window))
        }
    };
    Ok(shadowed(policy, decision, new_state))
}

/// Decides without consuming.
pub fn peek(
    policy: &Policy,
    state: Option<KeyState>,
    cost: u64,
    now: UnixMillis,
) -> Result<Outcome, GatewayError> {
    let decision = match policy.algorithm {
        Algorithm::TokenBucket(p) => {
            let tat = match state {
                Some(KeyState::Tat(t)) => Some(t),
                _ => None,
            };
            super::peek(&p, tat, cost, now)?
        }
        Algorithm::SlidingWindow(p) => {
            let ws = match state {
                Some(KeyState::Window(w)) => Some(w),
                _ => None,
            };
            sliding::peek(&p, ws, cost, now)?
        }
    };
    Ok(shadowed(policy, decision, None))
}

fn shadowed(policy: &Policy, decision: Decision, new_state: Option<KeyState>) -> Outcome {
    if policy.shadow && !decision.allowed {
        Outcome {
            decision: Decision {
                allowed: true,
                retry_after_ms: 0,
                ..decision
            },
            new_state: None,
            shadow_denied: true,
        }
    } else {
        Outcome {
            decision,
            new_state,
            shadow_denied: false,
        }
    }
}

/// Where an effective policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicySource {
    /// `RATE_LIMIT_POLICIES` in configuration.
    Config,
    /// Set through the admin API.
    Admin,
}

/// One effective policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Name.
    pub name: String,
    /// Definition.
    pub policy: Policy,
    /// Origin.
    pub source: PolicySource,
    /// Version of the admin override (0 for configuration).
    pub version: i64,
}

/// Run-time overrides of named policies, over the defaults from configuration. A `None`
/// definition is a tombstone (the name was deleted). Each change carries a version; older
/// versions are ignored, so a fan-out that arrives out of order converges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    entries: BTreeMap<String, (Option<Policy>, i64)>,
}

impl Overrides {
    /// Adds a stored override (when loading from storage).
    pub fn insert_loaded(&mut self, name: String, policy: Option<Policy>, version: i64) {
        self.entries.insert(name, (policy, version));
    }

    /// The policy named `name`: the override if any, else the default; 404 otherwise.
    pub fn resolve(
        &self,
        defaults: &BTreeMap<String, Policy>,
        name: &str,
    ) -> Result<Policy, GatewayError> {
        let found = match self.entries.get(name) {
            Some((spec, _)) => *spec,
            None => defaults.get(name).copied(),
        };
        found.ok_or_else(|| GatewayError::NotFound(format!("no rate-limit policy named {name}")))
    }

    /// Every effective policy, by name.
    pub fn effective(&self, defaults: &BTreeMap<String, Policy>) -> Vec<PolicyEntry> {
        let mut out: BTreeMap<&str, PolicyEntry> = defaults
            .iter()
            .map(|(n, p)| {
                let e = PolicyEntry {
                    name: n.clone(),
                    policy: *p,
                    source: PolicySource::Config,
                    version: 0,
                };
                (n.as_str(), e)
            })
            .collect();
        for (name, (spec, version)) in &self.entries {
            match spec {
                Some(p) => {
                    let e = PolicyEntry {
                        name: name.clone(),
                        policy: *p,
                        source: PolicySource::Admin,
                        version: *version,
                    };
                    out.insert(name.as_str(), e);
                }
                None => {
                    out.remove(name.as_str());
                }
            }
        }
        out.into_values().collect()
    }

    /// Applies a change. Without a version (the registry shard) one is assigned: at least `now`
    /// and above every stored version. Returns `Ok(version)` when the change must be persisted,
    /// `Err(current)` when it is not newer than what is stored (nothing changes).
    pub fn apply(
        &mut self,
        name: &str,
        policy: Option<Policy>,
        version: Option<i64>,
        now: UnixMillis,
    ) -> Result<i64, i64> {
        let current = self.entries.get(name).map_or(0, |(_, v)| *v);
        let newest = self.entries.values().map(|(_, v)| *v).max().unwrap_or(0);
        let version = version.unwrap_or_else(|| now.0.max(newest + 1));
        if version <= current {
            return Err(current);
        }
        self.entries.insert(name.to_string(), (policy, version));
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<Policy, GatewayError> {
        serde_json::from_str::<PolicyJson>(s)
            .map_err(|e| GatewayError::bad_request("invalid-json", e.to_string()))?
            .into_policy()
    }

    #[test]
    fn a_take_counts_as_allowed_denied_or_shadow_denied() {
        let strict = json(r#"{"capacity":1,"period_ms":60000}"#).unwrap();
        let shadow = json(r#"{"capacity":1,"period_ms":60000,"shadow":true}"#).unwrap();
        let now = UnixMillis(1_000_000);
        for (p, second) in [(strict, Counter::Denied), (shadow, Counter::ShadowDenied)] {
            let first = take(&p, None, 1, now).unwrap();
            assert_eq!(first.counter(), Counter::Allowed);
            let again = take(&p, first.new_state, 1, now).unwrap();
            assert_eq!(again.counter(), second);
        }
        assert_eq!(Counter::ShadowDenied.as_str(), "shadow_denied");
    }

    #[test]
    fn counters_total_per_field() {
        use crate::protocol::ratelimit::PolicyCounters;
        let c = |allowed, denied, shadow_denied| PolicyCounters {
            policy: "p".into(),
            allowed,
            denied,
            shadow_denied,
        };
        let t = PolicyCounters::total("all", &[c(1, 2, 3), c(10, 20, 30)]);
        assert_eq!(
            (t.policy.as_str(), t.allowed, t.denied, t.shadow_denied),
            ("all", 11, 22, 33)
        );
    }

    #[test]
    fn parses_both_algorithms_and_round_trips() {
        let p = json(r#"{"capacity":10,"period_ms":1000}"#).unwrap();
        assert_eq!(
            p.algorithm,
            Algorithm::TokenBucket(TokenBucketPolicy {
                capacity: 10,
                refill: 10,
                period_ms: 1000
            })
        );
        let s = json(r#"{"algorithm":"sliding_window","limit":5,"window_ms":60000,"shadow":true}"#)
            .unwrap();
        assert!(s.shadow);
        for p in [p, s] {
            assert_eq!(p.to_json().into_policy().unwrap(), p);
        }
    }

    #[test]
    fn refuses_mixed_missing_or_unknown_fields() {
        assert!(json(r#"{"capacity":10}"#).is_err());
        assert!(json(r#"{"capacity":10,"period_ms":1,"limit":3}"#).is_err());
        assert!(json(r#"{"algorithm":"sliding_window","limit":3}"#).is_err());
        assert!(json(r#"{"algorithm":"leaky","limit":3,"window_ms":1}"#).is_err());
        assert!(json(r#"{"capacity":10,"period_ms":1000,"burst":2}"#).is_err());
    }

    #[test]
    fn overrides_win_over_defaults_tombstones_delete_and_older_versions_are_ignored() {
        let p = |c: u64| json(&format!(r#"{{"capacity":{c},"period_ms":1000}}"#)).unwrap();
        let defaults: BTreeMap<String, Policy> = [("default".to_string(), p(100))].into();
        let mut o = Overrides::default();
        assert_eq!(o.resolve(&defaults, "default").unwrap(), p(100));
        let v1 = o
            .apply("default", Some(p(5)), None, UnixMillis(1_000))
            .unwrap();
        assert_eq!(v1, 1_000);
        assert_eq!(o.resolve(&defaults, "default").unwrap(), p(5));
        assert_eq!(
            o.apply("default", Some(p(7)), Some(999), UnixMillis(0)),
            Err(1_000),
            "older is ignored"
        );
        let v2 = o.apply("default", None, None, UnixMillis(500)).unwrap();
        assert_eq!(v2, 1_001, "a new version is above every stored one");
        assert_eq!(o.resolve(&defaults, "default").unwrap_err().status(), 404);
        assert!(o.effective(&defaults).is_empty());
    }

    #[test]
    fn shadow_mode_never_denies_but_reports_and_changes_nothing_on_would_deny() {
        let p = json(r#"{"capacity":1,"refill":1,"period_ms":3600000,"shadow":true}"#).unwrap();
        let o = take(&p, None, 1, UnixMillis(0)).unwrap();
        assert!(o.decision.allowed && !o.shadow_denied);
        let o2 = take(&p, o.new_state, 1, UnixMillis(0)).unwrap();
        assert!(o2.decision.allowed);
        assert!(o2.shadow_denied);
        assert_eq!(o2.new_state, None);
    }
}
