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

pub mod sketch;

use sketch::LatencySketch;

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
    /// Cooling down after a 429 until this instant (from its `Retry-After`).
    pub cooldown_until: Option<UnixMillis>,
    /// 429 answers received.
    pub rate_limited: u64,
    /// Input tokens reported.
    pub input_tokens: u64,
    /// Output tokens reported.
    pub output_tokens: u64,
    /// Estimated cost so far, micro-USD.
    pub cost_micro_usd: u64,
    /// Start of the current budget period.
    pub budget_period_start: UnixMillis,
    /// Spent in the current budget period, micro-USD.
    pub budget_spent_micro_usd: u64,
    /// Circuit state as last recorded (an `Open` circuit past `ejected_until` is half-open).
    pub circuit: Circuit,
    /// Trial requests in flight while half-open.
    pub half_open_in_flight: u32,
    /// When the circuit last closed (slow start ramps the weight from here).
    pub closed_at: Option<UnixMillis>,
    /// Picks not yet reported (used by `p2c`).
    pub in_flight: u32,
    /// 5xx answers.
    pub server_errors: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Connection errors (refused, reset, dropped).
    pub connection_errors: u64,
    /// Start of the current failure-rate window.
    pub window_start: UnixMillis,
    /// Outcomes in the current window.
    pub window_requests: u64,
    /// Failures in the current window.
    pub window_failures: u64,
    /// Latency quantiles (1 % relative error, mergeable).
    pub latency: LatencySketch,
}

/// Circuit-breaker state of a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    /// In rotation.
    #[default]
    Closed,
    /// Ejected until `ejected_until`.
    Open,
    /// Trying again: at most `HALF_OPEN_MAX_IN_FLIGHT` trial requests at once; one success
    /// closes it (with slow start), one failure opens it again for longer.
    HalfOpen,
}

/// Trial requests allowed at once in the half-open state.
pub const HALF_OPEN_MAX_IN_FLIGHT: u32 = 1;
/// Slow start after closing: the weight ramps from 10 % to 100 % over this long.
pub const SLOW_START_MS: i64 = 30_000;
/// Failure-rate ejection: a window of this long...
pub const FAILURE_WINDOW_MS: i64 = 60_000;
/// ...with at least this many outcomes...
pub const FAILURE_MIN_SAMPLE: u64 = 10;
/// ...of which at least this share (percent) failed.
pub const FAILURE_RATE_PERCENT: u64 = 50;

impl ProviderHealth {
    /// The circuit at `now` (an open circuit whose ejection has ended is half-open).
    pub fn circuit_at(&self, now: UnixMillis) -> Circuit {
        match self.circuit {
            Circuit::Open if self.ejected_until.is_none_or(|t| t <= now) => Circuit::HalfOpen,
            c => c,
        }
    }

    /// Whether it is in rotation at `now`: circuit closed (or half-open with room for a trial)
    /// and not cooling down after a 429.
    pub fn is_healthy(&self, now: UnixMillis) -> bool {
        let circuit_ok = match self.circuit_at(now) {
            Circuit::Closed => self.ejected_until.is_none_or(|t| t <= now),
            Circuit::Open => false,
            Circuit::HalfOpen => self.half_open_in_flight < HALF_OPEN_MAX_IN_FLIGHT,
        };
        circuit_ok && self.cooldown_until.is_none_or(|t| t <= now)
    }

    /// Slow-start share of the weight at `now`, in percent (10..=100).
    pub fn weight_percent(&self, now: UnixMillis) -> i64 {
        match self.closed_at {
            Some(t) if now.since(t) < SLOW_START_MS => {
                (10 + 90 * now.since(t) / SLOW_START_MS).clamp(10, 100)
            }
            _ => 100,
        }
    }

    /// When it comes back into rotation (the later of ejection and cooldown), if it is out.
    pub fn back_at(&self, now: UnixMillis) -> Option<UnixMillis> {
        [self.ejected_until, self.cooldown_until]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .max()
    }
}

/// A per-request preference, from an experiment arm's parameters (`provider`, `strategy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preference {
    /// Pick this provider when it is in rotation.
    pub provider: Option<String>,
    /// Use this strategy instead of the group's.
    pub strategy: Option<Strategy>,
}

/// How a group chooses among its healthy providers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin (exact split over every `sum(weights)` picks).
    #[default]
    Weighted,
    /// The healthy provider with the lowest latency EWMA (providers without data first).
    LeastLatency,
    /// Power of two choices: two random healthy providers, the one with less
    /// `(in flight + 1) × latency` wins (randomness is passed in).
    P2c,
    /// The cheapest healthy provider among those within 1.5× (or 50 ms) of the fastest.
    Cost,
}

