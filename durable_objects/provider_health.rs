//! `ProviderHealthDO`: one provider group (`providers:{group}`): its configuration, the balancer,
//! and live health, persisted so a restart keeps ejections and counters.
//!
//! On first use the group's providers come from the `PROVIDERS` variable and are stored; an admin
//! `PUT /v1/providers/{group}` replaces them. The alarm actively probes every provider's health
//! URL (concurrently, 2 s timeout each): a passing probe ends an ejection, a failing one counts
//! as a failure.

use std::cell::RefCell;
use std::time::Duration;

use futures::future::{join_all, select, Either};
use gateway_core::alarm::next_alarm;
use gateway_core::balancer::{Balancer, EjectionPolicy, ProviderHealth, ProviderSpec, Strategy};
use gateway_core::protocol::providers::{GroupStatus, ProviderStatus, Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};
use worker::{
    durable_object, Delay, DurableObject, Env, Fetch, Request as HttpRequest, Response, State,
};

use super::{col, decode_blob, encode_blob, migrations, now, text, Base, Db, Wake};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A provider group.
#[durable_object(alarm)]
pub struct ProviderHealthDO {
    base: Base,
    balancer: RefCell<Option<(String, Balancer)>>,
}

impl ProviderHealthDO {
    fn stored_specs(db: &Db) -> Result<Vec<ProviderSpec>, GatewayError> {
        db.rows("SELECT spec FROM providers ORDER BY position", vec![])?
            .iter()
            .map(|r| col(r, 0).and_then(decode_blob))
            .collect()
    }

    fn store_specs(db: &Db, specs: &[ProviderSpec]) -> Result<(), GatewayError> {
        db.exec("DELETE FROM providers", vec![])?;
        for (i, s) in specs.iter().enumerate() {
            db.exec(
                "INSERT INTO providers (position, name, spec) VALUES (?, ?, ?)",
                vec![(i as i64).into(), s.name.as_str().into(), encode_blob(s)?],
            )?;
        }
        Ok(())
    }

    fn persist_health(db: &Db, name: &str, h: &ProviderHealth) -> Result<(), GatewayError> {
        db.exec(
            "INSERT INTO health (name, state) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET state = excluded.state",
            vec![name.into(), encode_blob(h)?],
        )
    }

    fn stored_strategy(db: &Db) -> Result<Strategy, GatewayError> {
        let name = db.meta_text("strategy")?;
        Ok(Strategy::from_name(name.as_deref().unwrap_or("weighted")))
    }

    fn build(db: &Db, specs: Vec<ProviderSpec>) -> Result<Balancer, GatewayError> {
        let mut b = Balancer::new(specs, EjectionPolicy::default())
            .with_strategy(Self::stored_strategy(db)?);
        for row in db.rows("SELECT name, state FROM health", vec![])? {
            let name = text(col(&row, 0)?).unwrap_or_default();
            // Health written by an older layout is dropped rather than failing the group.
            match decode_blob::<ProviderHealth>(col(&row, 1)?) {
                Ok(h) => b.restore_health(&name, h),
                Err(e) => worker::console_log!(
                    "provider {name}: stored health unreadable ({e}); starting fresh"
                ),
            }
        }
        Ok(b)
    }

    /// Loads the balancer for `group` (from storage, else from configuration, else 404).
    fn load(&self, db: &Db, group: Option<&str>) -> Result<(), GatewayError> {
        if self.balancer.borrow().is_some() {
            return Ok(());
        }
        let mut specs = Self::stored_specs(db)?;
        let mut name = db.meta_text("group")?.unwrap_or_default();
        if specs.is_empty() {
            let group = group.ok_or_else(|| GatewayError::NotFound("no providers".into()))?;
            let cfg = self.base.cfg()?;
            specs = cfg.providers.get(group).cloned().ok_or_else(|| {
                GatewayError::NotFound(format!("no provider group named {group}"))
            })?;
            Self::store_specs(db, &specs)?;
            db.set_meta_text("group", group)?;
            name = group.to_string();
        }
        *self.balancer.borrow_mut() = Some((name, Self::build(db, specs)?));
        Ok(())
    }

