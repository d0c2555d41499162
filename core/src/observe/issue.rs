//! The types alerting and the `/metrics` documents share: how serious something is
//! ([`Severity`]) and an active problem shown in the health section ([`Issue`]).
//!
//! They live here, apart from both users, so that [`super::alerts`] (which turns firing alerts
//! into issues) and [`super::export`] (which renders them) depend on this module and not on each
//! other. Both re-export them under their old paths.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Degraded.
    Warning,
    /// Critical.
    Critical,
}

impl Severity {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An active issue (a firing alert or an ejected provider), for the health section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    /// Severity.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// Since when.
    pub since: UnixMillis,
}
