//! Messages for `AggregatorDO`.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::rollup::{IngestResult, MetricEvent, Window};
use crate::UnixMillis;

/// A request to an aggregator shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Record a batch of events.
    Ingest {
        /// Events.
        events: Vec<MetricEvent>,
    },
    /// Windows at or after `since`.
    Snapshot {
        /// Start (inclusive).
        since: UnixMillis,
    },
    /// Shard statistics.
    Stats,
}

/// Shard statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Windows stored.
    pub windows: u64,
    /// Minutes before this are sealed.
    pub sealed_before: UnixMillis,
    /// Windows sealed by alarms so far.
    pub sealed_windows: u64,
    /// Events accepted so far.
    pub events: u64,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
}

/// A reply from an aggregator shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Batch result.
    Ingested(IngestResult),
    /// Windows by minute.
    Snapshot {
        /// (minute start, window).
        windows: Vec<(UnixMillis, Window)>,
    },
    /// Shard statistics.
    Stats(Stats),
}
