//! `/v1/cache/{namespace}/{key}`: GET/HEAD (with optional fill lease and stale-if-error), PUT
//! (TTL, stale windows, tags, negative entries), DELETE; `POST /v1/cache/purge` by tags (admin).

use gateway_core::cache::parse_max_age;
use gateway_core::cache::policy::parse_cache_control;
use gateway_core::config::Config;
use gateway_core::protocol::cache::{Cached, Found, PutSpec};
use gateway_core::route::CacheOp;
use gateway_core::{validate, GatewayError};
use serde::Deserialize;
use serde_json::json as j;
use worker::{Env, Headers, Request, Response};

use crate::clients::cache::GetOptions;
use crate::clients::CacheShards;
use crate::error::{problem_response, AppResult};
use crate::http::{json, parse_json, read_body};

/// Most tags per entry.
pub const MAX_TAGS: usize = 16;

/// Parses `Cache-Tag: a, b` (names, at most 16).
pub fn parse_tags(value: Option<&str>) -> Result<Vec<String>, GatewayError> {
    let Some(v) = value else {
        return Ok(Vec::new());
    };
    let tags: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if tags.len() > MAX_TAGS {
        return Err(GatewayError::bad_request(
            "invalid-header",
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    for t in &tags {
        validate::name("tag", t)?;
    }
    Ok(tags)
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers().get(name).ok().flatten()
}

fn is_true(v: Option<&str>) -> bool {
    matches!(v.map(str::trim), Some("1" | "true" | "yes"))
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
    let shards = CacheShards::new(env, cfg);
    let slot = shards.slot(namespace, key);
    let path = req.path();
    match op {
        CacheOp::Get => {
            let allow_sie = crate::http::query(&req)?
                .iter()
                .any(|(k, v)| k == "stale-if-error" && is_true(Some(v)));
            let wants_lease =
                header(&req, "X-Cache-Fill").is_some_and(|v| v.eq_ignore_ascii_case("lease"));
            let o = GetOptions {
                allow_stale_if_error: allow_sie,
                lease_ms: wants_lease.then_some(cfg.cache_fill_lease_ms),
                wait_ms: if wants_lease {
                    cfg.cache_fill_wait_ms
                } else {
                    0
                },
            };
            match shards.get(&slot, o).await? {
                Found::Hit(c) => cached_response(c, "HIT", None, &path, request_id),
                Found::Stale { cached, lease, .. } => {
                    cached_response(cached, "STALE", lease, &path, request_id)
                }
                Found::Miss {
                    expired,
                    lease,
                    waited,
                } => {
                    let kind = if expired { "EXPIRED" } else { "MISS" };
                    let err = GatewayError::NotFound(format!(
                        "cache {}: nothing fresh under this key",
                        kind.to_ascii_lowercase()
                    ));
                    let mut resp = problem_response(&err, request_id, &path)?;
                    resp.headers_mut().set("X-Cache", kind)?;
                    if let Some(token) = lease {
                        resp.headers_mut()
                            .set("X-Cache-Lease", &token.to_string())?;
                    }
                    if waited {
                        resp.headers_mut().set("X-Cache-Coalesced", "timeout")?;
                    }
                    Ok(resp)
                }
            }
        }
        CacheOp::Put => {
            let cc = header(&req, "Cache-Control");
            let ttl_s = match &cc {
                Some(cc) => parse_max_age(cc)?,
                None => None,
            }
            .unwrap_or(cfg.cache_default_ttl_s);
            let windows = parse_cache_control(cc.as_deref().unwrap_or(""));
            let tags = parse_tags(header(&req, "Cache-Tag").as_deref())?;
            let negative = is_true(header(&req, "X-Cache-Negative").as_deref());
            let content_type = header(&req, "Content-Type");
            if content_type.as_ref().is_some_and(|c| c.len() > 256) {
                return Err(
                    GatewayError::bad_request("invalid-header", "Content-Type too long").into(),
                );
            }
            let value = read_body(&mut req, cfg.max_body_bytes).await?;
            let spec = PutSpec {
                ttl_ms: ttl_s * 1000,
                stale_while_revalidate_ms: windows.stale_while_revalidate.unwrap_or(0) * 1000,
                stale_if_error_ms: windows.stale_if_error.unwrap_or(0) * 1000,
                negative,
                tags: tags.clone(),
            };
            let evicted = shards.put(&slot, value, content_type, spec).await?;
            json(
                &j!({
                    "stored": true,
                    "ttl_s": ttl_s,
                    "stale_while_revalidate_s": windows.stale_while_revalidate.unwrap_or(0),
                    "stale_if_error_s": windows.stale_if_error.unwrap_or(0),
                    "negative": negative,
                    "tags": tags,
                    "evicted": evicted,
                }),
                201,
            )
        }
        CacheOp::Delete => {
            let existed = shards.delete(&slot).await?;
            json(&j!({ "deleted": existed }), 200)
        }
    }
}

/// A cached entry as an HTTP response: the value (or a 404 problem for a negative entry) with
/// `X-Cache`, `Age`, `Cache-Control` and, when this caller should refresh it, `X-Cache-Lease`.
pub fn cached_response(
    c: Cached,
    kind: &str,
    lease: Option<u64>,
    path: &str,
    request_id: &str,
) -> AppResult<Response> {
    let mut resp = if c.negative {
        let mut r = problem_response(
            &GatewayError::NotFound("cached as not found".into()),
            request_id,
            path,
        )?;
        r.headers_mut().set("X-Cache-Negative", "1")?;
        r
    } else {
        value_response(c.value, c.content_type.as_deref())?
    };
    let h = resp.headers_mut();
    h.set("X-Cache", kind)?;
    h.set("Age", &(c.age_ms / 1000).to_string())?;
    h.set(
        "Cache-Control",
        &format!("max-age={}", c.ttl_left_ms / 1000),
    )?;
    if let Some(token) = lease {
        h.set("X-Cache-Lease", &token.to_string())?;
    }
    Ok(resp)
}

/// A stored value as a 200 response with its content type.
pub fn value_response(value: Vec<u8>, content_type: Option<&str>) -> AppResult<Response> {
    let headers = Headers::new();
    headers.set(
        "Content-Type",
        content_type.unwrap_or("application/octet-stream"),
    )?;
    Ok(Response::from_bytes(value)?.with_headers(headers))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    tags: Vec<String>,
}

/// `POST /v1/cache/purge` (admin) `{"tags":["a","b"]}`: every shard, concurrently.
pub async fn purge(mut req: Request, env: &Env, cfg: &Config) -> AppResult<Response> {
    let body: PurgeBody = parse_json(&read_body(&mut req, 16_384).await?)?;
    if body.tags.is_empty() || body.tags.len() > 64 {
        return Err(GatewayError::bad_request("invalid-request", "send 1 to 64 tags").into());
    }
    for t in &body.tags {
        validate::name("tag", t)?;
    }
    let removed = CacheShards::new(env, cfg).purge(&body.tags).await?;
    json(
        &j!({ "purged": removed, "tags": body.tags, "shards": cfg.cache_shards }),
        200,
    )
}
