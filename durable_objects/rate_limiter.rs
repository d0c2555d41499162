//! `RateLimiterDO`: token buckets of the keys that hash to this shard (`ratelimit:{n}`).
//!
//! Take = read the key's TAT, decide in core, write the new TAT and the counter in the same
//! synchronous block (acknowledged before the response). Peek reads only. The alarm deletes
//! buckets that are full again, which loses no information (see `gateway_core::rate_limit`).

use gateway_core::alarm::next_alarm;
use gateway_core::protocol::ratelimit::{Request, Response as Reply, Stats};
use gateway_core::rate_limit::{self, Decision};
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, DurableObject, Env, Request as HttpRequest, Response, State};

use super::{migrations, now, respond, Base, Db};

/// The rate-limiter shard.
#[durable_object(alarm)]
pub struct RateLimiterDO {
    base: Base,
    env: Env,
}

impl RateLimiterDO {
    fn tat(db: &Db, policy: &str, key: &str) -> Result<Option<i64>, GatewayError> {
        db.scalar(
            "SELECT tat_us FROM buckets WHERE policy = ? AND key = ?",
            vec![policy.into(), key.into()],
        )
    }

    fn decide(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::RATE_LIMITER, now)?;
        match msg {
            Request::Take {
                policy_name,
                policy,
                key,
                cost,
            } => {
                let policy = policy.validated()?;
                let tat = Self::tat(&db, &policy_name, &key)?;
                let (decision, new_tat): (Decision, _) = rate_limit::take(&policy, tat, cost, now)?;
                if let Some(new_tat) = new_tat {
                    db.exec(
                        "INSERT INTO buckets (policy, key, tat_us) VALUES (?, ?, ?) \
                         ON CONFLICT (policy, key) DO UPDATE SET tat_us = excluded.tat_us",
                        vec![policy_name.into(), key.into(), new_tat.into()],
                    )?;
                }
                db.add_meta(
                    if decision.allowed {
                        "allowed"
                    } else {
                        "denied"
                    },
                    1,
                )?;
                Ok((Reply::Decision(decision), true))
            }
            Request::Peek {
                policy_name,
                policy,
                key,
                cost,
            } => {
                let policy = policy.validated()?;
                let tat = Self::tat(&db, &policy_name, &key)?;
                Ok((
                    Reply::Decision(rate_limit::peek(&policy, tat, cost, now)?),
                    false,
                ))
            }
            Request::Reset { policy_name, key } => {
                let n = db.exec_count(
                    "DELETE FROM buckets WHERE policy = ? AND key = ?",
                    vec![policy_name.into(), key.into()],
                )?;
                Ok((Reply::Reset { existed: n > 0 }, false))
            }
            Request::Stats => {
                let buckets = db
                    .scalar("SELECT count(*) FROM buckets", vec![])?
                    .unwrap_or(0);
                Ok((
                    Reply::Stats(Stats {
                        buckets: u64::try_from(buckets).unwrap_or(0),
                        allowed: u64::try_from(db.meta("allowed")?).unwrap_or(0),
                        denied: u64::try_from(db.meta("denied")?).unwrap_or(0),
                        collected: u64::try_from(db.meta("collected")?).unwrap_or(0),
                        object: self.base.object_stats(&db)?,
                    }),
                    false,
                ))
            }
        }
    }

    fn interval(&self) -> u64 {
        super::config(&self.env)
            .map(|c| c.rate_limit_gc_interval_ms)
            .unwrap_or(300_000)
    }
}

impl DurableObject for RateLimiterDO {
    fn new(state: State, env: Env) -> Self {
        RateLimiterDO {
            base: Base::new(state),
            env,
        }
    }

    async fn fetch(&self, mut req: HttpRequest) -> worker::Result<Response> {
        let bytes = req.bytes().await?;
        let now = now();
        let result = super::decode_request(&bytes).and_then(|msg| self.decide(msg, now));
        if let Ok((_, true)) = &result {
            self.base
                .ensure_alarm(next_alarm(now, self.interval(), None))
                .await?;
        }
        respond(result.map(|(r, _)| r))
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = now();
        let db = self
            .base
            .db(migrations::RATE_LIMITER, now)
            .map_err(|e| e.to_string())?;
        let collected = db
            .exec_count(
                "DELETE FROM buckets WHERE tat_us <= ?",
                vec![rate_limit::idle_cutoff_us(now).into()],
            )
            .map_err(|e| e.to_string())?;
        let remaining = db
            .scalar("SELECT count(*) FROM buckets", vec![])
            .map_err(|e| e.to_string())?;
        db.add_meta("collected", i64::try_from(collected).unwrap_or(0))
            .map_err(|e| e.to_string())?;
        self.base
            .record_alarm_run(&db, now)
            .map_err(|e| e.to_string())?;
        let next = remaining.filter(|n| *n > 0);
        self.base
            .rearm(next.map(|_| next_alarm(now, self.interval(), None)))
            .await?;
        Response::ok("ok")
    }
}
