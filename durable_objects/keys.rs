//! The virtual keys a `RateLimiterDO` shard holds (`gateway_core::keys`): read the key's two
//! rows, one core call, write what it returns, in one synchronous step.

use gateway_core::keys::store::{self, Write};
use gateway_core::keys::{KeyRecord, Usage};
use gateway_core::protocol::ratelimit::{Request, Response as Reply};
use gateway_core::{GatewayError, UnixMillis};

use super::{encode_blob, Blob, Db};

/// The key's record and usage, in one query.
fn rows(db: &Db, id: &str) -> Result<(Option<KeyRecord>, Option<Usage>), GatewayError> {
    let row = db.one::<(Blob<KeyRecord>, Option<Blob<Usage>>)>(
        "SELECT k.record, u.usage FROM vkeys k LEFT JOIN vkey_usage u ON u.id = k.id WHERE k.id = ?",
        vec![id.into()],
    )?;
    Ok(match row {
        Some((r, u)) => (Some(r.0), u.map(|b| b.0)),
        None => (None, None),
    })
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
        let rows: Vec<(Blob<KeyRecord>, Option<Blob<Usage>>)> = db.all(
            "SELECT k.record, u.usage FROM vkeys k LEFT JOIN vkey_usage u ON u.id = k.id",
            vec![],
        )?;
        let rows = rows
            .into_iter()
            .map(|(r, u)| (r.0, u.map(|b| b.0)))
            .collect();
        return Ok(Ok(store::list(rows, now)));
    }
    let Some(id) = store::key_of(&msg).map(str::to_string) else {
        return Ok(Err(msg));
    };
    let (record, usage) = rows(db, &id)?;
    let (reply, writes) = store::handle(msg, record, usage, now)?;
    persist(db, writes)?;
    Ok(Ok(reply))
}
