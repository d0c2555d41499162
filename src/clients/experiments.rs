//! `ExperimentDO`: `experiment:{name}` owns one experiment; the object `experiment-index` of the
//! same class lists admin-defined experiments and their proxy targets.

use gateway_core::config::Config;
use gateway_core::experiment::{ExperimentDef, Target};
use gateway_core::protocol::experiment::{Request, Response, State};
use worker::Env;

use super::{binding, reply, Namespace};
use crate::error::AppResult;

/// The object that lists experiments and their proxy targets.
const INDEX: &str = "experiment-index";

/// A unit's assignment.
pub struct Assigned {
    /// The arm whose parameters apply.
    pub variant: String,
    /// Those parameters (JSON object text).
    pub params: String,
    /// True when this call assigned the unit.
    pub new: bool,
    /// Whether the unit's outcomes are counted.
    pub counted: bool,
}

/// An event's fate.
pub struct Recorded {
    /// The unit's arm.
    pub variant: String,
    /// Whether it was counted.
    pub counted: bool,
    /// Metric names the experiment does not track.
    pub ignored: Vec<String>,
}

/// The experiments and their index.
pub struct Experiments<'a> {
    ns: Namespace<'a>,
}

impl<'a> Experiments<'a> {
    /// The client.
    pub fn new(env: &'a Env) -> Self {
        Experiments {
            ns: Namespace::new(env, binding::EXPERIMENT, "experiment"),
        }
    }

    fn owner(name: &str) -> String {
        format!("experiment:{name}")
    }

    async fn state(&self, name: &str, msg: Request) -> AppResult<State> {
        reply!(self.ns, &Self::owner(name), &msg, Response::State(s) => *s)
    }

    /// The experiment's state.
    pub async fn get(&self, name: &str) -> AppResult<State> {
        self.state(name, Request::Get { name: name.into() }).await
    }

    /// Analyses now (promoting or rolling back when the rule says so); the new state.
    pub async fn analyse(&self, name: &str) -> AppResult<State> {
        self.state(name, Request::Analyse { name: name.into() })
            .await
    }

    /// Pauses or resumes; the new state.
    pub async fn pause(&self, name: &str, paused: bool) -> AppResult<State> {
        let msg = Request::Pause {
            name: name.into(),
            paused,
        };
        self.state(name, msg).await
    }

    /// Retires an arm; the new state.
    pub async fn retire(&self, name: &str, arm: &str) -> AppResult<State> {
        let msg = Request::Retire {
            name: name.into(),
            arm: arm.into(),
        };
        self.state(name, msg).await
    }

    /// Creates or replaces the definition and lists it in the index; whether it is new.
    pub async fn define(&self, name: &str, def: ExperimentDef) -> AppResult<bool> {
        let target = def.target.clone();
        let msg = Request::Define {
            name: name.into(),
            def,
        };
        let created =
            reply!(self.ns, &Self::owner(name), &msg, Response::Defined { created } => created)?;
        let put = Request::IndexPut {
            name: name.into(),
            target,
        };
        reply!(self.ns, INDEX, &put, Response::Index(_) => ())?;
        Ok(created)
    }

    /// Deletes the experiment and marks it deleted in the index; whether it existed.
    pub async fn delete(&self, name: &str) -> AppResult<bool> {
        let msg = Request::Delete { name: name.into() };
        let existed =
            reply!(self.ns, &Self::owner(name), &msg, Response::Deleted { existed } => existed)?;
        let del = Request::IndexDelete { name: name.into() };
        reply!(self.ns, INDEX, &del, Response::Index(_) => ())?;
        Ok(existed)
    }

    /// Every experiment with its target: configured ones and admin-defined ones, minus deleted
    /// ones, sorted by name.
    pub async fn catalogue(&self, cfg: &Config) -> AppResult<Vec<(String, Option<Target>)>> {
        let index = reply!(self.ns, INDEX, &Request::IndexList, Response::Index(v) => v)?;
        let mut out: Vec<(String, Option<Target>)> = cfg
            .experiments
            .iter()
            .filter(|(n, _)| !index.iter().any(|e| &e.name == *n))
            .map(|(n, d)| (n.clone(), d.target.clone()))
            .collect();
        out.extend(
            index
                .into_iter()
                .filter(|e| !e.deleted)
                .map(|e| (e.name, e.target)),
        );
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Assigns `unit` (sticky).
    pub async fn assign(&self, name: &str, unit: &str) -> AppResult<Assigned> {
        let msg = Request::Assign {
            name: name.into(),
            unit: unit.into(),
        };
        reply!(self.ns, &Self::owner(name), &msg,
            Response::Assigned { variant, params, new, counted } => Assigned { variant, params, new, counted })
    }

    /// Records one unit's metric values.
    pub async fn event(
        &self,
        name: &str,
        unit: String,
        values: Vec<(String, f64)>,
    ) -> AppResult<Recorded> {
        let msg = Request::Event {
            name: name.into(),
            unit,
            values,
        };
        reply!(self.ns, &Self::owner(name), &msg,
            Response::Recorded { variant, counted, ignored } => Recorded { variant, counted, ignored })
    }

    /// Records a batch of units' values (the proxy path's outcomes).
    pub async fn events(
        &self,
        name: &str,
        events: Vec<(String, Vec<(String, f64)>)>,
    ) -> AppResult<()> {
        let msg = Request::Events {
            name: name.into(),
            events,
        };
        reply!(self.ns, &Self::owner(name), &msg, Response::RecordedMany { .. } => ())
    }
}
