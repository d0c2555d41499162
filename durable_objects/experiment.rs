//! `ExperimentDO`: one experiment (`experiment:{name}`), or the index (`experiment-index`) of the
//! same class, which keeps the list of experiments and their proxy targets.
//!
//! Every rule lives in `gateway_core::experiment::Machine`. Per request this adapter loads the
//! machine once per instance, reads the stored arm of each unit the request names, makes one
//! core call, persists the returned writes with synchronous `sql.exec` calls (no `.await` in
//! between, so the input gate makes the read, the decision and the writes one atomic step: a
//! verdict acts once and a unit's first assignment cannot race), arms the alarm and answers. The
//! index is plain storage.

use std::collections::BTreeMap;

use gateway_core::experiment::{
    Change, Known, Machine, Moments, Stored, StoredDef, Target, DECISIONS_SHOWN, DEF_LAYOUT,
};
use gateway_core::protocol::experiment::{Decision, IndexEntry, Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};
use worker::durable_object;

use super::row::Column;
use super::{adapter, encode_blob, migrations, Adapter, Base, Blob, Db, Lazy, Shell, Wake};

/// An experiment (or the experiment index).
#[durable_object(alarm)]
pub struct ExperimentDO {
    base: Base,
    machine: Lazy<Machine>,
}

/// A `_meta` value as `T` (absent: `None`; of another type: a corruption error).
fn meta<T: Column>(db: &Db, key: &str) -> Result<Option<T>, GatewayError> {
    let row = db.one::<(T,)>("SELECT value FROM _meta WHERE key = ?", vec![key.into()])?;
    Ok(row.map(|(v,)| v))
}

/// Reads every row the machine is built from.
fn load(db: &Db, interval_ms: u64) -> Result<Machine, GatewayError> {
    let definition = db
        .one::<(String, i64, Vec<u8>)>(
            "SELECT name, layout, def FROM definition WHERE id = 1",
            vec![],
        )?
        .map(|(name, layout, def)| StoredDef { name, layout, def });
    let moments = db
        .all::<(String, String, u64, f64, f64)>(
            "SELECT variant, metric, n, sum, sum_sq FROM metric_tallies",
            vec![],
        )?
        .into_iter()
        .map(|(arm, metric, n, sum, sum_sq)| (arm, metric, Moments { n, sum, sum_sq }))
        .collect();
    let decisions = db
        .all::<(String, Option<String>, i64, String)>(
            "SELECT kind, arm, at, reason FROM \
             (SELECT seq, kind, arm, at, reason FROM decisions ORDER BY seq DESC LIMIT ?) \
             ORDER BY seq",
            vec![i64::try_from(DECISIONS_SHOWN).unwrap_or(i64::MAX).into()],
        )?
        .into_iter()
        .map(|(kind, arm, at, reason)| Decision {
            kind,
            arm,
            at: UnixMillis(at),
            reason,
        })
        .collect();
    let stored = Stored {
        definition,
        deleted: meta::<bool>(db, "deleted")?.unwrap_or(false),
        status: meta(db, "status")?,
        winner: meta(db, "winner")?,
        promotions: meta(db, "promotions")?.unwrap_or(0),
        assigned: db.all("SELECT variant, assigned FROM tallies", vec![])?,
        moments,
        analysis: db
            .one::<(Vec<u8>,)>("SELECT snapshot FROM analysis WHERE id = 1", vec![])?
            .map(|(b,)| b),
        decisions,
    };
    Machine::load(stored, interval_ms)
}

/// The stored arm of each unit (units never assigned are absent).
fn stored_arms(db: &Db, units: Vec<&str>) -> Result<BTreeMap<String, String>, GatewayError> {
    let mut arms = BTreeMap::new();
    for unit in units {
        if arms.contains_key(unit) {
            continue;
        }
        let row = db.one::<(String,)>(
            "SELECT variant FROM assignments WHERE unit = ?",
            vec![unit.into()],
        )?;
        if let Some((arm,)) = row {
            arms.insert(unit.to_string(), arm);
        }
    }
    Ok(arms)
}

