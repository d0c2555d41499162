//! The proxy's Durable Object hops and its bookkeeping after the answer: the cache lookup, the
//! one `PickRanked` hop, and [`Books::settle`] (one `Settle`, the cache fill, the record and the
//! cohort outcome), which may run after the handler returned, so it owns what it needs.

use gateway_core::balancer::{Pick, Preference};
use gateway_core::observe::{CacheOutcome, Record};
use gateway_core::protocol::cache::Found;
use gateway_core::proxy::{self as plan, Metered, Plan};
use gateway_core::UnixMillis;
use worker::Env;

use crate::clients::cache::{GetOptions, Slot};
use crate::clients::{CacheShards, Providers};
use crate::error::AppResult;
use crate::isolate::{self, Cohort, Defer, Inline};

/// The cache lookup: fresh, stale (with the fill lease when free) or a miss; `None` when the
/// request has no cache key or the hop failed (a broken cache never fails a request).
pub async fn lookup(shards: &CacheShards<'_>, slot: Option<&Slot>, lease_ms: u64) -> Option<Found> {
    let o = GetOptions {
        allow_stale_if_error: true,
        lease_ms: Some(lease_ms),
        wait_ms: 0,
    };
    shards.get(slot?, o).await.ok()
}

/// The one pick hop: ranked, reserved candidates, and when every budget is spent, when the
/// first resets.
pub async fn candidates(
    env: &Env,
    group: &str,
    prefer: Preference,
) -> AppResult<(Vec<Pick>, Option<u64>)> {
    Providers::new(env)
        .candidates(group, prefer, plan::MAX_ATTEMPTS as u8)
        .await
}

/// What the request's bookkeeping needs once its answer is out.
pub struct Books {
    pub env: Env,
    pub group: String,
    pub path: String,
    pub request_id: String,
    pub caller: String,
    pub started: UnixMillis,
    pub shards: u32,
    pub cache_shards: u32,
    pub cohort: Option<Cohort>,
    pub cache: Option<Slot>,
}

impl Books {
    /// The request's record before its upstream part.
    pub fn record(&self, status: u16, cache: CacheOutcome, latency_ms: u32) -> Record {
        plan::record(
            self.started,
            &self.group,
            &self.path,
            status,
            cache,
            latency_ms,
        )
    }

    /// Emits the request's record and its cohort's outcome.
    pub fn observe(&self, d: &dyn Defer, r: Record) {
        if let Some(c) = self.cohort.as_ref().filter(|c| c.counted) {
            isolate::record_outcome(
                d,
                &self.env,
                &c.experiment,
                &self.caller,
                plan::cohort_values(&r),
            );
        }
        isolate::emit(d, &self.env, self.shards, &self.request_id, r);
    }

    /// Settles a forwarded request once its body ended: one `Settle` (outcomes, unused
    /// candidates) and the cache fill concurrently, then the record. Returns what the request
    /// cost and the tokens its answer reported.
    pub async fn settle(
        self,
        p: Plan,
        body: Option<Metered>,
        status: u16,
        cache: CacheOutcome,
        latency_ms: u32,
    ) -> Settled {
        let usage = body.as_ref().and_then(|m| m.usage);
        let tokens = usage.map(|u| u64::from(u.input_tokens) + u64::from(u.output_tokens));
        let s = p.settle(body);
        let settled = Settled {
            cost_micro_usd: s.cost_micro_usd,
            tokens,
            input_tokens: usage.map_or(0, |u| u64::from(u.input_tokens)),
            output_tokens: usage.map_or(0, |u| u64::from(u.output_tokens)),
        };
        let record = s.record(&self.group, self.record(status, cache, latency_ms));
        let providers = Providers::new(&self.env);
        let settle = providers.settle(&self.group, s.outcomes, s.released);
        let fill = async {
            if let (Some(f), Some(slot)) = (s.fill, &self.cache) {
                let shards = CacheShards::with_shards(&self.env, self.cache_shards);
                let _ = shards.put(slot, f.value, f.content_type, f.spec).await;
            }
        };
        let _ = futures::join!(settle, fill);
        let inline = Inline::default();
        self.observe(&inline, record);
        inline.run().await;
        settled
    }
}

/// What a settled request cost and used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settled {
    /// Cost of every attempt, micro-USD.
    pub cost_micro_usd: u64,
    /// Prompt + completion tokens the answer reported (`None`: it reported none).
    pub tokens: Option<u64>,
    /// Prompt tokens the answer reported (0: none reported).
    pub input_tokens: u64,
    /// Completion tokens the answer reported (0: none reported).
    pub output_tokens: u64,
}
