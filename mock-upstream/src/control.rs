//! The control API tests use to configure the mock (`/__control/{provider}`): validating and
//! applying behaviour updates, reading a provider's config and counters, resetting it.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::http::{error_response, Request, Response};
use crate::provider::{Behaviour, Counters, Provider};
use crate::routes::{not_allowed, Answer};
use crate::server::Shared;
use crate::sse;

/// Upper bound of `latency_ms`.
const MAX_LATENCY_MS: u64 = 60_000;
/// Most extra response headers in a provider's config.
const MAX_EXTRA_HEADERS: usize = 32;

#[derive(Serialize)]
struct ProviderView<'a> {
    name: &'a str,
    config: &'a Behaviour,
    counters: &'a Counters,
}

pub(crate) fn provider_body(name: &str, p: &Provider) -> Vec<u8> {
    let view = ProviderView {
        name,
        config: &p.behaviour,
        counters: &p.counters,
    };
    serde_json::to_vec(&view).unwrap_or_default()
}

fn provider_response(name: &str, p: &Provider) -> Answer {
    Answer::Respond(Response {
        status: 200,
        headers: vec![],
        body: provider_body(name, p),
    })
}

/// The control-plane update: every field optional, unknown fields refused. `body`, `headers`,
/// `retry_after_s` and `stream_drop_after` accept `null` (clear); the other fields refuse it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    #[serde(default, deserialize_with = "present")]
    latency_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    status: Option<u16>,
    #[serde(default, deserialize_with = "present")]
    failure_rate: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    drop_connection: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    retry_after_s: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    completion_tokens: Option<u32>,
    #[serde(default, deserialize_with = "nullable")]
    body: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    headers: Option<Option<BTreeMap<String, String>>>,
    #[serde(default, deserialize_with = "present")]
    stream: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    stream_chunks: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    stream_delay_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    stream_usage: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    stream_drop_after: Option<Option<u32>>,
}

/// A field that, when present, must hold a value (not `null`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A field that, when present, may be `null` (`Some(None)`), told apart from absent (`None`).
fn nullable<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::deserialize(d).map(Some)
}

/// RFC 9110 token characters (header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    if headers.len() > MAX_EXTRA_HEADERS {
        return Err(format!("at most {MAX_EXTRA_HEADERS} headers"));
    }
    for (k, v) in headers {
        if k.is_empty() || !k.bytes().all(is_tchar) {
            return Err(format!("header name {k:?} is not a valid HTTP token"));
        }
        let lower = k.to_ascii_lowercase();
        if ["content-length", "transfer-encoding", "connection"].contains(&lower.as_str()) {
            return Err(format!("header {k:?} is set by the mock itself"));
        }
        if v.len() > 8192 || v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!(
                "header {k:?} has a value with control characters or over 8192 bytes"
            ));
        }
    }
    Ok(())
}

/// Validates `update` against `current`; returns the new behaviour and whether the failure rate
/// was set. Nothing is applied on error.
fn apply_update(current: &Behaviour, body: &[u8]) -> Result<(Behaviour, bool), String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid control JSON: {e}"))?;
    if !value.is_object() {
        return Err("the control body must be a JSON object".to_string());
    }
    let update: Update =
        serde_json::from_value(value).map_err(|e| format!("invalid control JSON: {e}"))?;
    let mut b = current.clone();
    if let Some(v) = update.latency_ms {
        if v > MAX_LATENCY_MS {
            return Err(format!("latency_ms must be <= {MAX_LATENCY_MS}"));
        }
        b.latency_ms = v;
    }
    if let Some(v) = update.status {
        if !(100..=599).contains(&v) {
            return Err("status must be in 100..=599".to_string());
        }
        b.status = v;
    }
    if let Some(v) = update.failure_rate {
        if !(0.0..=1.0).contains(&v) {
            return Err("failure_rate must be in [0, 1]".to_string());
        }
        b.failure_rate = v;
    }
    if let Some(v) = update.drop_connection {
        b.drop_connection = v;
    }
    if let Some(v) = update.retry_after_s {
        b.retry_after_s = v;
    }
    if let Some(v) = update.completion_tokens {
        b.completion_tokens = v;
    }
    if let Some(v) = update.body {
        b.body = v;
    }
    if let Some(v) = update.headers {
        if let Some(h) = &v {
            check_headers(h)?;
        }
        b.headers = v;
    }
    if let Some(v) = update.stream {
        b.stream = v;
    }
    if let Some(v) = update.stream_chunks {
        if !(1..=sse::MAX_CHUNKS).contains(&v) {
            return Err(format!("stream_chunks must be in 1..={}", sse::MAX_CHUNKS));
        }
        b.stream_chunks = v;
    }
    if let Some(v) = update.stream_delay_ms {
        if v > sse::MAX_DELAY_MS {
            return Err(format!("stream_delay_ms must be <= {}", sse::MAX_DELAY_MS));
        }
        b.stream_delay_ms = v;
    }
    if let Some(v) = update.stream_usage {
        b.stream_usage = v;
    }
    if let Some(v) = update.stream_drop_after {
        // Any u32: a value of stream_chunks or more drops after the last content event.
        b.stream_drop_after = v;
    }
    Ok((b, update.failure_rate.is_some()))
}

