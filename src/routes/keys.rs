//! `/v1/keys` (admin): issue, list, show and revoke virtual keys. The secret is returned once,
//! by the create call; only its SHA-256 is stored.

use gateway_core::config::Config;
use gateway_core::keys::{self, KeyRecord, KeySpec, KeyView, SECRET_BYTES};
use gateway_core::GatewayError;
use serde_json::json;
use worker::{Env, Request, Response};

use super::now;
use crate::clients::Keys;
use crate::error::AppResult;
use crate::http::{json, parse_json, random_bytes, read_body};

fn view(v: &KeyView) -> serde_json::Value {
    gateway_core::views::key(v)
}

/// `POST /v1/keys` → 201 with the secret (`key`), shown only here.
pub async fn create(mut req: Request, env: &Env, cfg: &Config) -> AppResult<Response> {
    let spec: KeySpec = parse_json(&read_body(&mut req, 16 * 1024).await?)?;
    let def = spec.into_def()?;
    for m in &def.models {
        if !cfg.ai_models.contains_key(m) {
            return Err(GatewayError::bad_request(
                "invalid-key",
                format!("no model {m} is configured (AI_MODELS)"),
            )
            .into());
        }
    }
    let random = random_bytes::<SECRET_BYTES>().ok_or_else(|| {
        GatewayError::Internal("the runtime has no crypto.getRandomValues".into())
    })?;
    let secret = keys::secret_from(&random);
    let (id, hash) = keys::identify(&secret)
        .ok_or_else(|| GatewayError::Internal("a new secret did not parse".into()))?;
    let record = KeyRecord {
        id,
        hash,
        def,
        created_at: now(),
        revoked_at: None,
    };
    let stored = Keys::new(env, cfg).create(record).await?;
    let mut body = view(&stored);
    if let Some(o) = body.as_object_mut() {
        o.insert("key".into(), json!(secret));
    }
    json(&body, 201)
}

/// `GET /v1/keys`.
pub async fn list(env: &Env, cfg: &Config) -> AppResult<Response> {
    let all = Keys::new(env, cfg).list().await?;
    let keys: Vec<_> = all.iter().map(view).collect();
    json(&json!({ "keys": keys }), 200)
}

/// `GET /v1/keys/{id}`.
pub async fn get(env: &Env, cfg: &Config, id: &str) -> AppResult<Response> {
    json(&view(&Keys::new(env, cfg).get(id).await?), 200)
}

/// `DELETE /v1/keys/{id}`: revoked from the next request on (no cache holds keys).
pub async fn revoke(env: &Env, cfg: &Config, id: &str) -> AppResult<Response> {
    json(&view(&Keys::new(env, cfg).revoke(id).await?), 200)
}
