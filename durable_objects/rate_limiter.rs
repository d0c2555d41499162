//! `RateLimiterDO`: the keys that hash to this shard (`ratelimit:{n}`), and a copy of the
//! run-time policy overrides.
//!
//! Take = resolve the policy, read the key's state, decide in core, write the new state and the
//! counters in the same synchronous block (acknowledged before the response). Peek reads only. The
//! alarm deletes rows that no longer affect any decision (full buckets, windows two windows old),
//! which loses no information. Shard 0 is also the registry that versions policy changes.

use std::cell::RefMut;

use gateway_core::protocol::ratelimit::{PolicyCounters, Request, Response as Reply, Stats};
use gateway_core::rate_limit::policy::{self, Counter, KeyState, Overrides, Policy};
use gateway_core::rate_limit::sliding::WindowState;
use gateway_core::{rate_limit, GatewayError, UnixMillis};
use worker::durable_object;

use super::{adapter, encode_blob, migrations, Adapter, Base, Blob, Db, Lazy, Wake};

/// The rate-limiter shard.
#[durable_object(alarm)]
pub struct RateLimiterDO {
    base: Base,
    overrides: Lazy<Overrides>,
}

fn count(v: Option<i64>) -> u64 {
    u64::try_from(v.unwrap_or(0)).unwrap_or(0)
}

fn load_overrides(db: &Db) -> Result<Overrides, GatewayError> {
    let mut overrides = Overrides::default();
    let rows: Vec<(String, Option<Blob<Policy>>, i64)> =
        db.all("SELECT name, spec, version FROM policies", vec![])?;
    for (name, spec, version) in rows {
        overrides.insert_loaded(name, spec.map(|b| b.0), version);
    }
    Ok(overrides)
}

