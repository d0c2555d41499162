//! `ExperimentDO`: one experiment (`experiment:{name}`): definition, sticky assignments, per-arm
//! tallies, and the alarm-driven analysis.
//!
//! Assignment reads the stored arm first; only a unit never seen is hashed and stored (in the same
//! synchronous block as its tally), so concurrent requests for one unit cannot disagree and a
//! weight change never moves a unit.

use std::cell::RefCell;

use gateway_core::experiment::{analyse, assign, Analysis, ArmTally, ExperimentDef, Verdict};
use gateway_core::protocol::experiment::{Request, Response as Reply, State as ExpState};
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, DurableObject, Env, Request as HttpRequest, Response, State};

use super::{col, decode_blob, encode_blob, int, migrations, now, text, Base, Db};

/// An experiment.
#[durable_object(alarm)]
pub struct ExperimentDO {
    base: Base,
    env: Env,
    def: RefCell<Option<(String, ExperimentDef)>>,
}

impl ExperimentDO {
    fn store_def(
        db: &Db,
        name: &str,
        def: &ExperimentDef,
        now: UnixMillis,
    ) -> Result<(), GatewayError> {
        db.exec(
            "INSERT INTO definition (id, name, def, updated_at) VALUES (1, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, def = excluded.def, updated_at = excluded.updated_at",
            vec![name.into(), encode_blob(def)?, now.0.into()],
        )
    }

    /// The definition: from memory, storage, or configuration (stored on first use), else 404.
    fn load(
        &self,
        db: &Db,
        name: Option<&str>,
        now: UnixMillis,
    ) -> Result<(String, ExperimentDef), GatewayError> {
        if let Some(d) = self.def.borrow().as_ref() {
            return Ok(d.clone());
        }
        let rows = db.rows("SELECT name, def FROM definition WHERE id = 1", vec![])?;
        let loaded = if let Some(row) = rows.first() {
            (
                text(col(row, 0)?).unwrap_or_default(),
                decode_blob(col(row, 1)?)?,
            )
        } else {
            let name =
                name.ok_or_else(|| GatewayError::NotFound("experiment not defined".into()))?;
            let cfg = super::config(&self.env)?;
            let def = cfg
                .experiments
                .get(name)
                .cloned()
                .ok_or_else(|| GatewayError::NotFound(format!("no experiment named {name}")))?;
            Self::store_def(db, name, &def, now)?;
            (name.to_string(), def)
        };
        *self.def.borrow_mut() = Some(loaded.clone());
        Ok(loaded)
    }

