//! `ExperimentDO`: one experiment (`experiment:{name}`): definition, sticky assignments, per-arm
//! metric moments, the decisions log and the alarm-driven analysis. The object named
//! `experiment-index` of the same class keeps the list of experiments and their proxy targets.
//!
//! Assignment reads the stored arm first; only a unit never seen is hashed and stored (in the same
//! synchronous block as its tally), so concurrent requests for one unit cannot disagree and a
//! weight change never moves a unit. Promotion, rollback and halting happen inside one
//! synchronous block that first checks the status, so alarm retries and concurrent `analyse`
//! calls act exactly once.

use std::cell::RefCell;

use gateway_core::experiment::{
    analyse, assign, covered, Analysis, ArmData, ExperimentDef, LegacyDef, MetricKind, Moments,
    Target, Verdict, PRIMARY_ALIAS,
};
use gateway_core::protocol::experiment::{
    Decision, IndexEntry, Request, Response as Reply, State as ExpState, Status,
};
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, DurableObject, Env, Request as HttpRequest, Response, State};

use super::{col, decode_blob, encode_blob, int, migrations, now, real, text, Base, Db, Wake};

/// Layout of the stored definition (1: before metrics and guardrails).
const LAYOUT: i64 = 2;
/// Decisions answered with the state (the newest).
const DECISIONS_SHOWN: i64 = 50;
/// Largest magnitude accepted for a metric value.
const MAX_VALUE: f64 = 1e12;

/// An experiment (or the experiment index).
#[durable_object(alarm)]
pub struct ExperimentDO {
    base: Base,
    def: RefCell<Option<(String, ExperimentDef)>>,
}

fn bad(detail: impl Into<String>) -> GatewayError {
    GatewayError::bad_request("invalid-experiment-event", detail)
}

impl ExperimentDO {
    fn store_def(
        db: &Db,
        name: &str,
        def: &ExperimentDef,
        now: UnixMillis,
    ) -> Result<(), GatewayError> {
        db.exec(
            "INSERT INTO definition (id, name, def, updated_at, layout) VALUES (1, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, def = excluded.def, \
             updated_at = excluded.updated_at, layout = excluded.layout",
            vec![name.into(), encode_blob(def)?, now.0.into(), LAYOUT.into()],
        )
    }

    /// Keeps the in-memory copy in step with storage.
    fn remember(&self, name: &str, def: &ExperimentDef) {
        *self.def.borrow_mut() = Some((name.to_string(), def.clone()));
    }

    /// The definition: from memory, storage, or configuration (stored on first use, unless an
    /// admin deleted it), else 404.
    fn load(
        &self,
        db: &Db,
        name: Option<&str>,
        now: UnixMillis,
    ) -> Result<(String, ExperimentDef), GatewayError> {
        if let Some(d) = self.def.borrow().as_ref() {
            return Ok(d.clone());
        }
        let rows = db.rows(
            "SELECT name, def, layout FROM definition WHERE id = 1",
            vec![],
        )?;
        let loaded = if let Some(row) = rows.first() {
            let def = if int(col(row, 2)?) == Some(LAYOUT) {
                decode_blob::<ExperimentDef>(col(row, 1)?)?
            } else {
                decode_blob::<LegacyDef>(col(row, 1)?)?.into()
            };
            (text(col(row, 0)?).unwrap_or_default(), def)
        } else {
            let name =
                name.ok_or_else(|| GatewayError::NotFound("experiment not defined".into()))?;
            if db.meta("deleted")? != 0 {
                return Err(GatewayError::NotFound(format!(
                    "experiment {name} was deleted"
                )));
            }
            let cfg = self.base.cfg()?;
            let def = cfg
                .experiments
                .get(name)
                .cloned()
                .ok_or_else(|| GatewayError::NotFound(format!("no experiment named {name}")))?;
            Self::store_def(db, name, &def, now)?;
            (name.to_string(), def)
        };
        self.remember(&loaded.0, &loaded.1);
        Ok(loaded)
    }

    fn status(db: &Db) -> Result<Status, GatewayError> {
        Ok(db
            .meta_text("status")?
            .as_deref()
            .and_then(Status::parse)
            .unwrap_or(Status::Running))
    }

