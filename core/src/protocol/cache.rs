//! Messages for `CacheShardDO`.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::cache::CacheCounters;

/// How to store an entry (mirrors `cache::PutOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutSpec {
    /// Fresh time.
    pub ttl_ms: u64,
    /// Stale-while-revalidate window.
    pub stale_while_revalidate_ms: u64,
    /// Stale-if-error window.
    pub stale_if_error_ms: u64,
    /// A negative entry.
    pub negative: bool,
    /// Tags.
    pub tags: Vec<String>,
}

/// A request to a cache shard. Keys are `"{namespace}/{key}"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Look a key up.
    Get {
        /// Full key.
        key: String,
        /// The caller's origin failed: the stale-if-error window applies.
        allow_stale_if_error: bool,
        /// Ask for a fill lease of this length on a miss or stale hit.
        lease_ms: Option<u64>,
        /// When another caller holds the lease, wait up to this long for its fill.
        wait_ms: u64,
    },
    /// Store a value (releases the key's lease and wakes its waiters).
    Put {
        /// Full key.
        key: String,
        /// The bytes.
        value: Vec<u8>,
        /// `Content-Type` to answer with.
        content_type: Option<String>,
        /// TTL, windows, negative flag, tags.
        spec: PutSpec,
    },
    /// Remove a key.
    Delete {
        /// Full key.
        key: String,
    },
    /// Remove every entry with any of these tags.
    Purge {
        /// Tags.
        tags: Vec<String>,
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
    /// Counters since the object started (in memory).
    pub counters: CacheCounters,
    /// Entries the expiry sweep removed (persisted).
    pub swept: u64,
    /// Fill leases granted (in memory).
    pub leases_granted: u64,
    /// Callers that waited for another caller's fill (in memory).
    pub coalesced: u64,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
}

/// A cached value as returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The bytes.
    pub value: Vec<u8>,
    /// Stored content type.
    pub content_type: Option<String>,
    /// Age in ms.
    pub age_ms: u64,
    /// Time to live left in ms (0 when stale).
    pub ttl_left_ms: u64,
    /// A negative entry.
    pub negative: bool,
}

/// A reply from a cache shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A fresh entry.
    Hit(Cached),
    /// A stale entry (inside stale-while-revalidate, or stale-if-error when allowed).
    Stale {
        /// The entry.
        cached: Cached,
        /// Served under stale-if-error.
        if_error: bool,
        /// A lease token when this caller should refresh it.
        lease: Option<u64>,
    },
    /// Nothing usable.
    Miss {
        /// There was an entry, past every usable window.
        expired: bool,
        /// A lease token when this caller should fill it.
        lease: Option<u64>,
        /// This caller waited for another caller's fill, which did not arrive in time.
        waited: bool,
    },
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
    /// Purged.
    Purged {
        /// Entries removed.
        removed: u32,
    },
    /// Shard statistics.
    Stats(Stats),
}

/// What a `Get` finds: the three answers a lookup can get, as a type of its own so callers
/// match exhaustively (not a wire type: the wire carries [`Response`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Fresh.
    Hit(Cached),
    /// Past its TTL but inside a stale window.
    Stale {
        /// The entry.
        cached: Cached,
        /// Served only because the caller allowed stale-if-error.
        if_error: bool,
        /// The fill lease, when this caller should refresh it.
        lease: Option<u64>,
    },
    /// Nothing usable.
    Miss {
        /// An entry existed but has expired.
        expired: bool,
        /// The fill lease, when this caller should fill it.
        lease: Option<u64>,
        /// This caller waited for another caller's fill, which did not arrive in time.
        waited: bool,
    },
}

impl Response {
    /// The lookup answer, or `None` when the reply is another variant.
    pub fn into_found(self) -> Option<Found> {
        match self {
            Response::Hit(c) => Some(Found::Hit(c)),
            Response::Stale {
                cached,
                if_error,
                lease,
            } => Some(Found::Stale {
                cached,
                if_error,
                lease,
            }),
            Response::Miss {
                expired,
                lease,
                waited,
            } => Some(Found::Miss {
                expired,
                lease,
                waited,
            }),
            _ => None,
        }
    }
}