    fn tallies(db: &Db, def: &ExperimentDef) -> Result<Vec<ArmTally>, GatewayError> {
        let rows = db.rows(
            "SELECT variant, assigned, events, successes FROM tallies",
            vec![],
        )?;
        let mut out = vec![ArmTally::default(); def.variants.len()];
        for row in rows {
            let name = text(col(&row, 0)?).unwrap_or_default();
            if let Some(i) = def.variants.iter().position(|v| v.name == name) {
                let n = |c: usize| {
                    col(&row, c).map(|v| u64::try_from(int(v).unwrap_or(0)).unwrap_or(0))
                };
                out[i] = ArmTally {
                    assigned: n(1)?,
                    events: n(2)?,
                    successes: n(3)?,
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

    fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::EXPERIMENT, now)?;
        match msg {
            Request::Define { name, def } => {
                def.validate()?;
                let existed = !db
                    .rows("SELECT 1 FROM definition WHERE id = 1", vec![])?
                    .is_empty();
                Self::store_def(&db, &name, &def, now)?;
                *self.def.borrow_mut() = Some((name, def));
                Ok((Reply::Defined { created: !existed }, true))
            }
            Request::Assign { name, unit } => {
                let (_, def) = self.load(&db, Some(&name), now)?;
                if let Some(w) = Self::winner(&db)? {
                    // Concluded: everyone gets the promoted configuration. A unit seen for the
                    // first time is recorded on the winner, so its outcomes still count.
                    if let Some(v) = def.variants.iter().find(|v| v.name == w) {
                        if Self::stored_arm(&db, &unit)?.is_none() {
                            db.exec(
                                "INSERT INTO assignments (unit, variant, assigned_at) VALUES (?, ?, ?)",
                                vec![unit.as_str().into(), w.as_str().into(), now.0.into()],
                            )?;
                        }
                        return Ok((
                            Reply::Assigned {
                                variant: w.clone(),
                                params: v.params.clone(),
                                new: false,
                            },
                            false,
                        ));
                    }
                }
                if let Some(arm) = Self::stored_arm(&db, &unit)? {
                    if let Some(v) = def.variants.iter().find(|v| v.name == arm) {
                        return Ok((
                            Reply::Assigned {
                                variant: arm,
                                params: v.params.clone(),
                                new: false,
                            },
                            false,
                        ));
                    }
                }
                let v = def
                    .variants
                    .get(assign(&def, &unit))
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
                Ok((
                    Reply::Assigned {
                        variant: v.name.clone(),
                        params: v.params.clone(),
                        new: true,
                    },
                    true,
                ))
            }
            Request::Event {
                name,
                unit,
                success,
            } => {
                self.load(&db, Some(&name), now)?;
                let arm = Self::stored_arm(&db, &unit)?.ok_or_else(|| {
                    GatewayError::Conflict(format!("unit {unit} was never assigned in {name}"))
                })?;
                db.exec(
                    "INSERT INTO tallies (variant, events, successes) VALUES (?, 1, ?) \
                     ON CONFLICT (variant) DO UPDATE SET events = events + 1, successes = successes + excluded.successes",
                    vec![arm.as_str().into(), i64::from(success).into()],
                )?;
                Ok((Reply::Recorded { variant: arm }, true))
            }
            Request::Analyse { name } => {
                let (_, def) = self.load(&db, Some(&name), now)?;
                self.run_analysis(&db, &def, now)?;
                self.state(&db, now, &name)
            }
            Request::Get { name } => self.state(&db, now, &name),
        }
    }

    fn state(&self, db: &Db, now: UnixMillis, name: &str) -> Result<(Reply, bool), GatewayError> {
        let (name, def) = self.load(db, Some(name), now)?;
        let tallies = Self::tallies(db, &def)?;
        let analysis = Self::stored_analysis(db);
        let object = self.base.object_stats(db)?;
        let winner = Self::winner(db)?;
        let promotions = u64::try_from(db.meta("promotions")?).unwrap_or(0);
        Ok((
            Reply::State(Box::new(ExpState {
                name,
                def,
                tallies,
                analysis,
                object,
                winner,
                promotions,
            })),
            false,
        ))
    }

    fn interval(&self) -> u64 {
        super::config(&self.env)
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

    fn winner(db: &Db) -> Result<Option<String>, GatewayError> {
        db.meta_text("winner")
    }

    /// Analyses now and, when the rule holds and nothing was promoted yet, promotes the winner
    /// (in the same synchronous block, so concurrent analyses and alarm retries promote once).
    /// Returns whether the experiment is still running.
    fn run_analysis(
        &self,
        db: &Db,
        def: &ExperimentDef,
        now: UnixMillis,
    ) -> Result<bool, GatewayError> {
        if Self::winner(db)?.is_some() {
            return Ok(false);
        }
        let previous = Self::stored_analysis(db);
        let analysis = analyse(def, &Self::tallies(db, def)?, previous.as_ref());
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
                Ok(false)
            }
            Verdict::Halt(_) => Ok(false),
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

impl DurableObject for ExperimentDO {
    fn new(state: State, env: Env) -> Self {
        ExperimentDO {
            base: Base::new(state),
            env,
            def: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: HttpRequest) -> worker::Result<Response> {
        self.base
            .serve(&mut req, self.interval(), |msg, now| self.handle(msg, now))
            .await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = now();
        self.base
            .finish_alarm(now, self.analyse(now), self.interval())
            .await
    }
}
