//! `Balancer`: picks an upstream provider of a group and learns from outcomes.
//!
//! Strategy: smooth weighted round robin (nginx's algorithm: each pick adds every healthy
//! provider's weight to its running score, picks the highest and subtracts the total), which
//! spreads picks evenly in time and matches the weights exactly over every `sum(weights)` picks.
//!
//! Passive health: `consecutive_failures` failures in a row eject a provider for
//! `base_ejection_ms * 2^(ejections-1)` (capped at 64x). Active health: the alarm probes every
//! provider's health URL; a passing probe ends an ejection early, a failing one counts as a failure.
//! Panic behaviour: when every provider is ejected, the pick goes to the one whose ejection ends
//! first (the least-bad) and is flagged `panic: true`, so traffic is never refused outright.

use serde::{Deserialize, Serialize};

use crate::validate;
use crate::{GatewayError, UnixMillis};

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

/// Live health of one provider; persisted (postcard) so restarts keep ejections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderHealth {
    /// Outcomes reported.
    pub requests: u64,
    /// Successful outcomes.
    pub successes: u64,
    /// Failed outcomes (5xx, timeouts, connection errors, failed probes).
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// How many times it has been ejected (drives the growing ejection time).
    pub ejections: u32,
    /// Ejected until this instant, if ejected.
    pub ejected_until: Option<UnixMillis>,
    /// Exponentially weighted moving average of reported latency (alpha 0.2).
    pub latency_ewma_ms: f64,
    /// Active probes run.
    pub probes: u64,
    /// When the last probe ran.
    pub last_probe_at: Option<UnixMillis>,
    /// Whether the last probe passed.
    pub last_probe_ok: Option<bool>,
}

impl ProviderHealth {
    /// Whether it is in rotation at `now`.
    pub fn is_healthy(&self, now: UnixMillis) -> bool {
        self.ejected_until.is_none_or(|t| t <= now)
    }
}

/// Passive-health thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EjectionPolicy {
    /// Failures in a row that eject a provider.
    pub consecutive_failures: u32,
    /// First ejection time; doubles with each further ejection (up to 64x).
    pub base_ejection_ms: u64,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
        }
    }
}

/// An outcome reported for a provider.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether the call succeeded (2xx-4xx other than 429 count as success for health).
    pub ok: bool,
    /// Observed latency.
    pub latency_ms: u32,
}

/// The provider chosen for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pick {
    /// Provider name.
    pub name: String,
    /// Provider base URL.
    pub url: String,
    /// True when every provider was ejected and this is the least-bad one.
    pub panic: bool,
}

/// A provider group's balancer. See the module docs.
#[derive(Debug, Clone)]
pub struct Balancer {
    specs: Vec<ProviderSpec>,
    health: Vec<ProviderHealth>,
    scores: Vec<i64>,
    policy: EjectionPolicy,
}

impl Balancer {
    /// A balancer over `specs` with fresh health.
    pub fn new(specs: Vec<ProviderSpec>, policy: EjectionPolicy) -> Self {
        let n = specs.len();
        Balancer {
            specs,
            health: vec![ProviderHealth::default(); n],
            scores: vec![0; n],
            policy,
        }
    }

    /// Replaces the health of the provider named `name` (when loading from storage).
    pub fn restore_health(&mut self, name: &str, health: ProviderHealth) {
        if let Some(i) = self.position(name) {
            self.health[i] = health;
        }
    }

    /// The providers.
    pub fn specs(&self) -> &[ProviderSpec] {
        &self.specs
    }

    /// Health of provider `i`.
    pub fn health(&self, i: usize) -> Option<&ProviderHealth> {
        self.health.get(i)
    }

    /// Index of the provider named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Picks a provider at `now`; `None` only for an empty group.
    pub fn pick(&mut self, now: UnixMillis) -> Option<Pick> {
        let healthy: Vec<usize> = (0..self.specs.len())
            .filter(|&i| self.health[i].is_healthy(now))
            .collect();
        if healthy.is_empty() {
            let i = (0..self.specs.len()).min_by_key(|&i| self.health[i].ejected_until)?;
            let s = &self.specs[i];
            return Some(Pick {
                name: s.name.clone(),
                url: s.url.clone(),
                panic: true,
            });
        }
        let total: i64 = healthy
            .iter()
            .map(|&i| i64::from(self.specs[i].weight))
            .sum();
        let mut best = healthy[0];
        for &i in &healthy {
            self.scores[i] += i64::from(self.specs[i].weight);
            if self.scores[i] > self.scores[best] {
                best = i;
            }
        }
        self.scores[best] -= total;
        let s = &self.specs[best];
        Some(Pick {
            name: s.name.clone(),
            url: s.url.clone(),
            panic: false,
        })
    }

