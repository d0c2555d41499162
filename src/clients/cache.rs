//! `CacheShardDO`: `cache:{n}` owns the full keys (`namespace/key`) that hash to shard `n`.

use futures::future::join_all;
use gateway_core::config::Config;
use gateway_core::protocol::cache::{Found, PutSpec, Request, Response, Stats};
use gateway_core::shard::shard_name;
use worker::Env;

use super::{binding, reply, Namespace};
use crate::error::AppResult;

/// A cache entry's address: the full key and the shard object that owns it.
#[derive(Clone, Debug)]
pub struct Slot {
    /// `namespace/key`.
    pub key: String,
    /// The owning shard.
    pub object: String,
}

/// What a lookup asks for beyond the fresh value.
#[derive(Clone, Copy, Debug, Default)]
pub struct GetOptions {
    /// Serve a stale entry inside its stale-if-error window.
    pub allow_stale_if_error: bool,
    /// Take the fill lease on a miss or stale hit, held this long.
    pub lease_ms: Option<u64>,
    /// Wait this long for another caller's fill.
    pub wait_ms: u64,
}

/// The cache shards.
pub struct CacheShards<'a> {
    ns: Namespace<'a>,
    shards: u32,
}

impl<'a> CacheShards<'a> {
    /// The client.
    pub fn new(env: &'a Env, cfg: &Config) -> Self {
        Self::with_shards(env, cfg.cache_shards)
    }

    /// The client for `shards` shards (for work that outlives the request's configuration
    /// borrow).
    pub fn with_shards(env: &'a Env, shards: u32) -> Self {
        CacheShards {
            ns: Namespace::new(env, binding::CACHE_SHARD, "cache"),
            shards,
        }
    }

    /// Where `namespace/key` lives.
    pub fn slot(&self, namespace: &str, key: &str) -> Slot {
        self.slot_of(format!("{namespace}/{key}"))
    }

    /// Where a full key lives (the proxy's keys are full keys of their own).
    pub fn slot_of(&self, key: String) -> Slot {
        let object = shard_name("cache", &key, self.shards);
        Slot { key, object }
    }

    /// Looks the entry up: `Hit`, `Stale` or `Miss`.
    pub async fn get(&self, slot: &Slot, o: GetOptions) -> AppResult<Found> {
        let msg = Request::Get {
            key: slot.key.clone(),
            allow_stale_if_error: o.allow_stale_if_error,
            lease_ms: o.lease_ms,
            wait_ms: o.wait_ms,
        };
        let reply: Response = self.ns.call(&slot.object, &msg).await?;
        reply.into_found().ok_or_else(|| self.ns.mismatch())
    }

    /// Stores a value (acknowledged once in SQLite); how many entries it evicted.
    pub async fn put(
        &self,
        slot: &Slot,
        value: Vec<u8>,
        content_type: Option<String>,
        spec: PutSpec,
    ) -> AppResult<u32> {
        let msg = Request::Put {
            key: slot.key.clone(),
            value,
            content_type,
            spec,
        };
        reply!(self.ns, &slot.object, &msg, Response::Stored { evicted } => evicted)
    }

    /// Deletes the entry; whether it existed.
    pub async fn delete(&self, slot: &Slot) -> AppResult<bool> {
        let msg = Request::Delete {
            key: slot.key.clone(),
        };
        reply!(self.ns, &slot.object, &msg, Response::Deleted { existed } => existed)
    }

    /// Removes every entry carrying one of `tags`, on every shard concurrently; how many.
    pub async fn purge(&self, tags: &[String]) -> AppResult<u64> {
        let calls = (0..self.shards).map(|i| {
            let msg = Request::Purge {
                tags: tags.to_vec(),
            };
            let object = format!("cache:{i}");
            async move { reply!(self.ns, &object, &msg, Response::Purged { removed } => removed) }
        });
        let mut removed = 0u64;
        for r in join_all(calls).await {
            removed += u64::from(r?);
        }
        Ok(removed)
    }

    /// Shard `id`'s statistics.
    pub async fn stats(&self, id: &str) -> AppResult<Stats> {
        let n = super::shard_id(id, self.shards)?;
        reply!(self.ns, &format!("cache:{n}"), &Request::Stats, Response::Stats(s) => s)
    }

    /// The number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }
}