    fn data(db: &Db, def: &ExperimentDef) -> Result<Vec<ArmData>, GatewayError> {
        let metrics: Vec<&str> = def.metrics().map(|m| m.name.as_str()).collect();
        let mut out = vec![
            ArmData {
                assigned: 0,
                metrics: vec![Moments::default(); metrics.len()],
            };
            def.variants.len()
        ];
        for row in db.rows("SELECT variant, assigned FROM tallies", vec![])? {
            let name = text(col(&row, 0)?).unwrap_or_default();
            if let Some(i) = def.position(&name) {
                out[i].assigned = u64::try_from(int(col(&row, 1)?).unwrap_or(0)).unwrap_or(0);
            }
        }
        for row in db.rows(
            "SELECT variant, metric, n, sum, sum_sq FROM metric_tallies",
            vec![],
        )? {
            let arm = text(col(&row, 0)?).unwrap_or_default();
            let metric = text(col(&row, 1)?).unwrap_or_default();
            if let (Some(i), Some(k)) = (
                def.position(&arm),
                metrics.iter().position(|m| *m == metric),
            ) {
                out[i].metrics[k] = Moments {
                    n: u64::try_from(int(col(&row, 2)?).unwrap_or(0)).unwrap_or(0),
                    sum: real(col(&row, 3)?).unwrap_or(0.0),
                    sum_sq: real(col(&row, 4)?).unwrap_or(0.0),
                };
            }
        }
        Ok(out)
    }

    fn stored_arm(db: &Db, unit: &str) -> Result<Option<String>, GatewayError> {
        Ok(db
            .rows(
                "SELECT variant FROM assignments WHERE unit = ?",
                vec![unit.into()],
            )?
            .first()
            .and_then(|r| r.first())
            .and_then(text))
    }

    fn decide(
        db: &Db,
        kind: &str,
        arm: Option<&str>,
        reason: &str,
        now: UnixMillis,
    ) -> Result<(), GatewayError> {
        db.exec(
            "INSERT INTO decisions (kind, arm, at, reason) VALUES (?, ?, ?, ?)",
            vec![
                kind.into(),
                arm.map_or(worker::SqlStorageValue::Null, Into::into),
                now.0.into(),
                reason.into(),
            ],
        )
    }

    fn assigned(def: &ExperimentDef, arm: usize, new: bool, counted: bool) -> Reply {
        let v = def.variants.get(arm).or(def.variants.first());
        Reply::Assigned {
            variant: v.map(|v| v.name.clone()).unwrap_or_default(),
            params: v.map(|v| v.params.clone()).unwrap_or_default(),
            new,
            counted,
        }
    }

    fn do_assign(
        &self,
        db: &Db,
        def: &ExperimentDef,
        unit: &str,
        now: UnixMillis,
    ) -> Result<(Reply, bool), GatewayError> {
        let stored = Self::stored_arm(db, unit)?;
        match Self::status(db)? {
            Status::Concluded => {
                // Everyone gets the promoted configuration. A unit seen for the first time is
                // recorded on the winner, so its outcomes still count.
                let w = db
                    .meta_text("winner")?
                    .and_then(|w| def.position(&w))
                    .unwrap_or(0);
                let new = stored.is_none();
                if new {
                    db.exec(
                        "INSERT INTO assignments (unit, variant, assigned_at) VALUES (?, ?, ?)",
                        vec![
                            unit.into(),
                            def.variants[w].name.as_str().into(),
                            now.0.into(),
                        ],
                    )?;
                }
                let counted = stored.as_deref().is_none_or(|s| s == def.variants[w].name);
                return Ok((Self::assigned(def, w, new, counted), new));
            }
            Status::Paused | Status::Halted | Status::RolledBack => {
                return Ok((Self::assigned(def, 0, false, false), false));
            }
            Status::Running => {}
        }
        if let Some(i) = stored.as_deref().and_then(|a| def.position(a)) {
            // Sticky. A retired arm's units get the control and are no longer counted.
            return Ok(if def.variants[i].retired {
                (Self::assigned(def, 0, false, false), false)
            } else {
                (Self::assigned(def, i, false, true), false)
            });
        }
        if !covered(def, unit) {
            return Ok((Self::assigned(def, 0, false, false), false));
        }
        let i = assign(def, unit);
        let v = def
            .variants
            .get(i)
            .ok_or_else(|| GatewayError::Internal("assignment out of range".into()))?;
        db.exec(
            "INSERT INTO assignments (unit, variant, assigned_at) VALUES (?, ?, ?) \
             ON CONFLICT (unit) DO UPDATE SET variant = excluded.variant, assigned_at = excluded.assigned_at",
            vec![unit.into(), v.name.as_str().into(), now.0.into()],
        )?;
        db.exec(
            "INSERT INTO tallies (variant, assigned) VALUES (?, 1) \
             ON CONFLICT (variant) DO UPDATE SET assigned = assigned + 1",
            vec![v.name.as_str().into()],
        )?;
        Ok((Self::assigned(def, i, true, true), true))
    }

