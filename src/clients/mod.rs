//! Typed clients of the five Durable Objects: the only code in the worker that knows object
//! names (which shard owns a key, the registry shard, the root, the index) and which reply
//! variant answers which message. Route handlers call methods and get typed values back; a
//! reply of the wrong variant (a mixed-version rollout gone wrong) becomes one internal error
//! naming the object, here and nowhere else.
//!
//! The hop itself: encode the message (version byte + postcard), POST it to the object's stub
//! at an absolute internal URL, decode the `Reply`. No retry here: a retried token-consuming
//! call could consume twice (DESIGN.md rule 9); callers that may retry (metric batches, which
//! carry a batch id) do so themselves.

pub mod aggregator;
pub mod cache;
pub mod experiments;
pub mod keys;
pub mod providers;
pub mod ratelimit;

use gateway_core::protocol::{self, Reply, WireError};
use gateway_core::GatewayError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Env, Method, Request, RequestInit};

use crate::error::{AppError, AppResult};

pub use aggregator::Aggregator;
pub use cache::CacheShards;
pub use experiments::Experiments;
pub use keys::Keys;
pub use providers::Providers;
pub use ratelimit::RateLimiter;

/// Binding names, as in wrangler.toml.
pub mod binding {
    /// `RateLimiterDO`.
    pub const RATE_LIMITER: &str = "RATE_LIMITER";
    /// `CacheShardDO`.
    pub const CACHE_SHARD: &str = "CACHE_SHARD";
    /// `ProviderHealthDO`.
    pub const PROVIDER_HEALTH: &str = "PROVIDER_HEALTH";
    /// `ExperimentDO`.
    pub const EXPERIMENT: &str = "EXPERIMENT";
    /// `AggregatorDO`.
    pub const AGGREGATOR: &str = "AGGREGATOR";
}

/// One namespace of objects: its binding and, for errors, what its objects are called.
#[derive(Clone, Copy)]
pub struct Namespace<'a> {
    env: &'a Env,
    binding: &'static str,
    kind: &'static str,
}

impl<'a> Namespace<'a> {
    /// The namespace behind `binding`.
    pub fn new(env: &'a Env, binding: &'static str, kind: &'static str) -> Self {
        Namespace { env, binding, kind }
    }

    /// Sends `msg` to the object `name` and returns its reply.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        name: &str,
        msg: &Req,
    ) -> AppResult<Resp> {
        let body = protocol::encode(msg)?;
        let stub = self.env.durable_object(self.binding)?.get_by_name(name)?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
        let req = Request::new_with_init("https://do/rpc", &init)?;
        let mut resp = stub.fetch_with_request(req).await?;
        let bytes = resp.bytes().await?;
        let reply: Reply<Resp> = protocol::decode_reply(&bytes).map_err(AppError)?;
        reply.map_err(|e: WireError| AppError(e.into_error()))
    }

    /// The error for a reply of another variant than the message expects.
    pub fn mismatch(&self) -> AppError {
        AppError(GatewayError::Internal(format!(
            "unexpected reply from the {} object",
            self.kind
        )))
    }
}

/// Calls `$ns` object `$name` with `$msg` and takes the reply variant `$pat`, mapping it with
/// `$out`; any other variant is [`Namespace::mismatch`].
macro_rules! reply {
    ($ns:expr, $name:expr, $msg:expr, $pat:pat => $out:expr) => {{
        let ns = $ns;
        match ns.call($name, $msg).await? {
            $pat => Ok($out),
            #[allow(unreachable_patterns)]
            _ => Err(ns.mismatch()),
        }
    }};
}
pub(crate) use reply;

/// A shard id from a path segment (`/v1/stats/{component}/{id}`), checked against the count.
pub fn shard_id(id: &str, count: u32) -> Result<u32, GatewayError> {
    match id.parse::<u32>() {
        Ok(n) if n < count => Ok(n),
        Ok(_) => Err(GatewayError::NotFound(format!("shard must be 0..{count}"))),
        Err(_) => Err(GatewayError::bad_request(
            "invalid-shard",
            "shard must be a number",
        )),
    }
}
