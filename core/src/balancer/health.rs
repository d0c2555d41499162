//! Per-provider health: the persisted counters, the circuit breaker (ejections, half-open
//! trials, slow start), 429 cooldowns, and how outcomes and probes update them.

use serde::{Deserialize, Serialize};

use crate::sketch::LatencySketch;
use crate::UnixMillis;

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

impl ProviderHealth {
    /// Reserves a pick: one more in flight and, for a `trial`-eligible (non-panic) pick of a
    /// half-open circuit, its trial slot.
    pub(super) fn reserve(&mut self, now: UnixMillis, trial: bool) {
        self.in_flight = self.in_flight.saturating_add(1);
        if trial && self.circuit_at(now) == Circuit::HalfOpen {
            self.circuit = Circuit::HalfOpen;
            self.half_open_in_flight = self.half_open_in_flight.saturating_add(1);
        }
    }

    /// Returns a reservation; `panic` as it was picked (a panic pick holds no half-open trial
    /// slot).
    pub(super) fn release(&mut self, panic: bool, now: UnixMillis) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if !panic && self.circuit_at(now) == Circuit::HalfOpen {
            self.half_open_in_flight = self.half_open_in_flight.saturating_sub(1);
        }
    }

    /// Opens the circuit for the next (doubling) ejection time.
    fn eject(&mut self, base_ejection_ms: u64, now: UnixMillis) {
        self.ejections = self.ejections.saturating_add(1);
        let factor = 1u64 << (self.ejections - 1).min(6);
        let ms = base_ejection_ms.saturating_mul(factor);
        self.circuit = Circuit::Open;
        self.half_open_in_flight = 0;
        self.ejected_until = Some(now.plus_ms(i64::try_from(ms).unwrap_or(i64::MAX)));
    }
}

/// Records an outcome of provider `i` of a group's `health`: `cost` is its estimated cost
/// (micro-USD) and `period` the provider's budget period (ms).
pub(super) fn report(
    health: &mut [ProviderHealth],
    i: usize,
    outcome: Outcome,
    cost: u64,
    period: i64,
    policy: EjectionPolicy,
    now: UnixMillis,
) {
    let h = &mut health[i];
    let trial = h.circuit_at(now) == Circuit::HalfOpen;
    h.release(false, now);
    if let Some(ms) = outcome.retry_after_ms {
        h.rate_limited += 1;
        h.cooldown_until = Some(now.plus_ms(i64::try_from(ms).unwrap_or(i64::MAX)));
        return;
    }
    h.requests += 1;
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
            h.eject(policy.base_ejection_ms, now);
        } else {
            note_failure(health, i, policy, now);
        }
    }
}

/// Records a probe result of provider `i`. A passing probe moves an open circuit to half-open
/// (the next request is a trial); a failing one counts as a failure, and reopens a half-open
/// circuit.
pub(super) fn on_probe(
    health: &mut [ProviderHealth],
    i: usize,
    ok: bool,
    policy: EjectionPolicy,
    now: UnixMillis,
) {
    let h = &mut health[i];
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
    } else if h.circuit_at(now) == Circuit::HalfOpen {
        h.failures += 1;
        h.eject(policy.base_ejection_ms, now);
    } else {
        note_failure(health, i, policy, now);
    }
}

/// Counts a failure outside a trial: a streak or a failure rate over the window ejects a closed
/// circuit, unless the group already has `max_ejected_percent` of its providers ejected.
fn note_failure(health: &mut [ProviderHealth], i: usize, policy: EjectionPolicy, now: UnixMillis) {
    let ejected = health
        .iter()
        .filter(|h| h.ejected_until.is_some_and(|t| t > now))
        .count();
    let room = (ejected + 1) * 100 <= policy.max_ejected_percent as usize * health.len();
    let h = &mut health[i];
    h.consecutive_failures = h.consecutive_failures.saturating_add(1);
    let by_streak = h.consecutive_failures >= policy.consecutive_failures;
    let by_rate = h.window_requests >= FAILURE_MIN_SAMPLE
        && h.window_failures * 100 >= FAILURE_RATE_PERCENT * h.window_requests;
    if (by_streak || by_rate) && h.circuit_at(now) == Circuit::Closed && room {
        h.eject(policy.base_ejection_ms, now);
    }
}
