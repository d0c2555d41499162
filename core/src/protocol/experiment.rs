//! Messages for `ExperimentDO`.
//!
//! Two kinds of object share the class: one per experiment (`experiment:{name}`) and the index
//! (`experiment-index`), which lists experiments and their proxy targets.

use serde::{Deserialize, Serialize};

use super::ObjectStats;
use crate::experiment::{Analysis, ArmData, ExperimentDef, Target};
use crate::UnixMillis;

/// The lifecycle of an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Assigning units and analysing.
    Running,
    /// Everyone gets the control; nothing is counted (an admin paused it).
    Paused,
    /// A winner was promoted: everyone gets its parameters.
    Concluded,
    /// Every treatment was rolled back: everyone gets the control.
    RolledBack,
    /// Sample-ratio mismatch: everyone gets the control until an admin resumes it.
    Halted,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Concluded => "concluded",
            Status::RolledBack => "rolled_back",
            Status::Halted => "halted",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "running" => Status::Running,
            "paused" => Status::Paused,
            "concluded" => Status::Concluded,
            "rolled_back" => Status::RolledBack,
            "halted" => Status::Halted,
            _ => return None,
        })
    }
}

/// A decision the experiment took (recorded once, with the statistics behind it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `promote`, `rollback`, `halt`, `pause`, `resume`, `retire`.
    pub kind: String,
    /// The arm concerned, if any.
    pub arm: Option<String>,
    /// When.
    pub at: UnixMillis,
    /// Why (the verdict's reason or the admin action).
    pub reason: String,
}

/// A request to an experiment's object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Record outcomes for an assigned unit: (metric, value) pairs.
    Event {
        /// Experiment name.
        name: String,
        /// The unit.
        unit: String,
        /// Metric values; names not tracked by the experiment are ignored.
        values: Vec<(String, f64)>,
    },
    /// Record a batch of outcomes: (unit, metric values) each. Events that fail validation or
    /// belong to units never assigned are skipped and counted.
    Events {
        /// Experiment name.
        name: String,
        /// (unit, values).
        events: Vec<(String, Vec<(String, f64)>)>,
    },
    /// Definition, tallies and analysis.
    Get {
        /// Experiment name.
        name: String,
    },
    /// Analyse now (and promote or roll back if the rule says so); answers the state.
    Analyse {
        /// Experiment name.
        name: String,
    },
    /// Pause (`true`) or resume (`false`); answers the state.
    Pause {
        /// Experiment name.
        name: String,
        /// Pause or resume.
        paused: bool,
    },
    /// Retire an arm (no new units; its units get the control); answers the state.
    Retire {
        /// Experiment name.
        name: String,
        /// Arm name.
        arm: String,
    },
    /// Delete the experiment and all its data.
    Delete {
        /// Experiment name.
        name: String,
    },
    /// Index: record an experiment (and its target) as defined.
    IndexPut {
        /// Experiment name.
        name: String,
        /// Its proxy target.
        target: Option<Target>,
    },
    /// Index: record an experiment as deleted (hides a configured one).
    IndexDelete {
        /// Experiment name.
        name: String,
    },
    /// Index: everything recorded.
    IndexList,
}

/// An experiment's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Experiment name.
    pub name: String,
    /// Definition.
    pub def: ExperimentDef,
    /// Per-arm data, in variant order.
    pub data: Vec<ArmData>,
    /// The last analysis the alarm computed.
    pub analysis: Option<Analysis>,
    /// Lifecycle.
    pub status: Status,
    /// Alarm and schema bookkeeping.
    pub object: ObjectStats,
    /// The promoted arm, once concluded.
    pub winner: Option<String>,
    /// Promotions recorded (0 or 1).
    pub promotions: u64,
    /// Decisions, oldest first.
    pub decisions: Vec<Decision>,
}

/// One index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Experiment name.
    pub name: String,
    /// Its proxy target.
    pub target: Option<Target>,
    /// Deleted by an admin (hides an experiment from configuration).
    pub deleted: bool,
}

/// A reply from an experiment's object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Stored; `created` is false when it replaced a definition.
    Defined {
        /// New experiment.
        created: bool,
    },
    /// The parameters a unit gets.
    Assigned {
        /// The arm whose parameters apply.
        variant: String,
        /// Those parameters (JSON object text).
        params: String,
        /// True when this call assigned the unit.
        new: bool,
        /// Whether the unit's outcomes are counted (false outside coverage, on a retired arm,
        /// or when the experiment is paused, halted or rolled back).
        counted: bool,
    },
    /// Outcome handled.
    Recorded {
        /// The unit's arm.
        variant: String,
        /// Whether it was counted.
        counted: bool,
        /// Metric names the experiment does not track.
        ignored: Vec<String>,
    },
    /// A batch handled.
    RecordedMany {
        /// Events counted.
        counted: u32,
        /// Events skipped (invalid, never assigned, or not counted).
        skipped: u32,
    },
    /// Deleted; false when there was nothing.
    Deleted {
        /// Whether it existed.
        existed: bool,
    },
    /// State.
    State(Box<State>),
    /// The index.
    Index(Vec<IndexEntry>),
}
