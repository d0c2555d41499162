//! A rate-limiter shard's keys: the one core call per key message, over the rows the adapter
//! read (the key's record and usage), returning the reply and the rows to write.

use subtle::ConstantTimeEq;

use super::{KeyRecord, KeyView, Refusal, Usage};
use crate::protocol::ratelimit::{Request, Response as Reply};
use crate::{GatewayError, UnixMillis};

/// A row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace the key's record.
    Record(Box<KeyRecord>),
    /// Insert or replace the key's usage.
    Usage {
        /// Key id.
        id: String,
        /// Its counters.
        usage: Box<Usage>,
    },
}

/// The key a message is about (`None`: not a key message, or `ListKeys`).
pub fn key_of(msg: &Request) -> Option<&str> {
    match msg {
        Request::CreateKey(r) => Some(&r.id),
        Request::GetKey { id }
        | Request::RevokeKey { id }
        | Request::Admit { id, .. }
        | Request::SettleKey { id, .. } => Some(id),
        _ => None,
    }
}

fn view(r: KeyRecord, u: &Usage, now: UnixMillis) -> KeyView {
    KeyView {
        id: r.id,
        def: r.def,
        created_at: r.created_at,
        revoked_at: r.revoked_at,
        usage: u.view(now),
    }
}

fn unknown() -> Refusal {
    Refusal {
        status: 401,
        kind: "invalid-api-key".into(),
        detail: "the API key is not one this gateway issued".into(),
        retry_after_s: None,
        limits: vec![],
    }
}

/// Handles a key message (one for which [`key_of`] is `Some`) over the key's stored rows.
pub fn handle(
    msg: Request,
    record: Option<KeyRecord>,
    usage: Option<Usage>,
    now: UnixMillis,
) -> Result<(Reply, Vec<Write>), GatewayError> {
    let mut usage = usage.unwrap_or_default();
    let missing = |id: &str| GatewayError::NotFound(format!("no key {id}"));
    match msg {
        Request::CreateKey(r) => {
            if record.is_some() {
                return Err(GatewayError::Conflict(format!("key {} exists", r.id)));
            }
            let reply = Reply::Key(Box::new(view((*r).clone(), &usage, now)));
            Ok((reply, vec![Write::Record(r)]))
        }
        Request::GetKey { id } => {
            let r = record.ok_or_else(|| missing(&id))?;
            Ok((Reply::Key(Box::new(view(r, &usage, now))), vec![]))
        }
        Request::RevokeKey { id } => {
            let mut r = record.ok_or_else(|| missing(&id))?;
            let mut writes = vec![];
            if r.revoked_at.is_none() {
                r.revoked_at = Some(now);
                writes.push(Write::Record(Box::new(r.clone())));
            }
            Ok((Reply::Key(Box::new(view(r, &usage, now))), writes))
        }
        Request::Admit { id, hash, ask } => {
            let Some(r) = record.filter(|r| bool::from(r.hash.as_bytes().ct_eq(hash.as_bytes())))
            else {
                return Ok((Reply::Admission(Box::new(Err(unknown()))), vec![]));
            };
            let out = usage.admit(&r, &ask, now);
            // A refusal only rolls windows: nothing worth a write.
            let writes = if out.is_ok() {
                vec![Write::Usage {
                    id,
                    usage: Box::new(usage),
                }]
            } else {
                vec![]
            };
            Ok((Reply::Admission(Box::new(out)), writes))
        }
        Request::SettleKey {
            id,
            reservation,
            tokens,
            cost_micro_usd,
        } => {
            if record.is_none() {
                return Ok((Reply::KeySettled { settled: false }, vec![]));
            }
            let settled = usage.settle(reservation, tokens, cost_micro_usd, now);
            let writes = if settled {
                vec![Write::Usage {
                    id,
                    usage: Box::new(usage),
                }]
            } else {
                vec![]
            };
            Ok((Reply::KeySettled { settled }, writes))
        }
        _ => Err(GatewayError::Internal("not a key message".into())),
    }
}

/// `ListKeys`: the views of every key, by id.
pub fn list(mut rows: Vec<(KeyRecord, Option<Usage>)>, now: UnixMillis) -> Reply {
    rows.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    Reply::Keys(
        rows.into_iter()
            .map(|(r, u)| view(r, &u.unwrap_or_default(), now))
            .collect(),
    )
}