impl Strategy {
    /// The wire/config name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::LeastLatency => "least_latency",
            Strategy::P2c => "p2c",
            Strategy::Cost => "cost",
        }
    }

    /// Parses a name (unknown names are the default).
    pub fn from_name(name: &str) -> Strategy {
        match name {
            "least_latency" => Strategy::LeastLatency,
            "p2c" => Strategy::P2c,
            "cost" => Strategy::Cost,
            _ => Strategy::Weighted,
        }
    }
}

/// Passive-health thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EjectionPolicy {
    /// Failures in a row that eject a provider.
    pub consecutive_failures: u32,
    /// First ejection time; doubles with each further ejection (up to 64x).
    pub base_ejection_ms: u64,
    /// At most this share of a group's providers is ejected at once (Envoy's
    /// `max_ejection_percent`); beyond it failures are counted but nobody else is ejected.
    pub max_ejected_percent: u32,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejected_percent: 50,
        }
    }
}

/// An outcome reported for a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether the call succeeded (2xx-4xx other than 429 count as success for health).
    pub ok: bool,
    /// Observed latency.
    pub latency_ms: u32,
    /// The provider answered 429: cool it down this long (its `Retry-After`), not a failure.
    pub retry_after_ms: Option<u64>,
    /// Input (prompt) tokens the answer reported in its `usage`.
    pub input_tokens: u32,
    /// Output (completion) tokens the answer reported.
    pub output_tokens: u32,
    /// What kind of failure, when it failed.
    pub error: Option<ErrorClass>,
}

/// Failure classes counted per provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// A 5xx answer.
    ServerError,
    /// No answer in time.
    Timeout,
    /// Refused, reset or dropped.
    Connection,
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
    /// The provider's per-attempt timeout.
    pub timeout_ms: u64,
    /// Name of the secret with its API key (never the value).
    #[serde(default)]
    pub secret: Option<String>,
    /// Prices: per request, per 1 000 input and per 1 000 output tokens, micro-USD.
    pub prices: (u64, u64, u64),
}

impl Pick {
    fn of(s: &ProviderSpec, panic: bool) -> Pick {
        Pick {
            name: s.name.clone(),
            url: s.url.clone(),
            panic,
            timeout_ms: s.timeout_ms,
            secret: s.secret.clone(),
            prices: (
                s.cost_per_request_micro_usd,
                s.cost_per_1k_input_micro_usd,
                s.cost_per_1k_output_micro_usd,
            ),
        }
    }

    /// The estimated cost of one attempt, micro-USD (as [`ProviderSpec::cost_of`]).
    pub fn cost_of(&self, o: &Outcome) -> u64 {
        let (request, input, output) = self.prices;
        request
            + (u64::from(o.input_tokens) * input).div_ceil(1000)
            + (u64::from(o.output_tokens) * output).div_ceil(1000)
    }
}

