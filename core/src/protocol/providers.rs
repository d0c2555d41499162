//! Messages for `ProviderHealthDO`. Append-only: new variants go at the end, so objects and
//! front workers of different versions keep understanding each other during a rollout.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::balancer::{Circuit, Outcome, Pick, Preference, ProviderHealth, ProviderSpec, Strategy};

/// A request to a provider group's object. Every message names the group, so the object knows
/// which defaults from configuration apply on first use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Pick a provider.
    Pick {
        /// Group name.
        group: String,
        /// Providers this request already tried (failover).
        exclude: Vec<String>,
        /// An experiment arm's preference (provider or strategy).
        prefer: Preference,
    },
    /// Report an outcome.
    Report {
        /// Group name.
        group: String,
        /// Provider name.
        provider: String,
        /// What happened.
        outcome: Outcome,
    },
    /// Replace the group's providers (admin).
    Configure {
        /// Group name.
        group: String,
        /// The new providers.
        providers: Vec<ProviderSpec>,
        /// How to choose among them.
        strategy: Strategy,
    },
    /// Several outcomes of one proxied request (its attempts), in order.
    ReportMany {
        /// Group name.
        group: String,
        /// (provider, outcome) per attempt.
        outcomes: Vec<(String, Outcome)>,
    },
    /// Live state.
    Status {
        /// Group name.
        group: String,
    },
    /// Ranked candidates for one request (the proxy's one hop: failover needs no further
    /// round trip). Each is reserved until [`Request::Settle`] reports or releases it.
    PickRanked {
        /// Group name.
        group: String,
        /// An experiment arm's preference (provider or strategy).
        prefer: Preference,
        /// Most candidates wanted.
        max: u8,
    },
    /// A proxied request's end: the outcome of every attempt, in order, and the candidates it
    /// reserved but never tried (name, `panic` as picked).
    Settle {
        /// Group name.
        group: String,
        /// (provider, outcome) per attempt.
        outcomes: Vec<(String, Outcome)>,
        /// Unused candidates.
        released: Vec<(String, bool)>,
    },
}

impl Request {
    /// The group the message is about.
    pub fn group(&self) -> &str {
        match self {
            Request::Pick { group, .. }
            | Request::Report { group, .. }
            | Request::Configure { group, .. }
            | Request::ReportMany { group, .. }
            | Request::Status { group }
            | Request::PickRanked { group, .. }
            | Request::Settle { group, .. } => group,
        }
    }
}

/// One provider's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderStatus {
    /// Configuration.
    pub spec: ProviderSpec,
    /// In rotation now.
    pub healthy: bool,
    /// Health counters.
    pub health: ProviderHealth,
    /// Budget left in the current period, micro-USD (when the provider has a budget).
    pub budget_left_micro_usd: Option<u64>,
    /// Circuit state now.
    pub circuit: Circuit,
    /// Median latency (1 % relative error).
    pub latency_p50_ms: Option<f64>,
    /// 95th percentile latency.
    pub latency_p95_ms: Option<f64>,
    /// 99th percentile latency.
    pub latency_p99_ms: Option<f64>,
}

/// A group's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group name.
    pub group: String,
    /// How the group chooses.
    pub strategy: Strategy,
    /// Providers.
    pub providers: Vec<ProviderStatus>,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
}

/// A reply from a provider group's object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The chosen provider.
    Picked(Pick),
    /// Outcome recorded.
    Reported,
    /// Configuration stored.
    Configured {
        /// Number of providers.
        providers: u32,
    },
    /// Live state.
    Status(GroupStatus),
    /// Ranked candidates (empty when every provider's budget is spent; then
    /// `budget_resets_in_ms` says when the first is replenished).
    Candidates {
        /// Best first.
        picks: Vec<Pick>,
        /// Time until the earliest spent budget resets, when every budget is spent.
        budget_resets_in_ms: Option<u64>,
    },
}
