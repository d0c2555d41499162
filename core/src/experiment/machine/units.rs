//! Requests about units: assignment (sticky) and outcome events (which count).

use super::{not_loaded, Machine};
use crate::experiment::{covered, Change, ExperimentDef, MetricKind, Writes, PRIMARY_ALIAS};
use crate::protocol::experiment::{Response as Reply, Status};
use crate::{GatewayError, UnixMillis};

/// Largest magnitude accepted for a metric value.
pub const MAX_VALUE: f64 = 1e12;

fn bad(detail: String) -> GatewayError {
    GatewayError::bad_request("invalid-experiment-event", detail)
}

/// The answer to an assignment: arm `arm`'s parameters (the control's if out of range).
fn assigned(def: &ExperimentDef, arm: usize, new: bool, counted: bool) -> Reply {
    let v = def.variants.get(arm).or(def.variants.first());
    Reply::Assigned {
        variant: v.map(|v| v.name.clone()).unwrap_or_default(),
        params: v.map(|v| v.params.clone()).unwrap_or_default(),
        new,
        counted,
    }
}

impl Machine {
    pub(super) fn assign_unit(
        &mut self,
        unit: &str,
        stored: Option<&str>,
        now: UnixMillis,
        w: &mut Writes,
    ) -> Result<(Reply, bool), GatewayError> {
        let (_, def) = self.def.as_ref().ok_or_else(not_loaded)?;
        match self.status {
            Status::Concluded => {
                // Everyone gets the promoted configuration. A unit seen for the first time is
                // recorded on the winner, so its outcomes still count.
                let i = self
                    .winner
                    .as_deref()
                    .and_then(|a| def.position(a))
                    .unwrap_or(0);
                let winner = def
                    .variants
                    .get(i)
                    .map(|v| v.name.as_str())
                    .ok_or_else(|| GatewayError::Internal("the experiment has no arms".into()))?;
                let new = stored.is_none();
                if new {
                    w.push(Change::Assignment {
                        unit: unit.into(),
                        arm: winner.into(),
                        at: now,
                    });
                }
                let counted = stored.is_none_or(|s| s == winner);
                return Ok((assigned(def, i, new, counted), new));
            }
            Status::Paused | Status::Halted | Status::RolledBack => {
                return Ok((assigned(def, 0, false, false), false));
            }
            Status::Running => {}
        }
        if let Some(i) = stored.and_then(|a| def.position(a)) {
            // Sticky. A retired arm's units get the control and are no longer counted.
            let retired = def.variants.get(i).is_some_and(|v| v.retired);
            return Ok(if retired {
                (assigned(def, 0, false, false), false)
            } else {
                (assigned(def, i, false, true), false)
            });
        }
        if !covered(def, unit) {
            return Ok((assigned(def, 0, false, false), false));
        }
        let i = crate::experiment::assign(def, unit);
        let arm = def
            .variants
            .get(i)
            .map(|v| v.name.clone())
            .ok_or_else(|| GatewayError::Internal("assignment out of range".into()))?;
        *self.assigned.entry(arm.clone()).or_default() += 1;
        w.push(Change::Assignment {
            unit: unit.into(),
            arm: arm.clone(),
            at: now,
        });
        w.push(Change::Assigned { arm });
        Ok((assigned(def, i, true, true), true))
    }

    /// One outcome event (`name` as the request spelled it, for the error).
    pub(super) fn event(
        &mut self,
        name: &str,
        unit: &str,
        values: &[(String, f64)],
        stored: Option<&str>,
        w: &mut Writes,
    ) -> Result<(Reply, bool), GatewayError> {
        let (_, def) = self.def.as_ref().ok_or_else(not_loaded)?;
        // Validate everything before changing anything.
        let mut tracked = Vec::new();
        let mut ignored = Vec::new();
        for (metric, v) in values {
            let metric = if metric == PRIMARY_ALIAS {
                &def.primary.name
            } else {
                metric
            };
            match def.metrics().find(|m| &m.name == metric) {
                Some(m) => {
                    if !v.is_finite() || v.abs() > MAX_VALUE {
                        return Err(bad(format!("{metric} must be a finite number")));
                    }
                    if m.kind == MetricKind::Binary && *v != 0.0 && *v != 1.0 {
                        return Err(bad(format!("{metric} is binary: send 0 or 1")));
                    }
                    tracked.push((m.name.as_str(), *v));
                }
                None => ignored.push(metric.clone()),
            }
        }
        let status = self.status;
        let Some(arm) = stored else {
            if !covered(def, unit) || status != Status::Running {
                let control = def.variants.first().map(|v| v.name.clone());
                let reply = Reply::Recorded {
                    variant: control.unwrap_or_default(),
                    counted: false,
                    ignored,
                };
                return Ok((reply, false));
            }
            return Err(GatewayError::Conflict(format!(
                "unit {unit} was never assigned in {name}: assign it first"
            )));
        };
        let counted = matches!(status, Status::Running | Status::Concluded)
            && def
                .position(arm)
                .and_then(|i| def.variants.get(i))
                .is_some_and(|v| !v.retired)
            && (status != Status::Concluded || self.winner.as_deref() == Some(arm));
        if counted {
            let per_metric = self.moments.entry(arm.to_string()).or_default();
            for (metric, value) in tracked {
                per_metric.entry(metric.to_string()).or_default().add(value);
                w.push(Change::Observed {
                    arm: arm.into(),
                    metric: metric.into(),
                    value,
                });
            }
        }
        let reply = Reply::Recorded {
            variant: arm.to_string(),
            counted,
            ignored,
        };
        Ok((reply, counted))
    }
}
