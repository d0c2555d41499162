//! Selection strategies: weighted round robin, least latency, power of two choices and cost,
//! the ranking of failover candidates, and the per-provider budgets that take a provider out
//! of rotation.

use serde::{Deserialize, Serialize};

use super::health::{Outcome, ProviderHealth};
use super::spec::ProviderSpec;
use crate::UnixMillis;

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
    /// The pick of provider `s`.
    pub(super) fn of(s: &ProviderSpec, panic: bool) -> Pick {
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

/// The latency a strategy compares: the EWMA, or 0 for a provider without data (tried first).
fn latency(h: &ProviderHealth) -> f64 {
    if h.requests == 0 {
        0.0
    } else {
        h.latency_ewma_ms
    }
}

/// Budget left in the current period (micro-USD), if the provider has a budget.
pub(super) fn budget_left(s: &ProviderSpec, h: &ProviderHealth, now: UnixMillis) -> Option<u64> {
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
pub(super) fn in_rotation(s: &ProviderSpec, h: &ProviderHealth, now: UnixMillis) -> bool {
    h.is_healthy(now) && budget_left(s, h, now) != Some(0)
}

/// When the group's earliest spent budget is replenished, if every provider's is spent.
pub(super) fn budgets_reset_in_ms(
    specs: &[ProviderSpec],
    health: &[ProviderHealth],
    now: UnixMillis,
) -> Option<u64> {
    specs
        .iter()
        .zip(health)
        .map(|(s, h)| {
            (budget_left(s, h, now) == Some(0)).then(|| {
                let period = i64::try_from(s.budget_period_ms).unwrap_or(i64::MAX);
                let ends = h.budget_period_start.plus_ms(period);
                u64::try_from(ends.since(now).max(0)).unwrap_or(0)
            })
        })
        .collect::<Option<Vec<u64>>>()?
        .into_iter()
        .min()
}

/// The provider `strategy` chooses among `healthy` (indices in rotation, not empty). Weighted
/// advances the running `scores`; `rand` is the caller's random number (only `p2c` uses it).
pub(super) fn choose(
    strategy: Strategy,
    specs: &[ProviderSpec],
    health: &[ProviderHealth],
    scores: &mut [i64],
    healthy: &[usize],
    now: UnixMillis,
    rand: u64,
) -> usize {
    match strategy {
        Strategy::Weighted => {
            let w = |i: usize| i64::from(specs[i].weight) * health[i].weight_percent(now);
            let total: i64 = healthy.iter().map(|&i| w(i)).sum();
            let mut best = healthy[0];
            for &i in healthy {
                scores[i] += w(i);
                if scores[i] > scores[best] {
                    best = i;
                }
            }
            scores[best] -= total;
            best
        }
        Strategy::LeastLatency => healthy
            .iter()
            .copied()
            .min_by(|&a, &b| latency(&health[a]).total_cmp(&latency(&health[b])))
            .unwrap_or(healthy[0]),
        Strategy::P2c => {
            let n = healthy.len() as u64;
            let a = (rand % n) as usize;
            let b = if n < 2 {
                a
            } else {
                ((a as u64 + 1 + (rand / n) % (n - 1)) % n) as usize
            };
            let (a, b) = (healthy[a], healthy[b]);
            let load =
                |i: usize| (f64::from(health[i].in_flight) + 1.0) * latency(&health[i]).max(1.0);
            if load(b) < load(a) {
                b
            } else {
                a
            }
        }
        Strategy::Cost => {
            let fastest = healthy
                .iter()
                .map(|&i| &health[i])
                .filter(|h| h.requests > 0)
                .map(|h| h.latency_ewma_ms)
                .fold(f64::INFINITY, f64::min);
            let bound = if fastest.is_finite() {
                (fastest * 1.5).max(fastest + 50.0)
            } else {
                f64::INFINITY
            };
            let unit_cost = |i: usize| {
                let h = &health[i];
                let observed = h.cost_micro_usd.checked_div(h.requests).unwrap_or(0);
                observed.max(specs[i].cost_per_request_micro_usd)
            };
            healthy
                .iter()
                .copied()
                .filter(|&i| health[i].requests == 0 || health[i].latency_ewma_ms <= bound)
                .min_by_key(|&i| unit_cost(i))
                .unwrap_or(healthy[0])
        }
    }
}

/// Sorts failover candidates: those in rotation first, in `strategy`'s order (weighted: by
/// running score; least-latency, p2c: by latency; cost: by unit cost), then those out of
/// rotation by when they are back.
pub(super) fn rank(
    strategy: Strategy,
    specs: &[ProviderSpec],
    health: &[ProviderHealth],
    scores: &[i64],
    now: UnixMillis,
    candidates: &mut [usize],
) {
    candidates.sort_by(|&a, &b| {
        let ra = in_rotation(&specs[a], &health[a], now);
        let rb = in_rotation(&specs[b], &health[b], now);
        rb.cmp(&ra).then_with(|| {
            if !ra {
                return health[a].back_at(now).cmp(&health[b].back_at(now));
            }
            match strategy {
                Strategy::Weighted => {
                    let w = |i: usize| {
                        scores[i] + i64::from(specs[i].weight) * health[i].weight_percent(now)
                    };
                    w(b).cmp(&w(a))
                }
                Strategy::LeastLatency | Strategy::P2c => {
                    latency(&health[a]).total_cmp(&latency(&health[b]))
                }
                Strategy::Cost => specs[a]
                    .cost_per_request_micro_usd
                    .cmp(&specs[b].cost_per_request_micro_usd),
            }
        })
    });
}