/// A provider group's balancer. See the module docs.
#[derive(Debug, Clone)]
pub struct Balancer {
    specs: Vec<ProviderSpec>,
    health: Vec<ProviderHealth>,
    scores: Vec<i64>,
    policy: EjectionPolicy,
    strategy: Strategy,
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
            strategy: Strategy::default(),
        }
    }

    /// Sets the strategy.
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
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

    /// Budget left in the current period (micro-USD), if the provider has a budget.
    pub fn budget_left(&self, i: usize, now: UnixMillis) -> Option<u64> {
        let (s, h) = (self.specs.get(i)?, self.health.get(i)?);
        let budget = s.budget_micro_usd?;
        let period = i64::try_from(s.budget_period_ms).unwrap_or(i64::MAX);
        let spent = if now.since(h.budget_period_start) >= period {
            0
        } else {
            h.budget_spent_micro_usd
        };
        Some(budget.saturating_sub(spent))
    }

    /// In rotation: healthy and with budget left.
    pub fn in_rotation(&self, i: usize, now: UnixMillis) -> bool {
        self.health[i].is_healthy(now) && self.budget_left(i, now) != Some(0)
    }

    /// Index of the provider named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// Picks a provider at `now`; `None` only for an empty group.
    pub fn pick(&mut self, now: UnixMillis) -> Option<Pick> {
        self.pick_excluding(now, &[], 0)
    }

    /// Picks a provider not in `exclude` (the ones a request already tried). When no healthy
    /// provider is left, the least-bad one not excluded (the one back soonest) is returned with
    /// `panic: true`; `None` when every provider is excluded.
    /// `rand` is a uniformly random number from the caller (only `p2c` uses it).
    pub fn pick_excluding(
        &mut self,
        now: UnixMillis,
        exclude: &[String],
        rand: u64,
    ) -> Option<Pick> {
        self.pick_with(now, exclude, rand, &Preference::default())
    }

    /// [`Balancer::pick_excluding`] with a per-request preference (an experiment arm's
    /// parameters): a preferred provider is picked when it is in rotation and not excluded;
    /// otherwise the preferred strategy (or the group's) chooses. Health always wins: a
    /// preference never routes to an ejected provider.
    pub fn pick_with(
        &mut self,
        now: UnixMillis,
        exclude: &[String],
        rand: u64,
        pref: &Preference,
    ) -> Option<Pick> {
        let candidates: Vec<usize> = (0..self.specs.len())
            .filter(|&i| !exclude.contains(&self.specs[i].name))
            .collect();
        let healthy: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.in_rotation(i, now))
            .collect();
        if healthy.is_empty() {
            let i = candidates
                .into_iter()
                .min_by_key(|&i| self.health[i].back_at(now))?;
            self.health[i].in_flight = self.health[i].in_flight.saturating_add(1);
            let s = &self.specs[i];
            return Some(Pick::of(s, true));
        }
        let latency = |h: &ProviderHealth| {
            if h.requests == 0 {
                0.0
            } else {
                h.latency_ewma_ms
            }
        };
        let preferred = pref
            .provider
            .as_deref()
            .and_then(|p| self.position(p))
            .filter(|i| healthy.contains(i));
        let best = match (preferred, pref.strategy.unwrap_or(self.strategy)) {
            (Some(i), _) => i,
            (None, Strategy::Weighted) => {
                let w = |b: &Balancer, i: usize| {
                    i64::from(b.specs[i].weight) * b.health[i].weight_percent(now)
                };
                let total: i64 = healthy.iter().map(|&i| w(self, i)).sum();
                let mut best = healthy[0];
                for &i in &healthy {
                    self.scores[i] += w(self, i);
                    if self.scores[i] > self.scores[best] {
                        best = i;
                    }
                }
                self.scores[best] -= total;
                best
            }
            (None, Strategy::LeastLatency) => healthy
                .iter()
                .copied()
                .min_by(|&a, &b| latency(&self.health[a]).total_cmp(&latency(&self.health[b])))
                .unwrap_or(healthy[0]),
            (None, Strategy::P2c) => {
                let n = healthy.len() as u64;
                let a = (rand % n) as usize;
                let b = if n < 2 {
                    a
                } else {
                    ((a as u64 + 1 + (rand / n) % (n - 1)) % n) as usize
                };
                let (a, b) = (healthy[a], healthy[b]);
                let load = |i: usize| {
                    (f64::from(self.health[i].in_flight) + 1.0) * latency(&self.health[i]).max(1.0)
                };
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
            (None, Strategy::Cost) => {
                let fastest = healthy
                    .iter()
                    .map(|&i| &self.health[i])
                    .filter(|h| h.requests > 0)
                    .map(|h| h.latency_ewma_ms)
                    .fold(f64::INFINITY, f64::min);
                let bound = if fastest.is_finite() {
                    (fastest * 1.5).max(fastest + 50.0)
                } else {
                    f64::INFINITY
                };
                let unit_cost = |i: usize| {
                    let h = &self.health[i];
                    let observed = h.cost_micro_usd.checked_div(h.requests).unwrap_or(0);
                    observed.max(self.specs[i].cost_per_request_micro_usd)
                };
                healthy
                    .iter()
                    .copied()
                    .filter(|&i| {
                        self.health[i].requests == 0 || self.health[i].latency_ewma_ms <= bound
                    })
                    .min_by_key(|&i| unit_cost(i))
                    .unwrap_or(healthy[0])
            }
        };
        let h = &mut self.health[best];
        h.in_flight = h.in_flight.saturating_add(1);
        if h.circuit_at(now) == Circuit::HalfOpen {
            h.circuit = Circuit::HalfOpen;
            h.half_open_in_flight = h.half_open_in_flight.saturating_add(1);
        }
        let s = &self.specs[best];
        Some(Pick::of(s, false))
    }

    /// Ranked candidates for one request, so failover needs no further round trip: first the
    /// provider [`Balancer::pick_with`] chooses (the strategy's state, e.g. the weighted
    /// scores, advances exactly as for one pick), then the other providers in rotation in the
    /// strategy's order (weighted: by running score; least-latency, p2c: by latency; cost: by
    /// unit cost), then those out of rotation by when they are back (`panic: true`). Providers
    /// whose budget is spent are never candidates. Every candidate is reserved (in flight, and
    /// the trial slot of a half-open circuit); [`Balancer::release`] returns the unused ones.
    pub fn pick_ranked(
        &mut self,
        now: UnixMillis,
        rand: u64,
        pref: &Preference,
        max: usize,
    ) -> Vec<Pick> {
        let spent: Vec<String> = (0..self.specs.len())
            .filter(|&i| self.budget_left(i, now) == Some(0))
            .map(|i| self.specs[i].name.clone())
            .collect();
        if max == 0 || spent.len() == self.specs.len() {
            return Vec::new();
        }
        let Some(first) = self.pick_with(now, &spent, rand, pref) else {
            return Vec::new();
        };
        let strategy = pref.strategy.unwrap_or(self.strategy);
        let latency = |h: &ProviderHealth| {
            if h.requests == 0 {
                0.0
            } else {
                h.latency_ewma_ms
            }
        };
        let mut rest: Vec<usize> = (0..self.specs.len())
            .filter(|&i| self.specs[i].name != first.name && !spent.contains(&self.specs[i].name))
            .collect();
        rest.sort_by(|&a, &b| {
            let (ra, rb) = (self.in_rotation(a, now), self.in_rotation(b, now));
            rb.cmp(&ra).then_with(|| {
                if !ra {
                    return self.health[a]
                        .back_at(now)
                        .cmp(&self.health[b].back_at(now));
                }
                match strategy {
                    Strategy::Weighted => {
                        let w = |i: usize| {
                            self.scores[i]
                                + i64::from(self.specs[i].weight)
                                    * self.health[i].weight_percent(now)
                        };
                        w(b).cmp(&w(a))
                    }
                    Strategy::LeastLatency | Strategy::P2c => {
                        latency(&self.health[a]).total_cmp(&latency(&self.health[b]))
                    }
                    Strategy::Cost => self.specs[a]
                        .cost_per_request_micro_usd
                        .cmp(&self.specs[b].cost_per_request_micro_usd),
                }
            })
        });
        let mut picks = vec![first];
        for i in rest.into_iter().take(max - 1) {
            let panic = !self.in_rotation(i, now);
            let h = &mut self.health[i];
            h.in_flight = h.in_flight.saturating_add(1);
            if !panic && h.circuit_at(now) == Circuit::HalfOpen {
                h.circuit = Circuit::HalfOpen;
                h.half_open_in_flight = h.half_open_in_flight.saturating_add(1);
            }
            picks.push(Pick::of(&self.specs[i], panic));
        }
        picks
    }

    /// When the group's earliest spent budget is replenished, if every provider's is spent.
    pub fn budgets_reset_in_ms(&self, now: UnixMillis) -> Option<u64> {
        (0..self.specs.len())
            .map(|i| {
                (self.budget_left(i, now) == Some(0)).then(|| {
                    let period = i64::try_from(self.specs[i].budget_period_ms).unwrap_or(i64::MAX);
                    let ends = self.health[i].budget_period_start.plus_ms(period);
                    u64::try_from(ends.since(now).max(0)).unwrap_or(0)
                })
            })
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .min()
    }

    /// Returns a reserved but unused candidate (see [`Balancer::pick_ranked`]); `panic` as
    /// it was picked (a panic pick holds no half-open trial slot).
    pub fn release(&mut self, name: &str, panic: bool, now: UnixMillis) -> Option<usize> {
        let i = self.position(name)?;
        let h = &mut self.health[i];
        h.in_flight = h.in_flight.saturating_sub(1);
        if !panic && h.circuit_at(now) == Circuit::HalfOpen {
            h.half_open_in_flight = h.half_open_in_flight.saturating_sub(1);
        }
        Some(i)
    }

    /// Records an outcome for `name`; returns the provider's index when it changed.
    pub fn report(&mut self, name: &str, outcome: Outcome, now: UnixMillis) -> Option<usize> {
        let i = self.position(name)?;
        let h = &mut self.health[i];
        h.in_flight = h.in_flight.saturating_sub(1);
        let trial = h.circuit_at(now) == Circuit::HalfOpen;
        if trial {
            h.half_open_in_flight = h.half_open_in_flight.saturating_sub(1);
        }
        if let Some(ms) = outcome.retry_after_ms {
            h.rate_limited += 1;
            h.cooldown_until = Some(now.plus_ms(i64::try_from(ms).unwrap_or(i64::MAX)));
            return Some(i);
        }
        h.requests += 1;
        let cost = self.specs[i].cost_of(&outcome);
        let period = i64::try_from(self.specs[i].budget_period_ms).unwrap_or(i64::MAX);
        if now.since(h.budget_period_start) >= period {
            h.budget_period_start = now;
            h.budget_spent_micro_usd = 0;
        }
        h.budget_spent_micro_usd = h.budget_spent_micro_usd.saturating_add(cost);
        h.cost_micro_usd = h.cost_micro_usd.saturating_add(cost);
        h.input_tokens += u64::from(outcome.input_tokens);
        h.output_tokens += u64::from(outcome.output_tokens);
        let l = f64::from(outcome.latency_ms);
        h.latency_ewma_ms = if h.requests == 1 {
            l
        } else {
            0.8 * h.latency_ewma_ms + 0.2 * l
        };
        h.latency.record(outcome.latency_ms);
        if now.since(h.window_start) >= FAILURE_WINDOW_MS {
            h.window_start = now;
            h.window_requests = 0;
            h.window_failures = 0;
        }
        h.window_requests += 1;
        match outcome.error {
            Some(ErrorClass::ServerError) => h.server_errors += 1,
            Some(ErrorClass::Timeout) => h.timeouts += 1,
            Some(ErrorClass::Connection) => h.connection_errors += 1,
            None => {}
        }
        if outcome.ok {
            h.successes += 1;
            h.consecutive_failures = 0;
            if trial {
                // A trial request succeeded: close, with slow start.
                h.circuit = Circuit::Closed;
                h.ejected_until = None;
                h.closed_at = Some(now);
            }
        } else {
            h.failures += 1;
            h.window_failures += 1;
            if trial {
                self.eject(i, now);
            } else {
                self.note_failure(i, now);
            }
        }
        Some(i)
    }

    /// Opens the circuit for the next (doubling) ejection time.
    fn eject(&mut self, i: usize, now: UnixMillis) {
        let base = self.policy.base_ejection_ms;
        let h = &mut self.health[i];
        h.ejections = h.ejections.saturating_add(1);
        let factor = 1u64 << (h.ejections - 1).min(6);
        let ms = base.saturating_mul(factor);
        h.circuit = Circuit::Open;
        h.half_open_in_flight = 0;
        h.ejected_until = Some(now.plus_ms(i64::try_from(ms).unwrap_or(i64::MAX)));
    }

    fn note_failure(&mut self, i: usize, now: UnixMillis) {
        let policy = self.policy;
        let ejected = self
            .health
            .iter()
            .filter(|h| h.ejected_until.is_some_and(|t| t > now))
            .count();
        let room = (ejected + 1) * 100 <= policy.max_ejected_percent as usize * self.specs.len();
        let h = &mut self.health[i];
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        let by_streak = h.consecutive_failures >= policy.consecutive_failures;
        let by_rate = h.window_requests >= FAILURE_MIN_SAMPLE
            && h.window_failures * 100 >= FAILURE_RATE_PERCENT * h.window_requests;
        if (by_streak || by_rate) && h.circuit_at(now) == Circuit::Closed && room {
            self.eject(i, now);
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

    /// Records a probe result. A passing probe moves an open circuit to half-open (the next
    /// request is a trial); a failing one counts as a failure, and reopens a half-open circuit.
    pub fn on_probe(&mut self, name: &str, ok: bool, now: UnixMillis) -> Option<usize> {
        let i = self.position(name)?;
        {
            let h = &mut self.health[i];
            h.probes += 1;
            h.last_probe_at = Some(now);
            h.last_probe_ok = Some(ok);
            if ok {
                h.consecutive_failures = 0;
                if h.circuit == Circuit::Open {
                    h.circuit = Circuit::HalfOpen;
                    h.ejected_until = None;
                    h.half_open_in_flight = 0;
                }
            }
        }
        if !ok {
            if self.health[i].circuit_at(now) == Circuit::HalfOpen {
                self.health[i].failures += 1;
                self.eject(i, now);
            } else {
                self.note_failure(i, now);
            }
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
            timeout_ms: 1000,
            secret: None,
            cost_per_request_micro_usd: 0,
            cost_per_1k_input_micro_usd: 0,
            cost_per_1k_output_micro_usd: 0,
            budget_micro_usd: None,
            budget_period_ms: 86_400_000,
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

    fn names(picks: &[Pick]) -> Vec<&str> {
        picks.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn ranked_picks_split_like_single_picks_and_rank_the_rest_for_failover() {
        let mut single = Balancer::new(vec![spec("a", 3), spec("b", 1)], EjectionPolicy::default());
        let mut ranked = single.clone();
        for _ in 0..40 {
            let one = single.pick(UnixMillis(0)).unwrap().name;
            let list = ranked.pick_ranked(UnixMillis(0), 0, &Preference::default(), 3);
            assert_eq!(
                list[0].name, one,
                "the first candidate is exactly the single pick"
            );
            assert_eq!(list.len(), 2);
            assert_ne!(list[0].name, list[1].name);
            for p in &list {
                ranked.release(&p.name, p.panic, UnixMillis(0));
            }
            single.release(&one, false, UnixMillis(0));
        }
        assert_eq!(ranked.health(0).map(|h| h.in_flight), Some(0), "released");
        assert_eq!(
            ranked
                .pick_ranked(UnixMillis(0), 0, &Preference::default(), 1)
                .len(),
            1
        );
        assert!(ranked
            .pick_ranked(UnixMillis(0), 0, &Preference::default(), 0)
            .is_empty());
    }

    #[test]
    fn ranked_picks_put_ejected_providers_last_as_panic_and_skip_spent_budgets() {
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            base_ejection_ms: 1000,
            max_ejected_percent: 100,
        };
        let mut pricey = spec("pricey", 1);
        pricey.cost_per_request_micro_usd = 100;
        pricey.budget_micro_usd = Some(100);
        let mut b = Balancer::new(vec![spec("down", 1), pricey, spec("ok", 1)], policy);
        let fail = Outcome {
            ok: false,
            error: Some(ErrorClass::ServerError),
            ..Outcome::default()
        };
        b.report("down", fail, UnixMillis(0));
        let list = b.pick_ranked(UnixMillis(1), 0, &Preference::default(), 3);
        assert_eq!(names(&list), ["pricey", "ok", "down"]);
        assert_eq!(
            list.iter().map(|p| p.panic).collect::<Vec<_>>(),
            [false, false, true]
        );
        for p in &list {
            b.release(&p.name, p.panic, UnixMillis(1));
        }
        b.report(
            "pricey",
            Outcome {
                ok: true,
                ..Outcome::default()
            },
            UnixMillis(1),
        );
        assert_eq!(
            b.budgets_reset_in_ms(UnixMillis(1)),
            None,
            "one budget is not all"
        );
        let list = b.pick_ranked(UnixMillis(2), 0, &Preference::default(), 3);
        assert_eq!(
            names(&list),
            ["ok", "down"],
            "a spent budget is never a candidate"
        );
        // Every budget spent: no candidate, and when the first comes back.
        let mut only = spec("only", 1);
        only.cost_per_request_micro_usd = 10;
        only.budget_micro_usd = Some(10);
        only.budget_period_ms = 60_000;
        let mut b = Balancer::new(vec![only], EjectionPolicy::default());
        b.report(
            "only",
            Outcome {
                ok: true,
                ..Outcome::default()
            },
            UnixMillis(1000),
        );
        assert!(b
            .pick_ranked(UnixMillis(5000), 0, &Preference::default(), 3)
            .is_empty());
        // The period started at 0 (a fresh provider), so it ends at 60 000.
        assert_eq!(b.budgets_reset_in_ms(UnixMillis(5000)), Some(55_000));
    }

    #[test]
    fn a_half_open_fallback_holds_the_trial_slot_until_released() {
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            base_ejection_ms: 1000,
            max_ejected_percent: 100,
        };
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
        let fail = Outcome {
            ok: false,
            ..Outcome::default()
        };
        b.report("b", fail, UnixMillis(0));
        // At 2000 b's ejection has ended: half-open, one trial at a time.
        let list = b.pick_ranked(UnixMillis(2000), 0, &Preference::default(), 3);
        assert_eq!(names(&list), ["a", "b"]);
        assert!(
            !b.health(1).unwrap().is_healthy(UnixMillis(2000)),
            "trial slot taken"
        );
        b.release("b", false, UnixMillis(2000));
        assert!(
            b.health(1).unwrap().is_healthy(UnixMillis(2000)),
            "slot returned"
        );
    }

    #[test]
    fn a_preferred_provider_is_used_while_healthy_and_never_when_ejected() {
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            base_ejection_ms: 1000,
            max_ejected_percent: 100,
        };
        let mut b = Balancer::new(vec![spec("a", 3), spec("b", 1)], policy);
        let prefer_b = Preference {
            provider: Some("b".into()),
            strategy: None,
        };
        for _ in 0..5 {
            assert_eq!(
                b.pick_with(UnixMillis(0), &[], 0, &prefer_b).unwrap().name,
                "b"
            );
        }
        let fail = Outcome {
            ok: false,
            latency_ms: 5,
            retry_after_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            error: None,
        };
        b.report("b", fail, UnixMillis(0));
        assert_eq!(
            b.pick_with(UnixMillis(10), &[], 0, &prefer_b).unwrap().name,
            "a"
        );
        // A strategy preference overrides the group's weighted strategy.
        let mut c = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
        let ok = |ms| Outcome {
            ok: true,
            latency_ms: ms,
            ..fail
        };
        c.report("a", ok(200), UnixMillis(0));
        c.report("b", ok(5), UnixMillis(0));
        let fastest = Preference {
            provider: None,
            strategy: Some(Strategy::LeastLatency),
        };
        for _ in 0..4 {
            assert_eq!(
                c.pick_with(UnixMillis(1), &[], 0, &fastest).unwrap().name,
                "b"
            );
        }
    }

    #[test]
    fn consecutive_failures_eject_with_growing_time_and_probe_restores() {
        let policy = EjectionPolicy {
            consecutive_failures: 2,
            base_ejection_ms: 1000,
            max_ejected_percent: 100,
        };
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
        let fail = Outcome {
            ok: false,
            latency_ms: 5,
            retry_after_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            error: None,
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
            max_ejected_percent: 100,
        };
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
        b.report(
            "a",
            Outcome {
                ok: false,
                latency_ms: 1,
                retry_after_ms: None,
                input_tokens: 0,
                output_tokens: 0,
                error: None,
            },
            UnixMillis(0),
        );
        b.report(
            "b",
            Outcome {
                ok: false,
                latency_ms: 1,
                retry_after_ms: None,
                input_tokens: 0,
                output_tokens: 0,
                error: None,
            },
            UnixMillis(500),
        );
        let p = b.pick(UnixMillis(600)).unwrap();
        assert!(p.panic);
        assert_eq!(p.name, "a");
    }

    #[test]
    fn retry_after_cools_a_provider_down_without_counting_a_failure() {
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
        b.report(
            "a",
            Outcome {
                ok: false,
                latency_ms: 3,
                retry_after_ms: Some(2000),
                input_tokens: 0,
                output_tokens: 0,
                error: None,
            },
            UnixMillis(0),
        );
        let h = b.health(0).unwrap();
        assert_eq!((h.failures, h.rate_limited, h.requests), (0, 1, 0));
        for _ in 0..4 {
            assert_eq!(b.pick(UnixMillis(1999)).unwrap().name, "b");
        }
        let names: Vec<String> = (0..4)
            .map(|_| b.pick(UnixMillis(2000)).unwrap().name)
            .collect();
        assert!(names.contains(&"a".to_string()), "back after Retry-After");
    }

    #[test]
    fn excluded_providers_are_skipped_and_exhaustion_is_none() {
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
        assert_eq!(
            b.pick_excluding(UnixMillis(0), &["a".into()], 0)
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(
            b.pick_excluding(UnixMillis(0), &["a".into(), "b".into()], 0),
            None
        );
    }

    #[test]
    fn least_latency_prefers_the_fastest_after_trying_each() {
        let mut b = Balancer::new(
            vec![spec("slow", 1), spec("fast", 1)],
            EjectionPolicy::default(),
        )
        .with_strategy(Strategy::LeastLatency);
        b.report(
            "slow",
            Outcome {
                ok: true,
                latency_ms: 300,
                retry_after_ms: None,
                input_tokens: 0,
                output_tokens: 0,
                error: None,
            },
            UnixMillis(0),
        );
        assert_eq!(
            b.pick(UnixMillis(1)).unwrap().name,
            "fast",
            "untried provider first"
        );
        b.report(
            "fast",
            Outcome {
                ok: true,
                latency_ms: 20,
                retry_after_ms: None,
                input_tokens: 0,
                output_tokens: 0,
                error: None,
            },
            UnixMillis(1),
        );
        for _ in 0..5 {
            assert_eq!(b.pick(UnixMillis(2)).unwrap().name, "fast");
        }
    }

    #[test]
    fn specs_and_picks_survive_the_postcard_hop() {
        // postcard is not self-describing: a skipped field would corrupt every later one.
        let mut s = spec("a", 2);
        for secret in [None, Some("API_KEY".to_string())] {
            s.secret = secret;
            let back: ProviderSpec =
                crate::protocol::decode(&crate::protocol::encode(&s).unwrap()).unwrap();
            assert_eq!(back, s);
            let p = Pick::of(&s, false);
            let back: Pick =
                crate::protocol::decode(&crate::protocol::encode(&p).unwrap()).unwrap();
            assert_eq!(back, p);
        }
    }

    #[test]
    fn usage_is_costed_and_an_exhausted_budget_leaves_rotation_until_the_period_ends() {
        let mut pricey = spec("pricey", 1);
        pricey.cost_per_request_micro_usd = 100;
        pricey.cost_per_1k_output_micro_usd = 2000;
        pricey.budget_micro_usd = Some(250);
        pricey.budget_period_ms = 10_000;
        let mut b = Balancer::new(vec![pricey, spec("cheap", 1)], EjectionPolicy::default());
        let used = Outcome {
            ok: true,
            latency_ms: 5,
            output_tokens: 30,
            ..Outcome::default()
        };
        b.report("pricey", used, UnixMillis(0));
        assert_eq!(b.health(0).unwrap().cost_micro_usd, 160);
        assert_eq!(b.budget_left(0, UnixMillis(1)), Some(90));
        b.report("pricey", used, UnixMillis(1));
        assert_eq!(b.budget_left(0, UnixMillis(2)), Some(0));
        for _ in 0..4 {
            assert_eq!(b.pick(UnixMillis(2)).unwrap().name, "cheap");
        }
        assert_eq!(
            b.budget_left(0, UnixMillis(10_000)),
            Some(250),
            "a new period"
        );
    }

    #[test]
    fn no_more_than_the_max_share_is_ejected() {
        let policy = EjectionPolicy {
            consecutive_failures: 1,
            base_ejection_ms: 1000,
            max_ejected_percent: 50,
        };
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
        let fail = Outcome {
            ok: false,
            latency_ms: 1,
            ..Outcome::default()
        };
        b.report("a", fail, UnixMillis(0));
        b.report("b", fail, UnixMillis(0));
        assert!(!b.health(0).unwrap().is_healthy(UnixMillis(1)));
        assert!(
            b.health(1).unwrap().is_healthy(UnixMillis(1)),
            "ejecting b would exceed 50%"
        );
        assert_eq!(b.health(1).unwrap().failures, 1);
    }

    #[test]
    fn circuit_opens_goes_half_open_admits_one_trial_and_closes_with_slow_start() {
        let policy = EjectionPolicy {
            consecutive_failures: 2,
            base_ejection_ms: 1000,
            max_ejected_percent: 100,
        };
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
        let fail = Outcome {
            ok: false,
            latency_ms: 5,
            ..Outcome::default()
        };
        let ok = Outcome {
            ok: true,
            latency_ms: 5,
            ..Outcome::default()
        };
        b.report("a", fail, UnixMillis(0));
        b.report("a", fail, UnixMillis(0));
        assert_eq!(
            b.health(0).unwrap().circuit_at(UnixMillis(999)),
            Circuit::Open
        );
        assert_eq!(
            b.health(0).unwrap().circuit_at(UnixMillis(1000)),
            Circuit::HalfOpen
        );
        // Half-open: exactly one trial at a time.
        let picks: Vec<String> = (0..4)
            .map(|_| b.pick(UnixMillis(1000)).unwrap().name)
            .collect();
        assert_eq!(picks.iter().filter(|p| *p == "a").count(), 1, "{picks:?}");
        // The trial fails: open again, for twice as long.
        b.report("a", fail, UnixMillis(1010));
        assert_eq!(b.health(0).unwrap().ejected_until, Some(UnixMillis(3010)));
        // A passing probe moves it to half-open; a successful trial closes it.
        b.on_probe("a", true, UnixMillis(1500));
        assert_eq!(b.health(0).unwrap().circuit, Circuit::HalfOpen);
        while b.pick(UnixMillis(1500)).unwrap().name != "a" {}
        b.report("a", ok, UnixMillis(1600));
        let h = b.health(0).unwrap();
        assert_eq!(h.circuit, Circuit::Closed);
        assert_eq!(
            h.weight_percent(UnixMillis(1600)),
            10,
            "slow start begins at 10 %"
        );
        assert_eq!(h.weight_percent(UnixMillis(1600 + SLOW_START_MS / 2)), 55);
        assert_eq!(h.weight_percent(UnixMillis(1600 + SLOW_START_MS)), 100);
    }

    #[test]
    fn failure_rate_over_the_window_ejects_even_without_a_streak() {
        let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
        for i in 0..12 {
            let o = Outcome {
                ok: i % 2 == 0,
                latency_ms: 5,
                ..Outcome::default()
            };
            b.report("a", o, UnixMillis(i));
        }
        assert_eq!(
            b.health(0).unwrap().circuit,
            Circuit::Open,
            "50 % of 10+ outcomes failed"
        );
        assert!(
            b.health(0).unwrap().consecutive_failures <= 1,
            "never a streak of 5"
        );
    }

    #[test]
    fn p2c_prefers_the_less_loaded_of_two_random_choices() {
        let mut b = Balancer::new(
            vec![spec("slow", 1), spec("fast", 1)],
            EjectionPolicy::default(),
        )
        .with_strategy(Strategy::P2c);
        b.report(
            "slow",
            Outcome {
                ok: true,
                latency_ms: 400,
                ..Outcome::default()
            },
            UnixMillis(0),
        );
        b.report(
            "fast",
            Outcome {
                ok: true,
                latency_ms: 10,
                ..Outcome::default()
            },
            UnixMillis(0),
        );
        let fast = (0..100u64)
            .filter(|r| {
                let p = b
                    .pick_excluding(UnixMillis(1), &[], r.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    .unwrap();
                b.report(
                    &p.name,
                    Outcome {
                        ok: true,
                        latency_ms: if p.name == "fast" { 10 } else { 400 },
                        ..Outcome::default()
                    },
                    UnixMillis(1),
                );
                p.name == "fast"
            })
            .count();
        assert_eq!(fast, 100, "with two providers both are always compared");
    }

    #[test]
    fn cost_strategy_takes_the_cheapest_within_the_latency_bound() {
        let mut cheap_slow = spec("cheap_slow", 1);
        cheap_slow.cost_per_request_micro_usd = 1;
        let mut cheap = spec("cheap", 1);
        cheap.cost_per_request_micro_usd = 10;
        let mut dear = spec("dear", 1);
        dear.cost_per_request_micro_usd = 100;
        let mut b = Balancer::new(vec![cheap_slow, cheap, dear], EjectionPolicy::default())
            .with_strategy(Strategy::Cost);
        for (n, l) in [("cheap_slow", 900), ("cheap", 60), ("dear", 50)] {
            b.report(
                n,
                Outcome {
                    ok: true,
                    latency_ms: l,
                    ..Outcome::default()
                },
                UnixMillis(0),
            );
        }
        for _ in 0..3 {
            assert_eq!(b.pick(UnixMillis(1)).unwrap().name, "cheap");
        }
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
