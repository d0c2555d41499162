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
//!
//! Layout: `spec` (what a provider is and how it is validated), `health` (the per-provider
//! state and how outcomes and probes move its circuit), `strategy` (how a pick is chosen and
//! ranked, and budgets); this module holds the [`Balancer`] that ties them together and
//! re-exports their public types.

pub mod group;
mod health;
mod spec;
mod strategy;
#[cfg(test)]
mod tests;

/// The latency sketch, at its former path (it lives in [`crate::sketch`]).
pub use crate::sketch;
pub use group::Group;
pub use health::{
    Circuit, EjectionPolicy, ErrorClass, Outcome, ProviderHealth, FAILURE_MIN_SAMPLE,
    FAILURE_RATE_PERCENT, FAILURE_WINDOW_MS, HALF_OPEN_MAX_IN_FLIGHT, SLOW_START_MS,
};
pub use spec::{validate_group, ProviderSpec};
pub use strategy::{Pick, Preference, Strategy};

use crate::UnixMillis;

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
        strategy::budget_left(self.specs.get(i)?, self.health.get(i)?, now)
    }

    /// In rotation: healthy and with budget left.
    pub fn in_rotation(&self, i: usize, now: UnixMillis) -> bool {
        strategy::in_rotation(&self.specs[i], &self.health[i], now)
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
            self.health[i].reserve(now, false);
            return Some(Pick::of(&self.specs[i], true));
        }
        let preferred = pref
            .provider
            .as_deref()
            .and_then(|p| self.position(p))
            .filter(|i| healthy.contains(i));
        let best = match preferred {
            Some(i) => i,
            None => strategy::choose(
                pref.strategy.unwrap_or(self.strategy),
                &self.specs,
                &self.health,
                &mut self.scores,
                &healthy,
                now,
                rand,
            ),
        };
        self.health[best].reserve(now, true);
        Some(Pick::of(&self.specs[best], false))
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
        let mut rest: Vec<usize> = (0..self.specs.len())
            .filter(|&i| self.specs[i].name != first.name && !spent.contains(&self.specs[i].name))
            .collect();
        strategy::rank(
            pref.strategy.unwrap_or(self.strategy),
            &self.specs,
            &self.health,
            &self.scores,
            now,
            &mut rest,
        );
        let mut picks = vec![first];
        for i in rest.into_iter().take(max - 1) {
            let panic = !self.in_rotation(i, now);
            self.health[i].reserve(now, !panic);
            picks.push(Pick::of(&self.specs[i], panic));
        }
        picks
    }

    /// When the group's earliest spent budget is replenished, if every provider's is spent.
    pub fn budgets_reset_in_ms(&self, now: UnixMillis) -> Option<u64> {
        strategy::budgets_reset_in_ms(&self.specs, &self.health, now)
    }

    /// Returns a reserved but unused candidate (see [`Balancer::pick_ranked`]); `panic` as
    /// it was picked (a panic pick holds no half-open trial slot).
    pub fn release(&mut self, name: &str, panic: bool, now: UnixMillis) -> Option<usize> {
        let i = self.position(name)?;
        self.health[i].release(panic, now);
        Some(i)
    }

    /// Records an outcome for `name`; returns the provider's index when it changed.
    pub fn report(&mut self, name: &str, outcome: Outcome, now: UnixMillis) -> Option<usize> {
        let i = self.position(name)?;
        let s = &self.specs[i];
        let period = i64::try_from(s.budget_period_ms).unwrap_or(i64::MAX);
        let cost = s.cost_of(&outcome);
        health::report(&mut self.health, i, outcome, cost, period, self.policy, now);
        Some(i)
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
        health::on_probe(&mut self.health, i, ok, self.policy, now);
        Some(i)
    }
}
