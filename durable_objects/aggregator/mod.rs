//! `AggregatorDO`: metric shards (`aggregator:{n}`) and the root (`aggregator:root`), one class.
//!
//! Every rule lives in `gateway_core::observe`: [`Ingest`] is a shard (batch dedupe, windows,
//! seal, its alarm), [`Root`] the root (merge, retention, alerts, outbox, daily report, the
//! views), and [`Role`] says which of the two answers a message. This module stores the role a
//! message claims and dispatches; [`shard`] and [`root`] load their machine once per instance,
//! make one core call per step and persist the returned writes with synchronous `sql.exec`
//! calls (no `.await` between the read, the decision and the writes, so the input gate makes
//! each step atomic). The root's only awaits are the I/O: collecting the shards concurrently and
//! POSTing webhooks, whose results are fed back into the machine.
//!
//! Alarms: a shard re-arms while it holds windows (and wakes the root each time); the root
//! re-arms forever once woken (by a shard, `Wake`, `Run`, `Summary` or `Points`).

mod root;
mod shard;

use gateway_core::observe::ingest::Role;
use gateway_core::observe::{Ingest, Root};
use gateway_core::protocol::aggregator::{Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};
use worker::durable_object;

use super::{adapter, migrations, Adapter, Base, Db, Lazy, Wake};

/// A metric shard or the root.
#[durable_object(alarm)]
pub struct AggregatorDO {
    base: Base,
    ingest: Lazy<Ingest>,
    root: Lazy<Root>,
}

/// The stored role (a shard until something makes it the root).
fn role(db: &Db) -> Result<Role, GatewayError> {
    Ok(Role::parse(db.meta_text("role")?.as_deref()))
}

/// Stores `role` (written only when it changes).
fn claim(db: &Db, role: Role) -> Result<(), GatewayError> {
    if db.meta_text("role")?.as_deref() != Some(role.name()) {
        db.set_meta_text("role", role.name())?;
    }
    Ok(())
}

impl AggregatorDO {
    /// Stores the role the message claims, then lets the machine that answers it decide.
    async fn dispatch(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        let db = self.base.db(migrations::AGGREGATOR, now)?;
        if let Some(claimed) = Role::claimed_by(&msg) {
            claim(&db, claimed)?;
        }
        let (mut reply, wake) = match role(&db)?.answering(&msg) {
            Role::Shard => self.shard_request(&db, msg, now)?,
            // `Run` awaits other objects and webhooks.
            Role::Root if matches!(msg, Request::Run) => {
                (Reply::Ran(self.run(&db, now).await?), true)
            }
            Role::Root => self.root_request(&db, msg, now)?,
        };
        if let Reply::Stats(stats) = &mut reply {
            stats.object = self.base.object_stats(&db)?;
        }
        Ok((reply, Wake::from(wake)))
    }
}

adapter!(AggregatorDO { ingest, root }, interval: rollup_interval_ms);

impl Adapter for AggregatorDO {
    type Msg = Request;
    type Reply = Reply;

    async fn handle(&self, msg: Request, now: UnixMillis) -> Result<(Reply, Wake), GatewayError> {
        self.dispatch(msg, now).await
    }

    async fn on_alarm(&self, now: UnixMillis) -> Result<Wake, GatewayError> {
        let db = self.base.db(migrations::AGGREGATOR, now)?;
        let again = match role(&db).unwrap_or(Role::Shard) {
            Role::Root => self
                .run(&db, now)
                .await
                .map(|_| self.root.peek(Root::rearms).unwrap_or(true)),
            Role::Shard => self.shard_alarm(&db, now).await,
        }?;
        Ok(Wake::from(again))
    }
}
