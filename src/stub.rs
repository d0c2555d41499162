//! Transitional: the untyped hop, for the aggregator root's calls to its shards until that
//! adapter moves to [`crate::clients`].

pub use crate::clients::binding;
use crate::clients::Namespace;
use crate::error::AppResult;

/// Sends `msg` to the object `name` in namespace `binding`.
pub async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    env: &worker::Env,
    binding: &'static str,
    name: &str,
    msg: &Req,
) -> AppResult<Resp> {
    Namespace::new(env, binding, "aggregator")
        .call(name, msg)
        .await
}
