//! [`Machine`]: the lifecycle of one experiment (the object `experiment:{name}`), every rule the
//! Durable Object applies, free of storage.
//!
//! The adapter loads the stored rows once ([`Stored`] → [`Machine::load`]). Per request it reads
//! the stored arm of each unit the request names ([`Machine::units`] → [`Known`]), makes one call
//! ([`Machine::handle`]) and persists the returned [`Writes`] in the same synchronous block, so the
//! input gate makes the whole step atomic. The alarm calls [`Machine::on_alarm`] and re-arms while
//! [`Machine::next_deadline`] says so.
//!
//! - **Definition.** A request names its experiment; when nothing is stored and no admin deleted
//!   it, the configured definition is adopted and stored on first use (else 404). A definition in
//!   the layout stored before guardrails ([`LegacyDef`]) is upgraded on load.
//! - **Assignment** is sticky: the adapter reads a unit's stored arm before the call, and only a
//!   unit never seen is hashed and stored (with its tally, in the same writes), so concurrent
//!   requests for one unit cannot disagree and a weight change never moves a unit.
//! - **Counting.** Outcomes count only for an assigned unit on an arm that is not retired, while
//!   the experiment runs, or after a conclusion for units on the winner.
//! - **Lifecycle.** running ⇄ paused by an admin; halted → running by an admin resume; concluded
//!   and rolled back are final.
//! - **Verdicts act once.** The analysis runs only while the experiment is running, and the
//!   status change that ends it travels in the same writes as its decision, so an alarm retry or
//!   a concurrent `analyse` call finds it no longer running and does nothing.

mod lifecycle;
mod units;

use std::collections::BTreeMap;

use super::DECISIONS_SHOWN;
use super::{Analysis, Change, Effects, ExperimentDef, Known, Moments, Stored, Writes};
use crate::protocol::experiment::{Decision, Request, Response as Reply, Status};
use crate::{GatewayError, UnixMillis};

pub use units::MAX_VALUE;

/// The in-memory state of one experiment.
#[derive(Debug, Clone)]
pub struct Machine {
    interval_ms: u64,
    def: Option<(String, ExperimentDef)>,
    deleted: bool,
    status: Status,
    winner: Option<String>,
    promotions: u64,
    assigned: BTreeMap<String, u64>,
    moments: BTreeMap<String, BTreeMap<String, Moments>>,
    analysis: Option<Analysis>,
    decisions: Vec<Decision>,
    due: Option<UnixMillis>,
}

fn not_loaded() -> GatewayError {
    GatewayError::Internal("the experiment's definition is not loaded".into())
}

/// The experiment a request needs defined (the configured one is adopted on first use), if any.
fn subject(msg: &Request) -> Option<&str> {
    match msg {
        Request::Assign { name, .. }
        | Request::Event { name, .. }
        | Request::Events { name, .. }
        | Request::Get { name }
        | Request::Analyse { name }
        | Request::Pause { name, .. }
        | Request::Retire { name, .. } => Some(name),
        Request::Define { .. }
        | Request::Delete { .. }
        | Request::IndexPut { .. }
        | Request::IndexDelete { .. }
        | Request::IndexList => None,
    }
}

impl Machine {
    /// An object with nothing stored; `interval_ms` is the analysis period.
    pub fn blank(interval_ms: u64) -> Machine {
        Machine {
            interval_ms,
            def: None,
            deleted: false,
            status: Status::Running,
            winner: None,
            promotions: 0,
            assigned: BTreeMap::new(),
            moments: BTreeMap::new(),
            analysis: None,
            decisions: Vec::new(),
            due: None,
        }
    }

    /// Builds the state from the stored rows. A definition or status that does not decode is an
    /// error (corruption); an analysis snapshot in an older layout is dropped (the next analysis
    /// recomputes it, starting the running minima afresh).
    pub fn load(stored: Stored, interval_ms: u64) -> Result<Machine, GatewayError> {
        let def = match stored.definition {
            Some(d) => Some((d.name.clone(), d.decode()?)),
            None => None,
        };
        let status = match stored.status.as_deref() {
            None => Status::Running,
            Some(s) => Status::parse(s).ok_or_else(|| {
                GatewayError::Internal(format!("corrupt row: experiment status {s:?}"))
            })?,
        };
        let mut moments: BTreeMap<String, BTreeMap<String, Moments>> = BTreeMap::new();
        for (arm, metric, m) in stored.moments {
            moments.entry(arm).or_default().insert(metric, m);
        }
        let mut decisions = stored.decisions;
        decisions.drain(..decisions.len().saturating_sub(DECISIONS_SHOWN));
        Ok(Machine {
            def,
            deleted: stored.deleted,
            status,
            winner: stored.winner,
            promotions: stored.promotions,
            assigned: stored.assigned.into_iter().collect(),
            moments,
            analysis: stored.analysis.and_then(|b| postcard::from_bytes(&b).ok()),
            decisions,
            ..Machine::blank(interval_ms)
        })
    }