    fn status(&self, db: &Db, now: UnixMillis) -> Result<GroupStatus, GatewayError> {
        let guard = self.balancer.borrow();
        let (group, b) = guard
            .as_ref()
            .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
        let providers = b
            .specs()
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let health = b.health(i).cloned().unwrap_or_default();
                let circuit = health.circuit_at(now);
                let (p50, p95, p99) = (
                    health.latency.quantile(0.5),
                    health.latency.quantile(0.95),
                    health.latency.quantile(0.99),
                );
                ProviderStatus {
                    spec: spec.clone(),
                    healthy: b.in_rotation(i, now),
                    health,
                    budget_left_micro_usd: b.budget_left(i, now),
                    circuit,
                    latency_p50_ms: p50,
                    latency_p95_ms: p95,
                    latency_p99_ms: p99,
                }
            })
            .collect();
        Ok(GroupStatus {
            group: group.clone(),
            strategy: b.strategy(),
            providers,
            object: self.base.object_stats(db)?,
        })
    }

    fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::PROVIDER_HEALTH, now)?;
        match msg {
            Request::Configure {
                group,
                providers,
                strategy,
            } => {
                gateway_core::balancer::validate_group(&providers)?;
                Self::store_specs(&db, &providers)?;
                db.set_meta_text("strategy", strategy.name())?;
                db.exec(
                    "DELETE FROM health WHERE name NOT IN (SELECT name FROM providers)",
                    vec![],
                )?;
                db.set_meta_text("group", &group)?;
                let n = providers.len() as u32;
                *self.balancer.borrow_mut() = Some((group, Self::build(&db, providers)?));
                Ok((Reply::Configured { providers: n }, true))
            }
            Request::Pick {
                group,
                exclude,
                prefer,
            } => {
                self.load(&db, Some(&group))?;
                let mut guard = self.balancer.borrow_mut();
                let (_, b) = guard
                    .as_mut()
                    .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
                let pick = b
                    .pick_with(
                        now,
                        &exclude,
                        (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64,
                        &prefer,
                    )
                    .ok_or_else(|| {
                        GatewayError::Unavailable("every provider of the group was tried".into())
                    })?;
                Ok((Reply::Picked(pick), true))
            }
            Request::PickRanked { group, prefer, max } => {
                self.load(&db, Some(&group))?;
                let mut guard = self.balancer.borrow_mut();
                let (_, b) = guard
                    .as_mut()
                    .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
                let rand = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
                let picks = b.pick_ranked(now, rand, &prefer, usize::from(max));
                let budget_resets_in_ms = b.budgets_reset_in_ms(now);
                Ok((
                    Reply::Candidates {
                        picks,
                        budget_resets_in_ms,
                    },
                    true,
                ))
            }
            Request::Settle {
                group,
                outcomes,
                released,
            } => {
                self.load(&db, Some(&group))?;
                let mut guard = self.balancer.borrow_mut();
                let (_, b) = guard
                    .as_mut()
                    .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
                for (provider, panic) in released {
                    b.release(&provider, panic, now);
                }
                for (provider, outcome) in outcomes {
                    if let Some(i) = b.report(&provider, outcome, now) {
                        if let Some(h) = b.health(i) {
                            Self::persist_health(&db, &provider, h)?;
                        }
                    }
                }
                Ok((Reply::Reported, true))
            }
            Request::ReportMany { group, outcomes } => {
                self.load(&db, Some(&group))?;
                let mut guard = self.balancer.borrow_mut();
                let (_, b) = guard
                    .as_mut()
                    .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
                for (provider, outcome) in outcomes {
                    if let Some(i) = b.report(&provider, outcome, now) {
                        if let Some(h) = b.health(i) {
                            Self::persist_health(&db, &provider, h)?;
                        }
                    }
                }
                Ok((Reply::Reported, true))
            }
            Request::Report {
                group,
                provider,
                outcome,
            } => {
                self.load(&db, Some(&group))?;
                let mut guard = self.balancer.borrow_mut();
                let (_, b) = guard
                    .as_mut()
                    .ok_or_else(|| GatewayError::Internal("not loaded".into()))?;
                let i = b.report(&provider, outcome, now).ok_or_else(|| {
                    GatewayError::NotFound(format!("no provider named {provider} in {group}"))
                })?;
                if let Some(h) = b.health(i) {
                    Self::persist_health(&db, &provider, h)?;
                }
                Ok((Reply::Reported, true))
            }
            Request::Status { group } => {
                self.load(&db, Some(&group))?;
                Ok((Reply::Status(self.status(&db, now)?), true))
            }
        }
    }

    fn interval(&self) -> u64 {
        self.base
            .cfg()
            .map(|c| c.provider_probe_interval_ms)
            .unwrap_or(15_000)
    }

    async fn probe(url: String) -> bool {
        let fetch = async {
            match Fetch::Url(url.parse().map_err(|_| worker::Error::from("bad url"))?)
                .send()
                .await
            {
                Ok(resp) => Ok::<bool, worker::Error>((200..300).contains(&resp.status_code())),
                Err(_) => Ok(false),
            }
        };
        match select(Box::pin(fetch), Delay::from(PROBE_TIMEOUT)).await {
            Either::Left((Ok(ok), _)) => ok,
            _ => false,
        }
    }
}

impl DurableObject for ProviderHealthDO {
    fn new(state: State, env: Env) -> Self {
        ProviderHealthDO {
            base: Base::new(state, env),
            balancer: RefCell::new(None),
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
        let started = now();
        let db = self
            .base
            .db(migrations::PROVIDER_HEALTH, started)
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.load(&db, None) {
            // No providers configured: nothing to probe and nothing to wake up for.
            worker::console_log!("provider alarm: {e}");
            self.base.rearm(None).await?;
            return Response::ok("idle");
        }
        let targets = self
            .balancer
            .borrow()
            .as_ref()
            .map(|(_, b)| b.probe_targets())
            .unwrap_or_default();
        let results = join_all(targets.iter().map(|(_, url)| Self::probe(url.clone()))).await;
        let now = now();
        {
            let mut guard = self.balancer.borrow_mut();
            if let Some((_, b)) = guard.as_mut() {
                for ((name, _), ok) in targets.iter().zip(results) {
                    if let Some(i) = b.on_probe(name, ok, now) {
                        if let Some(h) = b.health(i) {
                            Self::persist_health(&db, name, h).map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
        }
        self.base
            .record_alarm_run(&db, now)
            .map_err(|e| e.to_string())?;
        self.base
            .rearm(Some(next_alarm(now, self.interval(), None)))
            .await?;
        Response::ok("ok")
    }
}
