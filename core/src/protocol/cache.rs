//! Messages for `CacheShardDO`.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::cache::CacheCounters;

/// A request to a cache shard. Keys are `"{namespace}/{key}"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Look a key up.
    Get {
        /// Full key.
        key: String,
    },
    /// Store a value.
    Put {
        /// Full key.
        key: String,
        /// The bytes.
        value: Vec<u8>,
        /// `Content-Type` to answer with.
        content_type: Option<String>,
        /// Time to live.
        ttl_ms: u64,
    },
    /// Remove a key.
    Delete {
        /// Full key.
        key: String,
    },
    /// Shard statistics.
    Stats,
}

/// Shard statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held (weights).
    pub bytes: u64,
    /// Entry cap.
    pub max_entries: u64,
    /// Byte cap.
    pub max_bytes: u64,
    /// Counters since the object started.
    pub counters: CacheCounters,
    /// Entries the expiry sweep removed (persisted).
    pub swept: u64,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
}

/// A reply from a cache shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A fresh entry.
    Hit {
        /// The bytes.
        value: Vec<u8>,
        /// Stored content type.
        content_type: Option<String>,
        /// Age in ms.
        age_ms: u64,
        /// Time to live left in ms.
        ttl_left_ms: u64,
    },
    /// Nothing stored.
    Miss,
    /// An entry existed but had expired (now removed).
    Expired,
    /// Stored.
    Stored {
        /// Entries evicted to make room.
        evicted: u32,
    },
    /// Deleted.
    Deleted {
        /// Whether it existed.
        existed: bool,
    },
    /// Shard statistics.
    Stats(Stats),
}
