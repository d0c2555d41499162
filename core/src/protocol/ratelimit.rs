//! Messages for `RateLimiterDO`.
//!
//! Policies are resolved inside the object: its stored overrides (set by the admin fan-out)
//! over the defaults from configuration. The decision reply carries the policy so the worker can
//! render the `RateLimit-Policy` header without a lookup of its own.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::keys::{Admission, Admitted, KeyRecord, KeyView, Refusal};
use crate::rate_limit::policy::Policy;
use crate::rate_limit::Decision;

/// The effective-policy listing's domain types, re-exported at their wire path.
pub use crate::rate_limit::policy::{PolicyEntry, PolicySource};

/// A request to a rate-limiter shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Consume `cost` from `key` under the named policy.
    Take {
        /// Policy name.
        policy_name: String,
        /// Caller key.
        key: String,
        /// Cost units.
        cost: u64,
    },
    /// Decide without consuming.
    Peek {
        /// Policy name.
        policy_name: String,
        /// Caller key.
        key: String,
        /// Cost units.
        cost: u64,
    },
    /// Forget a key's state under a policy.
    Reset {
        /// Policy name.
        policy_name: String,
        /// Caller key.
        key: String,
    },
    /// Shard statistics.
    Stats,
    /// Create, replace (`Some`) or delete (`None`) a policy override. Without a version the
    /// object assigns one (the registry shard does this); with one, older versions are ignored.
    PutPolicy {
        /// Policy name.
        name: String,
        /// The definition, or `None` to delete.
        policy: Option<Policy>,
        /// Ordering of updates.
        version: Option<i64>,
    },
    /// The effective policies.
    ListPolicies,
    /// Store a new virtual key (its id routes it to this shard).
    CreateKey(Box<KeyRecord>),
    /// One key's view.
    GetKey {
        /// Key id.
        id: String,
    },
    /// Every key this shard holds.
    ListKeys,
    /// Revoke a key (takes effect for the next admission).
    RevokeKey {
        /// Key id.
        id: String,
    },
    /// Admit a request under a key: identity, allowed model, budgets, token windows, request
    /// rate; on success a reservation of the estimate.
    Admit {
        /// Key id (from the secret).
        id: String,
        /// SHA-256 of the secret, hex.
        hash: String,
        /// What the request asks.
        ask: Admission,
    },
    /// Settle a reservation with the real usage and cost.
    SettleKey {
        /// Key id.
        id: String,
        /// The reservation.
        reservation: u64,
        /// Real tokens (prompt + completion), if the answer reported them.
        tokens: Option<u64>,
        /// Cost, micro-USD.
        cost_micro_usd: u64,
    },
}

/// Per-policy decision counters of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounters {
    /// Policy name.
    pub policy: String,
    /// Allowed takes.
    pub allowed: u64,
    /// Denied takes.
    pub denied: u64,
    /// Takes shadow mode would have denied.
    pub shadow_denied: u64,
}

impl PolicyCounters {
    /// The sum of `counters`, under the name `policy`.
    pub fn total<'a>(policy: &str, counters: impl IntoIterator<Item = &'a PolicyCounters>) -> Self {
        counters.into_iter().fold(
            PolicyCounters {
                policy: policy.into(),
                ..PolicyCounters::default()
            },
            |mut t, c| {
                t.allowed += c.allowed;
                t.denied += c.denied;
                t.shadow_denied += c.shadow_denied;
                t
            },
        )
    }
}

/// Counters of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Stored token-bucket rows (buckets not yet full).
    pub buckets: u64,
    /// Stored sliding-window rows.
    pub windows: u64,
    /// Allowed takes (all policies).
    pub allowed: u64,
    /// Denied takes (all policies).
    pub denied: u64,
    /// Shadow-mode would-be denials (all policies).
    pub shadow_denied: u64,
    /// Idle rows removed by the alarm.
    pub collected: u64,
    /// Per policy.
    pub policies: Vec<PolicyCounters>,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
}

/// A reply from a rate-limiter shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The decision of a take or peek.
    Decision {
        /// The decision (in shadow mode never a denial).
        decision: Decision,
        /// Shadow mode would have denied.
        shadow_denied: bool,
        /// The policy that decided.
        policy: Policy,
    },
    /// Whether a reset removed state.
    Reset {
        /// State existed.
        existed: bool,
    },
    /// Shard statistics.
    Stats(Stats),
    /// A policy change was applied (or ignored as older) with this version.
    PolicyStored {
        /// The version now stored for the name.
        version: i64,
    },
    /// The effective policies.
    Policies(Vec<PolicyEntry>),
    /// One key.
    Key(Box<KeyView>),
    /// Keys.
    Keys(Vec<KeyView>),
    /// An admission: admitted, or refused (a value, like a rate-limit denial).
    Admission(Box<Result<Admitted, Refusal>>),
    /// Whether a settle found its reservation in flight.
    KeySettled {
        /// It did (false: already settled or expired; nothing changed).
        settled: bool,
    },
}