pub(crate) fn control(req: &Request, name: &str, shared: &Shared) -> Answer {
    let mut map = shared.providers();
    match req.method.as_str() {
        "GET" => provider_response(name, map.entry(name.to_string()).or_default()),
        "DELETE" => {
            let p = map.entry(name.to_string()).or_default();
            *p = Provider::default();
            provider_response(name, p)
        }
        "PUT" => {
            let p = map.entry(name.to_string()).or_default();
            match apply_update(&p.behaviour, &req.body) {
                Ok((behaviour, rate_set)) => {
                    p.behaviour = behaviour;
                    if rate_set {
                        p.pattern_n = 0;
                    }
                    provider_response(name, p)
                }
                Err(msg) => Answer::Respond(error_response(400, &msg)),
            }
        }
        _ => not_allowed("GET, PUT, DELETE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_headers_cannot_break_framing() {
        let cur = Behaviour::default();
        for bad in [
            r#"{"headers":{"X-A":"a\r\nX-B: b"}}"#,
            r#"{"headers":{"Bad Name":"x"}}"#,
            r#"{"headers":{"Content-Length":"3"}}"#,
            r#"{"headers":{"":"x"}}"#,
        ] {
            assert!(apply_update(&cur, bad.as_bytes()).is_err(), "{bad}");
        }
        let (b, rate) = apply_update(&cur, br#"{"headers":{"Set-Cookie":"a=1"}}"#).unwrap();
        assert!(!rate);
        assert_eq!(
            b.headers.unwrap().get("Set-Cookie").map(String::as_str),
            Some("a=1")
        );
    }

    #[test]
    fn stream_settings_are_validated_and_drop_after_is_nullable() {
        let cur = Behaviour::default();
        for bad in [
            r#"{"stream":"yes"}"#,
            r#"{"stream":null}"#,
            r#"{"stream_chunks":0}"#,
            r#"{"stream_chunks":10001}"#,
            r#"{"stream_chunks":-1}"#,
            r#"{"stream_delay_ms":60001}"#,
            r#"{"stream_delay_ms":1.5}"#,
            r#"{"stream_usage":null}"#,
            r#"{"stream_drop_after":-1}"#,
            r#"{"stream_drop_after":4294967296}"#,
        ] {
            assert!(apply_update(&cur, bad.as_bytes()).is_err(), "{bad}");
        }
        let (b, _) = apply_update(
            &cur,
            br#"{"stream":true,"stream_chunks":10000,"stream_delay_ms":60000,"stream_usage":false,"stream_drop_after":3}"#,
        )
        .unwrap();
        assert!(b.stream && !b.stream_usage);
        assert_eq!(
            (b.stream_chunks, b.stream_delay_ms, b.stream_drop_after),
            (10000, 60000, Some(3))
        );
        let (b, _) = apply_update(&b, br#"{"stream_drop_after":null}"#).unwrap();
        assert_eq!(b.stream_drop_after, None);
        assert!(b.stream, "other fields kept");
    }
}