impl RateLimiterDO {
    /// The loaded overrides, borrowed for one synchronous step.
    fn overrides(&self, db: &Db) -> Result<RefMut<'_, Overrides>, GatewayError> {
        self.overrides.get(|| load_overrides(db))
    }

    fn policy(&self, db: &Db, name: &str) -> Result<Policy, GatewayError> {
        let cfg = self.base.cfg()?;
        self.overrides(db)?.resolve(&cfg.rate_limit_policies, name)
    }

    fn state(
        db: &Db,
        policy: &Policy,
        name: &str,
        key: &str,
    ) -> Result<Option<KeyState>, GatewayError> {
        Ok(match policy.algorithm {
            policy::Algorithm::TokenBucket(_) => db
                .scalar(
                    "SELECT tat_us FROM buckets WHERE policy = ? AND key = ?",
                    vec![name.into(), key.into()],
                )?
                .map(KeyState::Tat),
            policy::Algorithm::SlidingWindow(_) => db
                .one::<(i64, u64, u64)>(
                    "SELECT start, prev, curr FROM windows WHERE policy = ? AND key = ?",
                    vec![name.into(), key.into()],
                )?
                .map(|(start, prev, curr)| KeyState::Window(WindowState { start, prev, curr })),
        })
    }

    fn persist(
        db: &Db,
        policy: &Policy,
        name: &str,
        key: &str,
        state: KeyState,
    ) -> Result<(), GatewayError> {
        match (state, policy.algorithm) {
            (KeyState::Tat(tat), _) => db.exec(
                "INSERT INTO buckets (policy, key, tat_us) VALUES (?, ?, ?) \
                 ON CONFLICT (policy, key) DO UPDATE SET tat_us = excluded.tat_us",
                vec![name.into(), key.into(), tat.into()],
            ),
            (KeyState::Window(w), policy::Algorithm::SlidingWindow(p)) => db.exec(
                "INSERT INTO windows (policy, key, start, prev, curr, idle_at) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (policy, key) DO UPDATE SET start = excluded.start, prev = excluded.prev, \
                 curr = excluded.curr, idle_at = excluded.idle_at",
                vec![
                    name.into(),
                    key.into(),
                    w.start.into(),
                    i64::try_from(w.prev).unwrap_or(i64::MAX).into(),
                    i64::try_from(w.curr).unwrap_or(i64::MAX).into(),
                    w.idle_at(&p).0.into(),
                ],
            ),
            (KeyState::Window(_), _) => Ok(()),
        }
    }

    fn count(db: &Db, name: &str, counter: Counter) -> Result<(), GatewayError> {
        let column = counter.as_str();
        db.exec(
            &format!(
                "INSERT INTO policy_counters (policy, {column}) VALUES (?, 1) \
                 ON CONFLICT (policy) DO UPDATE SET {column} = {column} + 1"
            ),
            vec![name.into()],
        )
    }

    /// A take (`consume`) or a peek: resolve the policy, read the key's state, decide in core,
    /// and for a take persist the new state and count the decision in the same synchronous step.
    fn decide_one(
        &self,
        db: &Db,
        policy_name: &str,
        key: &str,
        cost: u64,
        consume: bool,
        now: UnixMillis,
    ) -> Result<(Reply, bool), GatewayError> {
        let policy = self.policy(db, policy_name)?;
        let state = Self::state(db, &policy, policy_name, key)?;
        if !consume {
            let out = policy::peek(&policy, state, cost, now)?;
            let reply = Reply::Decision {
                decision: out.decision,
                shadow_denied: out.shadow_denied,
                policy,
            };
            return Ok((reply, false));
        }
        let out = policy::take(&policy, state, cost, now)?;
        if let Some(s) = out.new_state {
            Self::persist(db, &policy, policy_name, key, s)?;
        }
        Self::count(db, policy_name, out.counter())?;
        let reply = Reply::Decision {
            decision: out.decision,
            shadow_denied: out.shadow_denied,
            policy,
        };
        Ok((reply, true))
    }

    fn decide(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::RATE_LIMITER, now)?;
        let msg = match super::keys::handle(&db, msg, now)? {
            Ok(reply) => return Ok((reply, false)),
            Err(msg) => msg,
        };
        match msg {
            Request::Take {
                policy_name,
                key,
                cost,
            } => self.decide_one(&db, &policy_name, &key, cost, true, now),
            Request::Peek {
                policy_name,
                key,
                cost,
            } => self.decide_one(&db, &policy_name, &key, cost, false, now),
            Request::Reset { policy_name, key } => {
                let a = db.exec_count(
                    "DELETE FROM buckets WHERE policy = ? AND key = ?",
                    vec![policy_name.as_str().into(), key.as_str().into()],
                )?;
                let b = db.exec_count(
                    "DELETE FROM windows WHERE policy = ? AND key = ?",
                    vec![policy_name.into(), key.into()],
                )?;
                Ok((Reply::Reset { existed: a + b > 0 }, false))
            }
            Request::PutPolicy {
                name,
                policy,
                version,
            } => {
                let version = match self.overrides(&db)?.apply(&name, policy, version, now) {
                    Ok(v) => v,
                    Err(current) => return Ok((Reply::PolicyStored { version: current }, false)),
                };
                let spec = match &policy {
                    Some(p) => encode_blob(p)?,
                    None => worker::SqlStorageValue::Null,
                };
                // Memory ran ahead of storage: a failed write reloads on the next request.
                self.overrides.write(|| {
                    db.exec(
                        "INSERT INTO policies (name, spec, version) VALUES (?, ?, ?) \
                         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, version = excluded.version",
                        vec![name.as_str().into(), spec, version.into()],
                    )
                })?;
                Ok((Reply::PolicyStored { version }, false))
            }
            Request::ListPolicies => {
                let cfg = self.base.cfg()?;
                let list = self.overrides(&db)?.effective(&cfg.rate_limit_policies);
                Ok((Reply::Policies(list), false))
            }
            Request::CreateKey(_)
            | Request::GetKey { .. }
            | Request::ListKeys
            | Request::RevokeKey { .. }
            | Request::Admit { .. }
            | Request::SettleKey { .. } => Err(GatewayError::Internal(
                "a key message reached the policy path".into(),
            )),
            Request::Stats => {
                let policies: Vec<PolicyCounters> = db
                    .all::<(String, u64, u64, u64)>(
                        "SELECT policy, allowed, denied, shadow_denied FROM policy_counters ORDER BY policy",
                        vec![],
                    )?
                    .into_iter()
                    .map(|(policy, allowed, denied, shadow_denied)| PolicyCounters {
                        policy,
                        allowed,
                        denied,
                        shadow_denied,
                    })
                    .collect();
                let totals = PolicyCounters::total("", &policies);
                Ok((
                    Reply::Stats(Stats {
                        buckets: count(db.scalar("SELECT count(*) FROM buckets", vec![])?),
                        windows: count(db.scalar("SELECT count(*) FROM windows", vec![])?),
                        allowed: totals.allowed,
                        denied: totals.denied,
                        shadow_denied: totals.shadow_denied,
                        collected: count(Some(db.meta("collected")?)),
                        policies,
                        object: self.base.object_stats(&db)?,
                    }),
                    false,
                ))
            }
        }
    }

    /// Deletes rows that no longer decide anything; returns whether rows remain.
    fn collect(&self, now: UnixMillis) -> Result<bool, GatewayError> {
        let db = self.base.db(migrations::RATE_LIMITER, now)?;
        let a = db.exec_count(
            "DELETE FROM buckets WHERE tat_us <= ?",
            vec![rate_limit::idle_cutoff_us(now).into()],
        )?;
        let b = db.exec_count("DELETE FROM windows WHERE idle_at <= ?", vec![now.0.into()])?;
        db.add_meta("collected", i64::try_from(a + b).unwrap_or(0))?;
        let remaining = db.scalar(
            "SELECT (SELECT count(*) FROM buckets) + (SELECT count(*) FROM windows)",
            vec![],
        )?;
        self.base.record_alarm_run(&db, now)?;
        Ok(remaining.unwrap_or(0) > 0)
    }
}

adapter!(RateLimiterDO { overrides }, interval: rate_limit_gc_interval_ms);

impl Adapter for RateLimiterDO {
    type Msg = Request;
    type Reply = Reply;

    async fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        self.decide(msg, now)
            .map(|(r, changed)| (r, changed.into()))
    }

    async fn on_alarm(&self, now: UnixMillis) -> Result<Wake, GatewayError> {
        self.collect(now).map(Wake::from)
    }
}