    /// The units whose stored arms [`Machine::handle`] needs for `msg` (in [`Known::arms`]).
    pub fn units(msg: &Request) -> Vec<&str> {
        match msg {
            Request::Assign { unit, .. } | Request::Event { unit, .. } => vec![unit.as_str()],
            Request::Events { events, .. } => events.iter().map(|(u, _)| u.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// The lifecycle status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Handles one request: the reply and what storage must change. On an error nothing changed
    /// (in memory or in the writes). A [`Reply::State`] carries default [`ObjectStats`]: the alarm
    /// and schema bookkeeping are the adapter's to fill in. The index requests are not an
    /// experiment's (an internal error).
    pub fn handle(
        &mut self,
        msg: Request,
        known: &Known<'_>,
        now: UnixMillis,
    ) -> Result<(Reply, Writes), GatewayError> {
        let mut w = Writes::new();
        let adopted = match subject(&msg) {
            Some(name) => self.adopt(name, known.configured, now, &mut w)?,
            None => false,
        };
        match self.dispatch(msg, &known.arms, now, &mut w) {
            Ok((reply, wake)) => {
                if wake {
                    let at = self.after_interval(now);
                    self.due.get_or_insert(at);
                }
                Ok((reply, w))
            }
            Err(e) => {
                if adopted {
                    self.def = None;
                }
                Err(e)
            }
        }
    }

    /// When the analysis alarm should run: set by a change that needs analysing (one period
    /// after it, if no run was already due) and after a run that left the experiment running;
    /// `None` once there is nothing to analyse.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.due
    }

    /// The alarm: analyses the data and applies the verdict (promote, roll back, halt), once.
    pub fn on_alarm(&mut self, now: UnixMillis) -> Effects {
        let mut writes = Writes::new();
        if self.def.is_none() {
            self.due = None;
            return Effects { writes, ran: false };
        }
        let running = self.analyse_now(now, &mut writes);
        self.due = running.then(|| self.after_interval(now));
        Effects { writes, ran: true }
    }

    fn after_interval(&self, now: UnixMillis) -> UnixMillis {
        now.plus_ms(i64::try_from(self.interval_ms).unwrap_or(i64::MAX))
    }

    /// Makes sure `name` is defined: stored already, or adopted from the configuration (unless
    /// an admin deleted it). Returns whether it was adopted now.
    fn adopt(
        &mut self,
        name: &str,
        configured: &BTreeMap<String, ExperimentDef>,
        now: UnixMillis,
        w: &mut Writes,
    ) -> Result<bool, GatewayError> {
        if self.def.is_some() {
            return Ok(false);
        }
        if self.deleted {
            return Err(GatewayError::NotFound(format!(
                "experiment {name} was deleted"
            )));
        }
        let def = configured
            .get(name)
            .cloned()
            .ok_or_else(|| GatewayError::NotFound(format!("no experiment named {name}")))?;
        w.push(Change::Definition {
            name: name.to_string(),
            def: def.clone(),
            at: now,
        });
        self.def = Some((name.to_string(), def));
        Ok(true)
    }

    /// The request's reply and whether it asks for the analysis alarm.
    fn dispatch(
        &mut self,
        msg: Request,
        arms: &BTreeMap<String, String>,
        now: UnixMillis,
        w: &mut Writes,
    ) -> Result<(Reply, bool), GatewayError> {
        let arm = |unit: &str| arms.get(unit).map(String::as_str);
        match msg {
            Request::Define { name, def } => {
                def.validate()?;
                let created = self.def.is_none();
                w.push(Change::Definition {
                    name: name.clone(),
                    def: def.clone(),
                    at: now,
                });
                w.push(Change::Deleted(false));
                self.def = Some((name, def));
                self.deleted = false;
                Ok((Reply::Defined { created }, true))
            }
            Request::Assign { unit, .. } => self.assign_unit(&unit, arm(&unit), now, w),
            Request::Event { name, unit, values } => {
                self.event(&name, &unit, &values, arm(&unit), w)
            }
            Request::Events { name, events } => {
                let (mut counted, mut skipped) = (0u32, 0u32);
                for (unit, values) in &events {
                    match self.event(&name, unit, values, arm(unit), w) {
                        Ok((Reply::Recorded { counted: true, .. }, _)) => counted += 1,
                        _ => skipped += 1,
                    }
                }
                Ok((Reply::RecordedMany { counted, skipped }, counted > 0))
            }
            Request::Analyse { .. } => {
                self.analyse_now(now, w);
                Ok((self.state()?, false))
            }
            Request::Get { .. } => Ok((self.state()?, false)),
            Request::Pause { name, paused } => self.pause(&name, paused, now, w),
            Request::Retire { arm, .. } => {
                let (name, def) = self.def.as_ref().ok_or_else(not_loaded)?;
                let i = def
                    .position(&arm)
                    .ok_or_else(|| GatewayError::NotFound(format!("no arm {arm} in {name}")))?;
                if i == 0 {
                    return Err(GatewayError::bad_request(
                        "invalid-experiment",
                        "the control cannot be retired",
                    ));
                }
                if def.variants.get(i).is_some_and(|v| !v.retired) {
                    self.retire(&arm, "retire", "admin retired the arm", now, w);
                }
                Ok((self.state()?, false))
            }
            Request::Delete { .. } => {
                let existed = self.def.is_some();
                *self = Machine {
                    deleted: true,
                    due: self.due,
                    ..Machine::blank(self.interval_ms)
                };
                w.push(Change::Erased);
                w.push(Change::Deleted(true));
                Ok((Reply::Deleted { existed }, false))
            }
            Request::IndexPut { .. } | Request::IndexDelete { .. } | Request::IndexList => Err(
                GatewayError::Internal("an index request reached an experiment".into()),
            ),
        }
    }
}
