//! The proxy's Durable Object hops and its bookkeeping after the answer: the cache lookup, the
//! one `PickRanked` hop, and [`Books::settle`] (one `Settle`, the cache fill, the record and the
//! cohort outcome), which may run after the handler returned, so it owns what it needs.

use gateway_core::balancer::{Pick, Preference};
use gateway_core::observe::{CacheOutcome, Record};
use gateway_core::protocol::cache::{Request as CacheRequest, Response as CacheResponse};
use gateway_core::protocol::providers::{Request as PRequest, Response as PResponse};
use gateway_core::proxy::{self as plan, Metered, Plan};
use gateway_core::UnixMillis;
use worker::Env;

use super::super::experiments::{self, Cohort};
use super::super::providers::object_name;
use crate::error::AppResult;
use crate::stub::{binding, call, unexpected};
use crate::telemetry::{Defer, Inline};

/// The cache lookup: fresh, stale (with the fill lease when free) or a miss; `None` when the
/// request has no cache key or the hop failed (a broken cache never fails a request).
pub async fn lookup(
    env: &Env,
    cache: Option<&(String, String)>,
    lease_ms: u64,
) -> Option<CacheResponse> {
    let (key, object) = cache?;
    let msg = CacheRequest::Get {
        key: key.clone(),
        allow_stale_if_error: true,
        lease_ms: Some(lease_ms),
        wait_ms: 0,
    };
    call(env, binding::CACHE_SHARD, object, &msg).await.ok()
}

/// The one pick hop: ranked, reserved candidates, and when every budget is spent, when the
/// first resets.
pub async fn candidates(
    env: &Env,
    group: &str,
    prefer: Preference,
) -> AppResult<(Vec<Pick>, Option<u64>)> {
    let msg = PRequest::PickRanked {
        group: group.into(),
        prefer,
        max: plan::MAX_ATTEMPTS as u8,
    };
    match call(env, binding::PROVIDER_HEALTH, &object_name(group), &msg).await? {
        PResponse::Candidates {
            picks,
            budget_resets_in_ms,
        } => Ok((picks, budget_resets_in_ms)),
        _ => Err(unexpected("provider health")),
    }
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
    pub cohort: Option<Cohort>,
    pub cache: Option<(String, String)>,
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
            experiments::record(
                d,
                &self.env,
                &c.experiment,
                &self.caller,
                plan::cohort_values(&r),
            );
        }
        crate::telemetry::emit(d, &self.env, self.shards, &self.request_id, r);
    }

    /// Settles a forwarded request once its body ended: one `Settle` (outcomes, unused
    /// candidates) and the cache fill concurrently, then the record.
    pub async fn settle(
        self,
        p: Plan,
        body: Option<Metered>,
        status: u16,
        cache: CacheOutcome,
        latency_ms: u32,
    ) {
        let s = p.settle(body);
        let record = s.record(&self.group, self.record(status, cache, latency_ms));
        let msg = PRequest::Settle {
            group: self.group.clone(),
            outcomes: s.outcomes,
            released: s.released,
        };
        let object = object_name(&self.group);
        let settle = call::<_, PResponse>(&self.env, binding::PROVIDER_HEALTH, &object, &msg);
        let fill = async {
            if let (Some(f), Some((key, o))) = (s.fill, &self.cache) {
                let msg = CacheRequest::Put {
                    key: key.clone(),
                    value: f.value,
                    content_type: f.content_type,
                    spec: f.spec,
                };
                let _ = call::<_, CacheResponse>(&self.env, binding::CACHE_SHARD, o, &msg).await;
            }
        };
        let _ = futures::join!(settle, fill);
        let inline = Inline::default();
        self.observe(&inline, record);
        inline.run().await;
    }
}
