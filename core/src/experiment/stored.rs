//! What a [`super::Machine`] is built from and what it asks of storage: the loaded rows
//! ([`Stored`]), the per-request look-ups ([`Known`]) and the changes to persist ([`Change`]).

use std::collections::BTreeMap;

use super::{Analysis, ExperimentDef, LegacyDef, Moments};
use crate::protocol::experiment::{Decision, Status};
use crate::{GatewayError, UnixMillis};

/// Layout of the stored definition (1: before metrics and guardrails, decoded as [`LegacyDef`]).
pub const DEF_LAYOUT: i64 = 2;
/// Decisions kept in memory and answered with the state (the newest).
pub const DECISIONS_SHOWN: usize = 50;

/// The stored definition row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDef {
    /// The experiment's name.
    pub name: String,
    /// The layout the definition was written in ([`DEF_LAYOUT`], or older).
    pub layout: i64,
    /// The postcard-encoded definition.
    pub def: Vec<u8>,
}

impl StoredDef {
    /// The definition, upgrading the layout stored before guardrails ([`LegacyDef`]).
    pub fn decode(&self) -> Result<ExperimentDef, GatewayError> {
        Ok(if self.layout == DEF_LAYOUT {
            postcard::from_bytes::<ExperimentDef>(&self.def)?
        } else {
            postcard::from_bytes::<LegacyDef>(&self.def)?.into()
        })
    }
}

/// The rows of one experiment, as the adapter loaded them (absent rows: the defaults).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// The definition, if one is stored.
    pub definition: Option<StoredDef>,
    /// An admin deleted the experiment (a configured one is then not adopted again).
    pub deleted: bool,
    /// The lifecycle status as stored (absent: running).
    pub status: Option<String>,
    /// The promoted arm.
    pub winner: Option<String>,
    /// Promotions recorded.
    pub promotions: u64,
    /// Units assigned per arm: (arm, units).
    pub assigned: Vec<(String, u64)>,
    /// Metric moments per arm: (arm, metric, moments).
    pub moments: Vec<(String, String, Moments)>,
    /// The last analysis snapshot (postcard; one in an older layout is dropped).
    pub analysis: Option<Vec<u8>>,
    /// The newest decisions, oldest first (at most [`DECISIONS_SHOWN`] are kept).
    pub decisions: Vec<Decision>,
}

/// One change storage must make, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace the definition (layout [`DEF_LAYOUT`], updated at `at`).
    Definition {
        /// Experiment name.
        name: String,
        /// The definition.
        def: ExperimentDef,
        /// When.
        at: UnixMillis,
    },
    /// Set or clear the "deleted by an admin" flag.
    Deleted(bool),
    /// Insert or replace a unit's arm.
    Assignment {
        /// The unit.
        unit: String,
        /// Its arm.
        arm: String,
        /// When.
        at: UnixMillis,
    },
    /// One more unit assigned to `arm`.
    Assigned {
        /// The arm.
        arm: String,
    },
    /// One observation added to the moments of `metric` in `arm` (`n + 1`, `Σx + v`, `Σx² + v²`).
    Observed {
        /// The arm.
        arm: String,
        /// The metric.
        metric: String,
        /// The value.
        value: f64,
    },
    /// The lifecycle status.
    Status(Status),
    /// `arm` was promoted: store it as the winner, count the promotion, record when.
    Promoted {
        /// The winner.
        arm: String,
        /// When.
        at: UnixMillis,
    },
    /// Replace the analysis snapshot.
    Analysis {
        /// The snapshot.
        snapshot: Analysis,
        /// When it was computed.
        at: UnixMillis,
    },
    /// Append to the decisions log.
    Decision(Decision),
    /// Erase the definition, assignments, tallies, analysis, decisions, winner, promotions and
    /// status (the experiment was deleted).
    Erased,
}

/// What storage must change after a call, in order.
pub type Writes = Vec<Change>;

/// What the adapter read for one request besides the loaded state.
#[derive(Debug, Clone)]
pub struct Known<'a> {
    /// The stored arm of each unit of [`Machine::units`] that has one (read before the call).
    pub arms: BTreeMap<String, String>,
    /// The configured experiments (`EXPERIMENTS`), adopted on first use.
    pub configured: &'a BTreeMap<String, ExperimentDef>,
}

/// What an alarm run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// What storage must change.
    pub writes: Writes,
    /// Whether the run counts as an alarm run (false when no experiment is defined here).
    pub ran: bool,
}
