//! Messages for `RateLimiterDO`.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::rate_limit::{Decision, TokenBucketPolicy};

/// A request to a rate-limiter shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Consume `cost` tokens from `key` under `policy`.
    Take {
        /// Policy name (part of the bucket identity).
        policy_name: String,
        /// The policy's numbers (the worker resolves them).
        policy: TokenBucketPolicy,
        /// Caller key.
        key: String,
        /// Tokens.
        cost: u64,
    },
    /// Decide without consuming.
    Peek {
        /// Policy name.
        policy_name: String,
        /// Policy numbers.
        policy: TokenBucketPolicy,
        /// Caller key.
        key: String,
        /// Tokens.
        cost: u64,
    },
    /// Forget a key's state.
    Reset {
        /// Policy name.
        policy_name: String,
        /// Caller key.
        key: String,
    },
    /// Shard statistics.
    Stats,
}

/// Counters of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Stored (non-full) buckets.
    pub buckets: u64,
    /// Allowed takes.
    pub allowed: u64,
    /// Denied takes.
    pub denied: u64,
    /// Idle buckets removed by the alarm.
    pub collected: u64,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
}

/// A reply from a rate-limiter shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The decision of a take or peek.
    Decision(Decision),
    /// Whether a reset removed state.
    Reset {
        /// A bucket existed.
        existed: bool,
    },
    /// Shard statistics.
    Stats(Stats),
}