    /// Records an outcome for `name`; returns the provider's index when it changed.
    pub fn report(&mut self, name: &str, outcome: Outcome, now: UnixMillis) -> Option<usize> {
        let i = self.position(name)?;
        let h = &mut self.health[i];
        h.requests += 1;
        let l = f64::from(outcome.latency_ms);
        h.latency_ewma_ms = if h.requests == 1 {
            l
        } else {
            0.8 * h.latency_ewma_ms + 0.2 * l
        };
        if outcome.ok {
            h.successes += 1;
            h.consecutive_failures = 0;
        } else {
            h.failures += 1;
            self.note_failure(i, now);
        }
        Some(i)
    }

    fn note_failure(&mut self, i: usize, now: UnixMillis) {
        let policy = self.policy;
        let h = &mut self.health[i];
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        if h.consecutive_failures >= policy.consecutive_failures && h.is_healthy(now) {
            h.ejections = h.ejections.saturating_add(1);
            let factor = 1u64 << (h.ejections - 1).min(6);
            let ms = policy.base_ejection_ms.saturating_mul(factor);
            h.ejected_until = Some(now.plus_ms(i64::try_from(ms).unwrap_or(i64::MAX)));
        }
    }

    /// Providers to probe at `now`: every provider (their URLs joined with the health path).
    pub fn probe_targets(&self) -> Vec<(String, String)> {
        self.specs
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    format!("{}{}", s.url.trim_end_matches('/'), s.health_path),
                )
            })
            .collect()
    }

    /// Records a probe result; a passing probe ends an ejection, a failing one counts as a failure.
    pub fn on_probe(&mut self, name: &str, ok: bool, now: UnixMillis) -> Option<usize> {
        let i = self.position(name)?;
        {
            let h = &mut self.health[i];
            h.probes += 1;
            h.last_probe_at = Some(now);
            h.last_probe_ok = Some(ok);
            if ok {
                h.consecutive_failures = 0;
                h.ejected_until = None;
            }
        }
        if !ok {
            self.note_failure(i, now);
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, weight: u32) -> ProviderSpec {
        ProviderSpec {
            name: name.into(),
            url: format!("http://127.0.0.1:1/{name}"),
            weight,
            health_path: "/health".into(),
        }
    }

    #[test]
    fn weighted_round_robin_matches_weights_exactly_per_cycle() {
        let mut b = Balancer::new(vec![spec("a", 3), spec("b", 1)], EjectionPolicy::default());
        let picks: Vec<String> = (0..8)
            .map(|_| b.pick(UnixMillis(0)).unwrap().name)
            .collect();
        assert_eq!(picks.iter().filter(|p| *p == "a").count(), 6);
        // Smooth: never more than three `a` in a row.
        assert_eq!(picks[..4], ["a", "a", "b", "a"]);
    }

    #[test]
    fn consecutive_failures_eject_with_growing_time_and_probe_restores() {
        let policy = EjectionPolicy {
            consecutive_failures: 2,
            base_ejection_ms: 1000,
        };
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
        let fail = Outcome {
            ok: false,
            latency_ms: 5,
        };
        b.report("a", fail, UnixMillis(0));
        assert!(b.health(0).unwrap().is_healthy(UnixMillis(0)));
        b.report("a", fail, UnixMillis(0));
        assert_eq!(b.health(0).unwrap().ejected_until, Some(UnixMillis(1000)));
        for _ in 0..4 {
            assert_eq!(b.pick(UnixMillis(10)).unwrap().name, "b");
        }
        b.on_probe("a", true, UnixMillis(20));
        assert!(b.health(0).unwrap().is_healthy(UnixMillis(20)));
        b.report("a", fail, UnixMillis(30));
        b.report("a", fail, UnixMillis(30));
        assert_eq!(
            b.health(0).unwrap().ejected_until,
            Some(UnixMillis(2030)),
            "doubled"
        );
    }

    #[test]
    fn all_ejected_routes_to_least_bad_in_panic_mode() {
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            base_ejection_ms: 1000,
        };
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
        b.report(
            "a",
            Outcome {
                ok: false,
                latency_ms: 1,
            },
            UnixMillis(0),
        );
        b.report(
            "b",
            Outcome {
                ok: false,
                latency_ms: 1,
            },
            UnixMillis(500),
        );
        let p = b.pick(UnixMillis(600)).unwrap();
        assert!(p.panic);
        assert_eq!(p.name, "a");
    }

    #[test]
    fn rejects_bad_groups() {
        assert!(validate_group(&[]).is_err());
        assert!(validate_group(&[spec("a", 1), spec("a", 2)]).is_err());
        assert!(validate_group(&[spec("a", 0)]).is_err());
        let mut s = spec("a", 1);
        s.url = "ftp://x".into();
        assert!(validate_group(&[s]).is_err());
        assert!(validate_group(&[spec("a", 1), spec("b", 1000)]).is_ok());
    }
}
