//! Calling a Durable Object: encode the message (version byte + postcard), POST it to the
//! object's stub at an absolute internal URL, decode the `Reply`.

use gateway_core::protocol::{self, Reply, WireError};
use gateway_core::GatewayError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Env, Method, Request, RequestInit};

use crate::error::{AppError, AppResult};

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

/// Sends `msg` to the object named `name` in namespace `binding` and returns its reply.
/// No retry here: a retried token-consuming call could consume twice (DESIGN.md rule 9).
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    env: &Env,
    binding: &str,
    name: &str,
    msg: &Req,
) -> AppResult<Resp> {
    let body = protocol::encode(msg)?;
    let stub = env.durable_object(binding)?.get_by_name(name)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(js_sys::Uint8Array::from(body.as_slice()).into()));
    let req = Request::new_with_init("https://do/rpc", &init)?;
    let mut resp = stub.fetch_with_request(req).await?;
    let bytes = resp.bytes().await?;
    let reply: Reply<Resp> = protocol::decode_reply(&bytes).map_err(AppError)?;
    reply.map_err(|e: WireError| AppError(e.into_error()))
}

/// Maps an unexpected reply variant to an internal error.
pub fn unexpected(what: &str) -> AppError {
    AppError(GatewayError::Internal(format!(
        "unexpected reply from the {what} object"
    )))
}
