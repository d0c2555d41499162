//! `ProviderHealthDO`: `providers:{group}` owns one provider group's health, budgets and
//! in-flight reservations.

use gateway_core::balancer::{Outcome, Pick, Preference, ProviderSpec, Strategy};
use gateway_core::protocol::providers::{GroupStatus, Request, Response};
use worker::Env;

use super::{binding, reply, Namespace};
use crate::error::AppResult;

/// The provider groups.
pub struct Providers<'a> {
    ns: Namespace<'a>,
}

impl<'a> Providers<'a> {
    /// The client.
    pub fn new(env: &'a Env) -> Self {
        Providers {
            ns: Namespace::new(env, binding::PROVIDER_HEALTH, "provider health"),
        }
    }

    fn owner(group: &str) -> String {
        format!("providers:{group}")
    }

    /// The group's live status.
    pub async fn status(&self, group: &str) -> AppResult<GroupStatus> {
        let msg = Request::Status {
            group: group.into(),
        };
        reply!(self.ns, &Self::owner(group), &msg, Response::Status(s) => s)
    }

    /// Replaces the group's providers; how many it has now.
    pub async fn configure(
        &self,
        group: &str,
        providers: Vec<ProviderSpec>,
        strategy: Strategy,
    ) -> AppResult<u32> {
        let msg = Request::Configure {
            group: group.into(),
            providers,
            strategy,
        };
        reply!(self.ns, &Self::owner(group), &msg, Response::Configured { providers } => providers)
    }

    /// One pick (for callers that do their own upstream calls).
    pub async fn pick(&self, group: &str) -> AppResult<Pick> {
        let msg = Request::Pick {
            group: group.into(),
            exclude: Vec::new(),
            prefer: Preference::default(),
        };
        reply!(self.ns, &Self::owner(group), &msg, Response::Picked(p) => p)
    }

    /// Reports one outcome of a pick.
    pub async fn report(&self, group: &str, provider: String, outcome: Outcome) -> AppResult<()> {
        let msg = Request::Report {
            group: group.into(),
            provider,
            outcome,
        };
        reply!(self.ns, &Self::owner(group), &msg, Response::Reported => ())
    }

    /// The proxy's one pick hop: up to `max` ranked, reserved candidates, and when every
    /// budget is spent, when the first resets.
    pub async fn candidates(
        &self,
        group: &str,
        prefer: Preference,
        max: u8,
    ) -> AppResult<(Vec<Pick>, Option<u64>)> {
        let msg = Request::PickRanked {
            group: group.into(),
            prefer,
            max,
        };
        reply!(self.ns, &Self::owner(group), &msg,
            Response::Candidates { picks, budget_resets_in_ms } => (picks, budget_resets_in_ms))
    }

    /// Settles a proxied request: its outcomes and the candidates it did not use.
    pub async fn settle(
        &self,
        group: &str,
        outcomes: Vec<(String, Outcome)>,
        released: Vec<(String, bool)>,
    ) -> AppResult<()> {
        let msg = Request::Settle {
            group: group.into(),
            outcomes,
            released,
        };
        reply!(self.ns, &Self::owner(group), &msg, Response::Reported => ())
    }
}
