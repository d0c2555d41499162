//! Virtual keys, held by the rate-limiter shards: key `id` lives in
//! `ratelimit:{fnv1a64("key/" + id) % RATE_LIMIT_SHARDS}` (its admission, token windows and spend
//! in the same object, so admitting a request is one hop).

use futures::future::join_all;
use gateway_core::config::Config;
use gateway_core::keys::{self, Admission, Admitted, KeyRecord, KeyView, Refusal};
use gateway_core::protocol::ratelimit::{Request, Response};
use gateway_core::shard::shard_name;
use worker::Env;

use super::{binding, reply, Namespace};
use crate::error::AppResult;

/// The key store.
pub struct Keys<'a> {
    ns: Namespace<'a>,
    shards: u32,
}

impl<'a> Keys<'a> {
    /// The client.
    pub fn new(env: &'a Env, cfg: &Config) -> Self {
        Self::with_shards(env, cfg.rate_limit_shards)
    }

    /// The client over `shards` rate-limiter shards (for work after the answer, which owns no
    /// configuration).
    pub fn with_shards(env: &'a Env, shards: u32) -> Self {
        Keys {
            ns: Namespace::new(env, binding::RATE_LIMITER, "key store"),
            shards,
        }
    }

    fn owner(&self, id: &str) -> String {
        shard_name("ratelimit", &keys::shard_key(id), self.shards)
    }

    async fn one(&self, id: &str, msg: Request) -> AppResult<KeyView> {
        reply!(self.ns, &self.owner(id), &msg, Response::Key(v) => *v)
    }

    /// Stores a new key.
    pub async fn create(&self, record: KeyRecord) -> AppResult<KeyView> {
        let id = record.id.clone();
        self.one(&id, Request::CreateKey(Box::new(record))).await
    }

    /// One key.
    pub async fn get(&self, id: &str) -> AppResult<KeyView> {
        self.one(id, Request::GetKey { id: id.into() }).await
    }

    /// Revokes a key: the next admission refuses it.
    pub async fn revoke(&self, id: &str) -> AppResult<KeyView> {
        self.one(id, Request::RevokeKey { id: id.into() }).await
    }

    /// Every key, from every shard concurrently (by id).
    pub async fn list(&self) -> AppResult<Vec<KeyView>> {
        let calls = (0..self.shards).map(|i| {
            let object = format!("ratelimit:{i}");
            async move { reply!(self.ns, &object, &Request::ListKeys, Response::Keys(k) => k) }
        });
        let mut all = Vec::new();
        for r in join_all(calls).await {
            all.extend(r?);
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    /// Admits a request under key `id` (whose secret hashes to `hash`).
    pub async fn admit(
        &self,
        id: &str,
        hash: &str,
        ask: Admission,
    ) -> AppResult<Result<Admitted, Refusal>> {
        let msg = Request::Admit {
            id: id.into(),
            hash: hash.into(),
            ask,
        };
        reply!(self.ns, &self.owner(id), &msg, Response::Admission(a) => *a)
    }

    /// Settles a reservation; whether it was still in flight.
    pub async fn settle(
        &self,
        id: &str,
        reservation: u64,
        tokens: Option<u64>,
        cost: u64,
    ) -> AppResult<bool> {
        let msg = Request::SettleKey {
            id: id.into(),
            reservation,
            tokens,
            cost_micro_usd: cost,
        };
        reply!(self.ns, &self.owner(id), &msg, Response::KeySettled { settled } => settled)
    }
}