/// Persists what the machine changed, in order.
fn persist(db: &Db, writes: &[Change]) -> Result<(), GatewayError> {
    for change in writes {
        match change {
            Change::Definition { name, def, at } => db.exec(
                "INSERT INTO definition (id, name, def, updated_at, layout) VALUES (1, ?, ?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, def = excluded.def, \
                 updated_at = excluded.updated_at, layout = excluded.layout",
                vec![
                    name.as_str().into(),
                    encode_blob(def)?,
                    at.0.into(),
                    DEF_LAYOUT.into(),
                ],
            )?,
            Change::Deleted(deleted) => db.set_meta("deleted", i64::from(*deleted))?,
            Change::Assignment { unit, arm, at } => db.exec(
                "INSERT INTO assignments (unit, variant, assigned_at) VALUES (?, ?, ?) \
                 ON CONFLICT (unit) DO UPDATE SET variant = excluded.variant, assigned_at = excluded.assigned_at",
                vec![unit.as_str().into(), arm.as_str().into(), at.0.into()],
            )?,
            Change::Assigned { arm } => db.exec(
                "INSERT INTO tallies (variant, assigned) VALUES (?, 1) \
                 ON CONFLICT (variant) DO UPDATE SET assigned = assigned + 1",
                vec![arm.as_str().into()],
            )?,
            Change::Observed { arm, metric, value } => db.exec(
                "INSERT INTO metric_tallies (variant, metric, n, sum, sum_sq) VALUES (?, ?, 1, ?, ?) \
                 ON CONFLICT (variant, metric) DO UPDATE SET n = n + 1, sum = sum + excluded.sum, \
                 sum_sq = sum_sq + excluded.sum_sq",
                vec![
                    arm.as_str().into(),
                    metric.as_str().into(),
                    (*value).into(),
                    (value * value).into(),
                ],
            )?,
            Change::Status(status) => db.set_meta_text("status", status.as_str())?,
            Change::Promoted { arm, at } => {
                db.set_meta_text("winner", arm)?;
                db.add_meta("promotions", 1)?;
                db.set_meta("promoted_at", at.0)?;
            }
            Change::Analysis { snapshot, at } => db.exec(
                "INSERT INTO analysis (id, snapshot, at) VALUES (1, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot, at = excluded.at",
                vec![encode_blob(snapshot)?, at.0.into()],
            )?,
            Change::Decision(d) => db.exec(
                "INSERT INTO decisions (kind, arm, at, reason) VALUES (?, ?, ?, ?)",
                vec![
                    d.kind.as_str().into(),
                    d.arm
                        .as_deref()
                        .map_or(worker::SqlStorageValue::Null, Into::into),
                    d.at.0.into(),
                    d.reason.as_str().into(),
                ],
            )?,
            Change::Erased => {
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
            }
        }
    }
    Ok(())
}

/// An index row: name, target (NULL once deleted), deleted.
type IndexRow = (String, Option<Blob<Option<Target>>>, bool);

/// The index object's requests (plain storage); other requests are handed back.
fn index(db: &Db, msg: Request, now: UnixMillis) -> Result<Result<Reply, Request>, GatewayError> {
    match msg {
        Request::IndexPut { name, target } => db.exec(
            "INSERT INTO experiment_index (name, target, deleted, updated_at) VALUES (?, ?, 0, ?) \
             ON CONFLICT (name) DO UPDATE SET target = excluded.target, deleted = 0, updated_at = excluded.updated_at",
            vec![name.into(), encode_blob(&target)?, now.0.into()],
        )?,
        Request::IndexDelete { name } => db.exec(
            "INSERT INTO experiment_index (name, target, deleted, updated_at) VALUES (?, NULL, 1, ?) \
             ON CONFLICT (name) DO UPDATE SET target = NULL, deleted = 1, updated_at = excluded.updated_at",
            vec![name.into(), now.0.into()],
        )?,
        Request::IndexList => {
            let rows: Vec<IndexRow> = db.all(
                "SELECT name, target, deleted FROM experiment_index ORDER BY name",
                vec![],
            )?;
            let entries = rows
                .into_iter()
                .map(|(name, target, deleted)| IndexEntry {
                    name,
                    target: target.and_then(|t| t.0),
                    deleted,
                })
                .collect();
            return Ok(Ok(Reply::Index(entries)));
        }
        msg => return Ok(Err(msg)),
    }
    Ok(Ok(Reply::Index(vec![])))
}

impl ExperimentDO {
    /// Load → one core call → persist → answer (synchronous from the first read to the last
    /// write).
    fn step(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        let db = self.base.db(migrations::EXPERIMENT, now)?;
        let msg = match index(&db, msg, now)? {
            Ok(reply) => return Ok((reply, Wake::Idle)),
            Err(msg) => msg,
        };
        let cfg = self.base.cfg()?;
        let known = Known {
            arms: stored_arms(&db, Machine::units(&msg))?,
            configured: &cfg.experiments,
        };
        let (mut reply, writes, due) = {
            let mut m = self.machine.get(|| load(&db, self.interval()))?;
            let (reply, writes) = m.handle(msg, &known, now)?;
            (reply, writes, m.next_deadline())
        };
        // Memory ran ahead of storage: a failed write reloads on the next request.
        self.machine.write(|| persist(&db, &writes))?;
        if let Reply::State(state) = &mut reply {
            state.object = self.base.object_stats(&db)?;
        }
        Ok((reply, due.map_or(Wake::Idle, |at| Wake::By(Some(at)))))
    }

    /// The alarm: one core call, its writes and the run's bookkeeping in one synchronous block.
    /// Returns whether the alarm should run again.
    fn analyse(&self, now: UnixMillis) -> Result<bool, GatewayError> {
        let db = self.base.db(migrations::EXPERIMENT, now)?;
        let (effects, due) = {
            let mut m = self.machine.get(|| load(&db, self.interval()))?;
            (m.on_alarm(now), m.next_deadline())
        };
        self.machine.write(|| {
            persist(&db, &effects.writes)?;
            if effects.ran {
                self.base.record_alarm_run(&db, now)?;
            }
            Ok(())
        })?;
        Ok(due.is_some())
    }
}

adapter!(ExperimentDO { machine }, interval: experiment_analysis_interval_ms);

impl Adapter for ExperimentDO {
    type Msg = Request;
    type Reply = Reply;

    async fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        self.step(msg, now)
    }

    async fn on_alarm(&self, now: UnixMillis) -> Result<Wake, GatewayError> {
        self.analyse(now).map(Wake::from)
    }
}
