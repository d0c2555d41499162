//! `ProviderHealthDO`: one provider group (`providers:{group}`): its configuration, the balancer,
//! and live health, persisted so a restart keeps ejections and counters.
//!
//! On first use the group's providers come from the `PROVIDERS` variable and are stored; an admin
//! `PUT /v1/providers/{group}` replaces them. The alarm actively probes every provider's health
//! URL (concurrently, 2 s timeout each): a passing probe ends an ejection, a failing one counts
//! as a failure.

use std::cell::RefMut;
use std::time::Duration;

use futures::future::{join_all, select, Either};
use gateway_core::balancer::group::Write;
use gateway_core::balancer::{Group, Strategy};
use gateway_core::protocol::providers::{Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};
use worker::{durable_object, Delay, Fetch};

use super::{adapter, encode_blob, migrations, now, Adapter, Base, Blob, Db, Lazy, Wake};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A provider group.
#[durable_object(alarm)]
pub struct ProviderHealthDO {
    base: Base,
    group: Lazy<Group>,
}

fn persist(db: &Db, writes: Vec<Write>) -> Result<(), GatewayError> {
    for w in writes {
        match w {
            Write::Health { provider, state } => db.exec(
                "INSERT INTO health (name, state) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                vec![provider.into(), encode_blob(&state)?],
            )?,
            Write::Replace {
                group,
                specs,
                strategy,
            } => {
                db.exec("DELETE FROM providers", vec![])?;
                for (i, s) in specs.iter().enumerate() {
                    db.exec(
                        "INSERT INTO providers (position, name, spec) VALUES (?, ?, ?)",
                        vec![(i as i64).into(), s.name.as_str().into(), encode_blob(s)?],
                    )?;
                }
                db.exec(
                    "DELETE FROM health WHERE name NOT IN (SELECT name FROM providers)",
                    vec![],
                )?;
                db.set_meta_text("strategy", strategy.name())?;
                db.set_meta_text("group", &group)?;
            }
        }
    }
    Ok(())
}

fn health_rows(db: &Db) -> Result<Vec<(String, Vec<u8>)>, GatewayError> {
    db.all("SELECT name, state FROM health", vec![])
}

fn random() -> u64 {
    (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64
}

impl ProviderHealthDO {
    /// Loads the group (from storage, else from configuration, else 404).
    fn load(&self, db: &Db, asked: Option<&str>) -> Result<Group, GatewayError> {
        let stored: Vec<(Blob<_>,)> =
            db.all("SELECT spec FROM providers ORDER BY position", vec![])?;
        let stored = stored.into_iter().map(|(b,)| b.0).collect();
        let cfg = self.base.cfg()?;
        let configured = asked.and_then(|g| cfg.providers.get(g));
        let (name, specs, write) =
            Group::first_use(db.meta_text("group")?, stored, configured, asked)?;
        let strategy = Strategy::from_name(db.meta_text("strategy")?.as_deref().unwrap_or(""));
        persist(db, write.into_iter().collect())?;
        Ok(Group::restore(name, specs, strategy, health_rows(db)?))
    }

    fn group(&self, db: &Db, asked: Option<&str>) -> Result<RefMut<'_, Group>, GatewayError> {
        self.group.get(|| self.load(db, asked))
    }

    fn step(&self, msg: Request, now: UnixMillis) -> Result<(Reply, bool), GatewayError> {
        let db = self.base.db(migrations::PROVIDER_HEALTH, now)?;
        let (reply, writes) = match msg {
            Request::Configure {
                group,
                providers,
                strategy,
            } => {
                let (g, write) = Group::configure(group, providers, strategy, health_rows(&db)?)?;
                let n = g.balancer().specs().len() as u32;
                self.group.write(|| persist(&db, vec![write]))?;
                self.group.set(g);
                return Ok((Reply::Configured { providers: n }, true));
            }
            Request::Status { group } => {
                let object = self.base.object_stats(&db)?;
                let status = self.group(&db, Some(&group))?.status(now, object);
                (Reply::Status(status), Vec::new())
            }
            msg => {
                let asked = msg.group().to_string();
                self.group(&db, Some(&asked))?.handle(msg, now, random())?
            }
        };
        persist(&db, writes)?;
        Ok((reply, true))
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

adapter!(ProviderHealthDO { group }, interval: provider_probe_interval_ms);

impl Adapter for ProviderHealthDO {
    type Msg = Request;
    type Reply = Reply;

    async fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        self.step(msg, now).map(|(r, changed)| (r, changed.into()))
    }

    /// Probes every provider concurrently, then lets the group judge the results. A group with
    /// no providers configured has nothing to probe and nothing to wake up for.
    async fn on_alarm(&self, started: UnixMillis) -> Result<Wake, GatewayError> {
        let db = self.base.db(migrations::PROVIDER_HEALTH, started)?;
        let targets = match self.group(&db, None) {
            Ok(g) => g.probe_targets(),
            Err(e) => {
                worker::console_log!("provider alarm: {e}");
                return Ok(Wake::Idle);
            }
        };
        let oks = join_all(targets.iter().map(|(_, url)| Self::probe(url.clone()))).await;
        let now = now();
        let results = targets.into_iter().map(|(n, _)| n).zip(oks).collect();
        let writes = self.group(&db, None)?.on_probes(results, now);
        persist(&db, writes)?;
        self.base.record_alarm_run(&db, now)?;
        Ok(Wake::Periodic)
    }
}
