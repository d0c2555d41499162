//! `/v1/cache/{namespace}/{key}`: GET/HEAD, PUT (TTL from `Cache-Control: max-age`), DELETE.

use gateway_core::cache::parse_max_age;
use gateway_core::config::Config;
use gateway_core::protocol::cache::{Request as CacheRequest, Response as CacheResponse};
use gateway_core::route::CacheOp;
use gateway_core::shard::shard_name;
use gateway_core::GatewayError;
use worker::{Env, Headers, Request, Response};

use crate::error::{problem_response, AppResult};
use crate::http::{json, read_body};
use crate::stub::{binding, call, unexpected};

/// The full key and the shard object that owns it.
pub fn locate(cfg: &Config, namespace: &str, key: &str) -> (String, String) {
    let full = format!("{namespace}/{key}");
    let object = shard_name("cache", &full, cfg.cache_shards);
    (full, object)
}

/// Handles GET/HEAD, PUT and DELETE.
pub async fn handle(
    mut req: Request,
    env: &Env,
    cfg: &Config,
    request_id: &str,
    namespace: &str,
    key: &str,
    op: CacheOp,
) -> AppResult<Response> {
    let (full, object) = locate(cfg, namespace, key);
    match op {
        CacheOp::Get => match call(
            env,
            binding::CACHE_SHARD,
            &object,
            &CacheRequest::Get { key: full },
        )
        .await?
        {
            CacheResponse::Hit {
                value,
                content_type,
                age_ms,
                ttl_left_ms,
            } => {
                let headers = Headers::new();
                headers.set(
                    "Content-Type",
                    content_type
                        .as_deref()
                        .unwrap_or("application/octet-stream"),
                )?;
                headers.set("X-Cache", "HIT")?;
                headers.set("Age", &(age_ms / 1000).to_string())?;
                headers.set("Cache-Control", &format!("max-age={}", ttl_left_ms / 1000))?;
                Ok(Response::from_bytes(value)?.with_headers(headers))
            }
            CacheResponse::Miss => miss("MISS", &req.path(), request_id),
            CacheResponse::Expired => miss("EXPIRED", &req.path(), request_id),
            _ => Err(unexpected("cache")),
        },
        CacheOp::Put => {
            let ttl_s = match req.headers().get("Cache-Control")? {
                Some(cc) => parse_max_age(&cc)?,
                None => None,
            }
            .unwrap_or(cfg.cache_default_ttl_s);
            let content_type = req.headers().get("Content-Type")?;
            if content_type.as_ref().is_some_and(|c| c.len() > 256) {
                return Err(
                    GatewayError::bad_request("invalid-header", "Content-Type too long").into(),
                );
            }
            let value = read_body(&mut req, cfg.max_body_bytes).await?;
            let msg = CacheRequest::Put {
                key: full,
                value,
                content_type,
                ttl_ms: ttl_s * 1000,
            };
            match call(env, binding::CACHE_SHARD, &object, &msg).await? {
                CacheResponse::Stored { evicted } => json(
                    &serde_json::json!({ "stored": true, "ttl_s": ttl_s, "evicted": evicted }),
                    201,
                ),
                _ => Err(unexpected("cache")),
            }
        }
        CacheOp::Delete => {
            match call(
                env,
                binding::CACHE_SHARD,
                &object,
                &CacheRequest::Delete { key: full },
            )
            .await?
            {
                CacheResponse::Deleted { existed } => {
                    json(&serde_json::json!({ "deleted": existed }), 200)
                }
                _ => Err(unexpected("cache")),
            }
        }
    }
}

/// A 404 problem that also says `X-Cache: MISS|EXPIRED`.
fn miss(kind: &str, path: &str, request_id: &str) -> AppResult<Response> {
    let err = GatewayError::NotFound(format!(
        "cache {}: nothing fresh under this key",
        kind.to_ascii_lowercase()
    ));
    let mut resp = problem_response(&err, request_id, path)?;
    resp.headers_mut().set("X-Cache", kind)?;
    Ok(resp)
}
