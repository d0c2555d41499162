//! The lifecycle: pause and resume, the analysis and its verdict (promote, roll back, halt),
//! retiring arms, the decisions log and the state answered.

use super::{not_loaded, Machine};
use crate::experiment::DECISIONS_SHOWN;
use crate::experiment::{analyse, Analysis, ArmData, Change, ExperimentDef, Verdict, Writes};
use crate::protocol::experiment::{Decision, Response as Reply, State, Status};
use crate::protocol::ObjectStats;
use crate::{GatewayError, UnixMillis};

/// The statistics behind a promotion, for the decisions log.
fn promotion_reason(a: &Analysis, arm: &str) -> String {
    a.arms
        .iter()
        .find(|x| x.name == arm)
        .and_then(|x| x.metrics.first())
        .map_or_else(
            || "the decision rule held".into(),
            |m| {
                let (effect, lo, hi) = m
                    .vs_control
                    .map_or((0.0, 0.0, 0.0), |r| (r.effect, r.ci_low, r.ci_high));
                format!(
                    "{} improved by {effect:+.4} (95% CI {lo:+.4} to {hi:+.4}, sequential p = {:.2e}, n = {})",
                    m.metric, m.sequential_p, m.n
                )
            },
        )
}

impl Machine {
    pub(super) fn pause(
        &mut self,
        name: &str,
        paused: bool,
        now: UnixMillis,
        w: &mut Writes,
    ) -> Result<(Reply, bool), GatewayError> {
        let next = match (self.status, paused) {
            (Status::Running, true) => Some(Status::Paused),
            (Status::Paused | Status::Halted, false) => Some(Status::Running),
            (Status::Paused, true) | (Status::Running, false) => None,
            (s, _) => {
                return Err(GatewayError::Conflict(format!(
                    "experiment {name} is {}: it cannot be {}",
                    s.as_str(),
                    if paused { "paused" } else { "resumed" }
                )))
            }
        };
        if let Some(next) = next {
            self.set_status(next, w);
            let kind = if paused { "pause" } else { "resume" };
            self.decide(kind, None, format!("admin {kind}"), now, w);
        }
        Ok((self.state()?, next == Some(Status::Running)))
    }

    /// Analyses now and acts on the verdict. Returns whether the experiment is still running.
    pub(super) fn analyse_now(&mut self, now: UnixMillis, w: &mut Writes) -> bool {
        if self.status != Status::Running {
            return false;
        }
        let Some((_, def)) = &self.def else {
            return false;
        };
        let analysis = analyse(def, &self.data(def), self.analysis.as_ref());
        let verdict = analysis.verdict.clone();
        let reason = match &verdict {
            Verdict::Promote(arm) => promotion_reason(&analysis, arm),
            _ => String::new(),
        };
        w.push(Change::Analysis {
            snapshot: analysis.clone(),
            at: now,
        });
        self.analysis = Some(analysis);
        match verdict {
            Verdict::Promote(arm) => {
                self.winner = Some(arm.clone());
                self.promotions += 1;
                w.push(Change::Promoted {
                    arm: arm.clone(),
                    at: now,
                });
                self.set_status(Status::Concluded, w);
                self.decide("promote", Some(arm), reason, now, w);
                false
            }
            Verdict::Rollback(arm, reason) => self.retire(&arm, "rollback", &reason, now, w),
            Verdict::Halt(reason) => {
                self.set_status(Status::Halted, w);
                self.decide("halt", None, reason, now, w);
                false
            }
            Verdict::Continue(_) => true,
        }
    }

    /// Retires `arm` (by an admin or a rollback) and records the decision; when no treatment is
    /// left, the experiment is rolled back (everyone gets the control). Returns whether a
    /// treatment is left (true, changing nothing, for an arm the definition does not have).
    pub(super) fn retire(
        &mut self,
        arm: &str,
        kind: &str,
        reason: &str,
        now: UnixMillis,
        w: &mut Writes,
    ) -> bool {
        let Some((name, def)) = self.def.as_mut() else {
            return true;
        };
        let Some(v) = def.variants.iter_mut().find(|v| v.name == arm) else {
            return true;
        };
        v.retired = true;
        w.push(Change::Definition {
            name: name.clone(),
            def: def.clone(),
            at: now,
        });
        let left = def.variants.iter().skip(1).any(|v| !v.retired);
        self.decide(kind, Some(arm.to_string()), reason.to_string(), now, w);
        if !left {
            self.set_status(Status::RolledBack, w);
        }
        left
    }

    fn set_status(&mut self, status: Status, w: &mut Writes) {
        self.status = status;
        w.push(Change::Status(status));
    }

    fn decide(
        &mut self,
        kind: &str,
        arm: Option<String>,
        reason: String,
        now: UnixMillis,
        w: &mut Writes,
    ) {
        let d = Decision {
            kind: kind.into(),
            arm,
            at: now,
            reason,
        };
        w.push(Change::Decision(d.clone()));
        self.decisions.push(d);
        if self.decisions.len() > DECISIONS_SHOWN {
            self.decisions.remove(0);
        }
    }

    /// Per-arm data in `def`'s variant and metric order (tallies of arms or metrics it no longer
    /// has are kept but not shown).
    fn data(&self, def: &ExperimentDef) -> Vec<ArmData> {
        def.variants
            .iter()
            .map(|v| {
                let moments = self.moments.get(&v.name);
                ArmData {
                    assigned: self.assigned.get(&v.name).copied().unwrap_or(0),
                    metrics: def
                        .metrics()
                        .map(|m| {
                            moments
                                .and_then(|x| x.get(&m.name))
                                .copied()
                                .unwrap_or_default()
                        })
                        .collect(),
                }
            })
            .collect()
    }

    pub(super) fn state(&self) -> Result<Reply, GatewayError> {
        let (name, def) = self.def.as_ref().ok_or_else(not_loaded)?;
        Ok(Reply::State(Box::new(State {
            name: name.clone(),
            def: def.clone(),
            data: self.data(def),
            analysis: self.analysis.clone(),
            status: self.status,
            object: ObjectStats::default(),
            winner: self.winner.clone(),
            promotions: self.promotions,
            decisions: self.decisions.clone(),
        })))
    }
}
