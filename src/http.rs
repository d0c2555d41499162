//! Small HTTP helpers shared by the routes: request ids, bounded body reads, strict JSON.

use gateway_core::GatewayError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::JsCast;
use worker::{Headers, Request, Response};

use crate::error::AppResult;

/// The request id: the caller's `X-Request-Id` when it is a sane token (1..=128 chars of
/// `[A-Za-z0-9._:-]`), otherwise a fresh random UUID.
pub fn request_id(req: &Request) -> String {
    if let Ok(Some(id)) = req.headers().get("X-Request-Id") {
        if !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return id;
        }
    }
    random_uuid()
}

/// `crypto.randomUUID()` from the runtime; falls back to a time-based id if unavailable.
pub fn random_uuid() -> String {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"crypto".into())
        .ok()
        .and_then(|crypto| {
            let f = js_sys::Reflect::get(&crypto, &"randomUUID".into()).ok()?;
            let f: js_sys::Function = f.dyn_into().ok()?;
            f.call0(&crypto).ok()?.as_string()
        })
        .unwrap_or_else(|| format!("t-{}", js_sys::Date::now() as u64))
}

/// `N` bytes from `crypto.getRandomValues` (a CSPRNG); `None` if the runtime has none (never a
/// weaker fallback: these make secrets).
pub fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let global = js_sys::global();
    let crypto = js_sys::Reflect::get(&global, &"crypto".into()).ok()?;
    let f: js_sys::Function = js_sys::Reflect::get(&crypto, &"getRandomValues".into())
        .ok()?
        .dyn_into()
        .ok()?;
    let buf = js_sys::Uint8Array::new_with_length(u32::try_from(N).ok()?);
    f.call1(&crypto, &buf).ok()?;
    let mut out = [0u8; N];
    buf.copy_to(&mut out);
    Some(out)
}

/// Reads the body, refusing more than `limit` bytes (413) — first by `Content-Length`, then by
/// the bytes actually received (a chunked body has no length header).
pub async fn read_body(req: &mut Request, limit: usize) -> AppResult<Vec<u8>> {
    if let Ok(Some(len)) = req.headers().get("Content-Length") {
        match len.trim().parse::<u64>() {
            Ok(n) if n > limit as u64 => return Err(GatewayError::PayloadTooLarge { limit }.into()),
            Ok(_) => {}
            Err(_) => {
                return Err(
                    GatewayError::bad_request("invalid-header", "bad Content-Length").into(),
                )
            }
        }
    }
    let bytes = req.bytes().await?;
    if bytes.len() > limit {
        return Err(GatewayError::PayloadTooLarge { limit }.into());
    }
    Ok(bytes)
}

/// Parses a JSON body strictly into `T` (types derive `deny_unknown_fields`). Errors are 400s
/// that quote serde's explanation (line/column, expected type).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    if bytes.is_empty() {
        return Err(GatewayError::bad_request(
            "invalid-json",
            "a JSON body is required",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| GatewayError::bad_request("invalid-json", format!("invalid JSON body: {e}")))
}

/// Like [`parse_json`] but an empty body gives `T::default()`.
pub fn parse_json_or_default<T: DeserializeOwned + Default>(
    bytes: &[u8],
) -> Result<T, GatewayError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse_json(bytes)
    }
}

/// A JSON response with `status`.
pub fn json<T: Serialize>(value: &T, status: u16) -> AppResult<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    headers.set("Cache-Control", "no-store")?;
    Ok(Response::from_json(value)?
        .with_status(status)
        .with_headers(headers))
}

/// The request's decoded query parameters (without parsing the URL as a `url::Url`, which would
/// pull IDNA tables into the bundle).
pub fn query(req: &Request) -> Result<Vec<(String, String)>, GatewayError> {
    gateway_core::validate::query_pairs(&req.inner().url())
}