    fn do_event(
        db: &Db,
        name: &str,
        def: &ExperimentDef,
        unit: &str,
        values: &[(String, f64)],
    ) -> Result<(Reply, bool), GatewayError> {
        // Validate everything before writing anything.
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
                    tracked.push((metric.as_str(), *v));
                }
                None => ignored.push(metric.clone()),
            }
        }
        let Some(arm) = Self::stored_arm(db, unit)? else {
            if !covered(def, unit) || Self::status(db)? != Status::Running {
                let control = def.variants.first().map(|v| v.name.clone());
                return Ok((
                    Reply::Recorded {
                        variant: control.unwrap_or_default(),
                        counted: false,
                        ignored,
                    },
                    false,
                ));
            }
            return Err(GatewayError::Conflict(format!(
                "unit {unit} was never assigned in {name}: assign it first"
            )));
        };
        let status = Self::status(db)?;
        let counted = matches!(status, Status::Running | Status::Concluded)
            && def.position(&arm).is_some_and(|i| !def.variants[i].retired)
            && (status != Status::Concluded
                || db.meta_text("winner")?.as_deref() == Some(arm.as_str()));
        if counted {
            for (metric, v) in &tracked {
                db.exec(
                    "INSERT INTO metric_tallies (variant, metric, n, sum, sum_sq) VALUES (?, ?, 1, ?, ?) \
                     ON CONFLICT (variant, metric) DO UPDATE SET n = n + 1, sum = sum + excluded.sum, \
                     sum_sq = sum_sq + excluded.sum_sq",
                    vec![arm.as_str().into(), (*metric).into(), (*v).into(), (v * v).into()],
                )?;
            }
        }
        Ok((
            Reply::Recorded {
                variant: arm,
                counted,
                ignored,
            },
            counted,
        ))
    }

    fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::EXPERIMENT, now)?;
        match msg {
            Request::Define { name, def } => {
                def.validate()?;
                let existed = !db
                    .rows("SELECT 1 FROM definition WHERE id = 1", vec![])?
                    .is_empty();
                Self::store_def(&db, &name, &def, now)?;
                db.set_meta("deleted", 0)?;
                self.remember(&name, &def);
                Ok((Reply::Defined { created: !existed }, true))
            }
            Request::Assign { name, unit } => {
                let (_, def) = self.load(&db, Some(&name), now)?;
                self.do_assign(&db, &def, &unit, now)
            }
            Request::Event { name, unit, values } => {
                let (_, def) = self.load(&db, Some(&name), now)?;
                Self::do_event(&db, &name, &def, &unit, &values)
            }
            Request::Events { name, events } => {
                let (_, def) = self.load(&db, Some(&name), now)?;
                let (mut counted, mut skipped) = (0u32, 0u32);
                for (unit, values) in &events {
                    match Self::do_event(&db, &name, &def, unit, values) {
                        Ok((Reply::Recorded { counted: true, .. }, _)) => counted += 1,
                        _ => skipped += 1,
                    }
                }
                Ok((Reply::RecordedMany { counted, skipped }, counted > 0))
            }
            Request::Analyse { name } => {
                let (_, def) = self.load(&db, Some(&name), now)?;
                self.run_analysis(&db, &def, now)?;
                self.state(&db, now, &name)
            }
            Request::Get { name } => self.state(&db, now, &name),
            Request::Pause { name, paused } => {
                self.load(&db, Some(&name), now)?;
                let status = Self::status(&db)?;
                let next = match (status, paused) {
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
                    db.set_meta_text("status", next.as_str())?;
                    let kind = if paused { "pause" } else { "resume" };
                    Self::decide(&db, kind, None, &format!("admin {kind}"), now)?;
                }
                let (reply, _) = self.state(&db, now, &name)?;
                Ok((reply, next == Some(Status::Running)))
            }
            Request::Retire { name, arm } => {
                let (name, mut def) = self.load(&db, Some(&name), now)?;
                let i = def
                    .position(&arm)
                    .ok_or_else(|| GatewayError::NotFound(format!("no arm {arm} in {name}")))?;
                if i == 0 {
                    return Err(GatewayError::bad_request(
                        "invalid-experiment",
                        "the control cannot be retired",
                    ));
                }
                if !def.variants[i].retired {
                    self.retire(
                        &db,
                        &name,
                        &mut def,
                        i,
                        "retire",
                        "admin retired the arm",
                        now,
                    )?;
                }
                self.state(&db, now, &name)
            }
            Request::Delete { .. } => {
                let existed = !db
                    .rows("SELECT 1 FROM definition WHERE id = 1", vec![])?
                    .is_empty();
                for table in [
                    "definition",
                    "assignments",
                    "tallies",
                    "metric_tallies",
                    "analysis",
                    "decisions",
                ] {
                    db.exec(&format!("DELETE FROM {table}"), vec![])?;
                }
                db.exec(
                    "DELETE FROM _meta WHERE key IN ('winner', 'promotions', 'promoted_at', 'status')",
                    vec![],
                )?;
                db.set_meta("deleted", 1)?;
                *self.def.borrow_mut() = None;
                Ok((Reply::Deleted { existed }, false))
            }
            Request::IndexPut { name, target } => {
                db.exec(
                    "INSERT INTO experiment_index (name, target, deleted, updated_at) VALUES (?, ?, 0, ?) \
                     ON CONFLICT (name) DO UPDATE SET target = excluded.target, deleted = 0, updated_at = excluded.updated_at",
                    vec![name.into(), encode_blob(&target)?, now.0.into()],
                )?;
                Ok((Reply::Index(vec![]), false))
            }
            Request::IndexDelete { name } => {
                db.exec(
                    "INSERT INTO experiment_index (name, target, deleted, updated_at) VALUES (?, NULL, 1, ?) \
                     ON CONFLICT (name) DO UPDATE SET target = NULL, deleted = 1, updated_at = excluded.updated_at",
                    vec![name.into(), now.0.into()],
                )?;
                Ok((Reply::Index(vec![]), false))
            }
            Request::IndexList => {
                let mut out = Vec::new();
                for row in db.rows(
                    "SELECT name, target, deleted FROM experiment_index ORDER BY name",
                    vec![],
                )? {
                    let target: Option<Target> = col(&row, 1)
                        .ok()
                        .and_then(|v| decode_blob(v).ok())
                        .flatten();
                    out.push(IndexEntry {
                        name: text(col(&row, 0)?).unwrap_or_default(),
                        target,
                        deleted: int(col(&row, 2)?).unwrap_or(0) != 0,
                    });
                }
                Ok((Reply::Index(out), false))
            }
        }
    }

    /// Retires arm `i` (by an admin or a rollback) and records the decision; when no treatment
    /// is left, the experiment is rolled back (everyone gets the control).
    #[allow(clippy::too_many_arguments)]
    fn retire(
        &self,
        db: &Db,
        name: &str,
        def: &mut ExperimentDef,
        i: usize,
        kind: &str,
        reason: &str,
        now: UnixMillis,
    ) -> Result<bool, GatewayError> {
        def.variants[i].retired = true;
        Self::store_def(db, name, def, now)?;
        self.remember(name, def);
        Self::decide(db, kind, Some(&def.variants[i].name), reason, now)?;
        let left = def.variants.iter().skip(1).any(|v| !v.retired);
        if !left {
            db.set_meta_text("status", Status::RolledBack.as_str())?;
        }
        Ok(left)
    }

    fn decisions(db: &Db) -> Result<Vec<Decision>, GatewayError> {
        let mut out: Vec<Decision> = db
            .rows(
                "SELECT kind, arm, at, reason FROM decisions ORDER BY seq DESC LIMIT ?",
                vec![DECISIONS_SHOWN.into()],
            )?
            .iter()
            .map(|row| Decision {
                kind: row.first().and_then(text).unwrap_or_default(),
                arm: row.get(1).and_then(text),
                at: UnixMillis(row.get(2).and_then(int).unwrap_or(0)),
                reason: row.get(3).and_then(text).unwrap_or_default(),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    fn state(&self, db: &Db, now: UnixMillis, name: &str) -> Result<(Reply, bool), GatewayError> {
        let (name, def) = self.load(db, Some(name), now)?;
        let data = Self::data(db, &def)?;
        Ok((
            Reply::State(Box::new(ExpState {
                name,
                analysis: Self::stored_analysis(db),
                object: self.base.object_stats(db)?,
                winner: db.meta_text("winner")?,
                promotions: u64::try_from(db.meta("promotions")?).unwrap_or(0),
                status: Self::status(db)?,
                decisions: Self::decisions(db)?,
                def,
                data,
            })),
            false,
        ))
    }

    fn interval(&self) -> u64 {
        self.base
            .cfg()
            .map(|c| c.experiment_analysis_interval_ms)
            .unwrap_or(60_000)
    }

    fn stored_analysis(db: &Db) -> Option<Analysis> {
        let rows = db
            .rows("SELECT snapshot FROM analysis WHERE id = 1", vec![])
            .ok()?;
        // A snapshot in an older layout is dropped: the next analysis recomputes it.
        rows.first()
            .and_then(|row| col(row, 0).ok().and_then(|v| decode_blob(v).ok()))
    }

    /// Analyses now and acts on the verdict: promote the winner, roll a treatment back, or halt
    /// (each in the same synchronous block as the status check, so concurrent analyses and
    /// alarm retries act once). Returns whether the experiment is still running.
    fn run_analysis(
        &self,
        db: &Db,
        def: &ExperimentDef,
        now: UnixMillis,
    ) -> Result<bool, GatewayError> {
        if Self::status(db)? != Status::Running {
            return Ok(false);
        }
        let name = self
            .def
            .borrow()
            .as_ref()
            .map(|d| d.0.clone())
            .unwrap_or_default();
        let previous = Self::stored_analysis(db);
        let analysis = analyse(def, &Self::data(db, def)?, previous.as_ref());
        db.exec(
            "INSERT INTO analysis (id, snapshot, at) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot, at = excluded.at",
            vec![encode_blob(&analysis)?, now.0.into()],
        )?;
        match &analysis.verdict {
            Verdict::Promote(arm) => {
                db.set_meta_text("winner", arm)?;
                db.add_meta("promotions", 1)?;
                db.set_meta("promoted_at", now.0)?;
                db.set_meta_text("status", Status::Concluded.as_str())?;
                let reason = promotion_reason(&analysis, arm);
                Self::decide(db, "promote", Some(arm), &reason, now)?;
                Ok(false)
            }
            Verdict::Rollback(arm, reason) => {
                let mut def = def.clone();
                match def.position(arm) {
                    Some(i) => self.retire(db, &name, &mut def, i, "rollback", reason, now),
                    None => Ok(true),
                }
            }
            Verdict::Halt(reason) => {
                db.set_meta_text("status", Status::Halted.as_str())?;
                Self::decide(db, "halt", None, reason, now)?;
                Ok(false)
            }
            Verdict::Continue(_) => Ok(true),
        }
    }

    fn analyse(&self, now: UnixMillis) -> Result<bool, GatewayError> {
        let db = self.base.db(migrations::EXPERIMENT, now)?;
        let Ok((_, def)) = self.load(&db, None, now) else {
            return Ok(false);
        };
        let running = self.run_analysis(&db, &def, now)?;
        self.base.record_alarm_run(&db, now)?;
        Ok(running)
    }
}

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

impl DurableObject for ExperimentDO {
    fn new(state: State, env: Env) -> Self {
        ExperimentDO {
            base: Base::new(state, env),
            def: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: HttpRequest) -> worker::Result<Response> {
        self.base
            .serve(&mut req, self.interval(), |msg, now| async move {
                self.handle(msg, now)
                    .map(|(r, changed)| (r, Wake::from(changed)))
            })
            .await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = now();
        self.base
            .finish_alarm(now, self.analyse(now), self.interval())
            .await
    }
}
