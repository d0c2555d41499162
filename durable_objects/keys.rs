//! The virtual keys a `RateLimiterDO` shard holds (`gateway_core::keys`): read the key's two
//! rows, one core call, write what it returns, in one synchronous step.

use gateway_core::keys::store::{self, Write};
use gateway_core::keys::{KeyRecord, Usage};
use gateway_core::protocol::ratelimit::{Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};

use super::{encode_blob, Blob, Db};

fn record(db: &Db, id: &str) -> Result<Option<KeyRecord>, GatewayError> {
    let row =
        db.one::<(Blob<KeyRecord>,)>("SELECT record FROM vkeys WHERE id = ?", vec![id.into()])?;
    Ok(row.map(|(b,)| b.0))
}

fn usage(db: &Db, id: &str) -> Result<Option<Usage>, GatewayError> {
    let row =
        db.one::<(Blob<Usage>,)>("SELECT usage FROM vkey_usage WHERE id = ?", vec![id.into()])?;
    Ok(row.map(|(b,)| b.0))
}

fn persist(db: &Db, writes: Vec<Write>) -> Result<(), GatewayError> {
    for w in writes {
        match w {
            Write::Record(r) => db.exec(
                "INSERT INTO vkeys (id, record) VALUES (?, ?) \
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                vec![r.id.as_str().into(), encode_blob(&*r)?],
            )?,
            Write::Usage { id, usage } => db.exec(
                "INSERT INTO vkey_usage (id, usage) VALUES (?, ?) \
                 ON CONFLICT (id) DO UPDATE SET usage = excluded.usage",
                vec![id.into(), encode_blob(&*usage)?],
            )?,
        }
    }
    Ok(())
}

/// A key message: `Ok(reply)`, or the message back when it is not one.
pub fn handle(
    db: &Db,
    msg: Request,
    now: UnixMillis,
) -> Result<Result<Reply, Request>, GatewayError> {
    if matches!(msg, Request::ListKeys) {
        let rows: Vec<(String, Blob<KeyRecord>)> =
            db.all("SELECT id, record FROM vkeys", vec![])?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, r) in rows {
            out.push((r.0, usage(db, &id)?));
        }
        return Ok(Ok(store::list(out, now)));
    }
    let Some(id) = store::key_of(&msg).map(str::to_string) else {
        return Ok(Err(msg));
    };
    let (reply, writes) = store::handle(msg, record(db, &id)?, usage(db, &id)?, now)?;
    persist(db, writes)?;
    Ok(Ok(reply))
}
