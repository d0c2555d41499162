//! Messages for `ExperimentDO`.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::experiment::{Analysis, ArmTally, ExperimentDef};

/// A request to an experiment's object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create or replace the definition (assignments are kept).
    Define {
        /// Experiment name.
        name: String,
        /// Definition.
        def: ExperimentDef,
    },
    /// The unit's arm (sticky).
    Assign {
        /// Experiment name.
        name: String,
        /// The unit (user, tenant, key).
        unit: String,
    },
    /// Record an outcome for an assigned unit.
    Event {
        /// Experiment name.
        name: String,
        /// The unit.
        unit: String,
        /// Whether the primary metric succeeded.
        success: bool,
    },
    /// Definition, tallies and analysis.
    Get {
        /// Experiment name.
        name: String,
    },
    /// Analyse now (and promote if the rule holds); answers the state.
    Analyse {
        /// Experiment name.
        name: String,
    },
}

/// An experiment's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Experiment name.
    pub name: String,
    /// Definition.
    pub def: ExperimentDef,
    /// Per-arm tallies, in variant order.
    pub tallies: Vec<ArmTally>,
    /// The last analysis the alarm computed.
    pub analysis: Option<Analysis>,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
    /// The promoted arm, once concluded.
    pub winner: Option<String>,
    /// Promotions recorded (0 or 1).
    pub promotions: u64,
}

/// A reply from an experiment's object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Stored; `created` is false when it replaced a definition.
    Defined {
        /// New experiment.
        created: bool,
    },
    /// The unit's arm.
    Assigned {
        /// Arm name.
        variant: String,
        /// Arm parameters (JSON object text).
        params: String,
        /// False when the assignment came from storage.
        new: bool,
    },
    /// Outcome recorded for this arm.
    Recorded {
        /// Arm name.
        variant: String,
    },
    /// State.
    State(Box<State>),
}
