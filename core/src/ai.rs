//! The OpenAI-compatible surface: `POST /v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `GET /v1/models`.
//!
//! - **Models** (`AI_MODELS`): each public model name maps to an ordered list of targets, a
//!   provider group plus the model name to send upstream (per group, optionally per provider);
//!   the first target is tried first (with failover across its group's providers) and the next
//!   ones only when a whole group fails.
//! - **Forwarding**: the body goes upstream byte for byte except the top-level `"model"` string,
//!   which is replaced by the target's name ([`replace_model`]); the client's credentials are
//!   dropped and the provider's own secret sent instead.
//! - **Estimate** of a request's tokens, reserved against the key's token limits before the call:
//!   `ceil(body bytes / 4)` for the prompt plus `max_tokens` / `max_completion_tokens` (else
//!   `AI_DEFAULT_MAX_TOKENS`; none for embeddings).
//! - **Errors** carry OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) beside
//!   the problem+json fields, so the official SDKs raise their usual exception types.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::keys::validate_model;
use crate::{validate, GatewayError};

/// Most targets per model.
pub const MAX_TARGETS: usize = 8;

/// An OpenAI-compatible endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    ChatCompletions,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
}

impl Endpoint {
    /// The path below a provider's base URL (OpenAI's `base_url` convention, which ends in `/v1`).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// One place a model is served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Provider group.
    pub group: String,
    /// The model name upstream (default: the name the client asked for).
    #[serde(default)]
    pub model: Option<String>,
    /// Per provider of the group, a model name that overrides `model`.
    #[serde(default)]
    pub provider_models: BTreeMap<String, String>,
}

impl Target {
    /// The name to send to `provider` for a request that asked for `requested`.
    pub fn upstream_model<'a>(&'a self, requested: &'a str, provider: &str) -> &'a str {
        self.provider_models
            .get(provider)
            .or(self.model.as_ref())
            .map_or(requested, String::as_str)
    }
}

/// The configured models: name → targets in order.
pub type Models = BTreeMap<String, Vec<Target>>;

/// Validates `AI_MODELS`.
pub fn validate_models(models: &Models) -> Result<(), GatewayError> {
    for (name, targets) in models {
        validate_model(name)?;
        if targets.is_empty() || targets.len() > MAX_TARGETS {
            return Err(GatewayError::bad_request(
                "invalid-model",
                format!("model {name} needs 1 to {MAX_TARGETS} targets"),
            ));
        }
        for t in targets {
            validate::name("group", &t.group)?;
            for m in t.model.iter().chain(t.provider_models.values()) {
                validate_model(m)?;
            }
        }
    }
    Ok(())
}

/// What the gateway reads from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The model asked for.
    pub model: String,
    /// `"stream": true`.
    pub stream: bool,
    /// `max_tokens` or `max_completion_tokens`.
    pub max_output: Option<u64>,
}

fn invalid(param: &str, detail: impl Into<String>) -> GatewayError {
    GatewayError::bad_request(
        if param == "model" {
            "invalid-model"
        } else {
            "invalid-request"
        },
        detail,
    )
}

/// Reads the fields the gateway acts on; everything else passes through unread.
pub fn parse(body: &[u8]) -> Result<Parsed, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::bad_request("invalid-json", format!("the body is not JSON: {e}"))
    })?;
    let Some(obj) = v.as_object() else {
        return Err(invalid("body", "the body must be a JSON object"));
    };
    let model = match obj.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(invalid("model", "model must be a string")),
        None => return Err(invalid("model", "model is required")),
    };
    validate_model(&model)?;
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "stream must be a boolean")),
    };
    let mut max_output = None;
    for field in ["max_tokens", "max_completion_tokens"] {
        match obj.get(field) {
            None | Some(Value::Null) => {}
            Some(n) => match n.as_u64().filter(|n| (1..=10_000_000).contains(n)) {
                Some(n) => max_output = Some(max_output.map_or(n, |m: u64| m.max(n))),
                None => {
                    return Err(invalid(
                        field,
                        format!("{field} must be an integer in 1..=10000000"),
                    ))
                }
            },
        }
    }
    Ok(Parsed {
        model,
        stream,
        max_output,
    })
}

/// The tokens to reserve for a request of `body_len` bytes.
pub fn estimate(endpoint: Endpoint, body_len: usize, p: &Parsed, default_max: u64) -> u64 {
    let prompt = (body_len as u64).div_ceil(4).max(1);
    let output = match endpoint {
        Endpoint::Embeddings => 0,
        _ => p.max_output.unwrap_or(default_max),
    };
    prompt.saturating_add(output)
}

/// The body with its top-level `"model"` string replaced by `model`, every other byte as sent.
/// `None` when the body has no top-level `"model"` string (it was parsed before, so this is a
/// key spelled with escapes, which is then re-serialised).
pub fn replace_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let (start, end) = top_level_string_value(body, b"model")?;
    let quoted = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out)
}

/// Like [`replace_model`], falling back to re-serialising the parsed object (key order is then
/// sorted) when the key is spelled with escapes.
pub fn with_model(body: &[u8], model: &str) -> Result<Vec<u8>, GatewayError> {
    if let Some(b) = replace_model(body, model) {
        return Ok(b);
    }
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::bad_request("invalid-json", e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("model".into(), Value::String(model.into()));
    }
    serde_json::to_vec(&v).map_err(|e| GatewayError::Internal(e.to_string()))
}

/// The byte span (quotes included) of the string value of top-level `key` in a JSON object.
fn top_level_string_value(b: &[u8], key: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    let mut depth = 0usize;
    // The start of the last string seen at depth 1 in key position, and its end.
    let mut last_key: Option<(usize, usize)> = None;
    let mut expect_key = false;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && b[i] == b'{';
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            b',' => {
                expect_key = depth == 1;
                i += 1;
            }
            b'"' => {
                let start = i;
                i = string_end(b, i)?;
                if depth == 1 && expect_key {
                    last_key = Some((start, i));
                    expect_key = false;
                }
            }
            b':' if depth == 1 => {
                i += 1;
                let Some((ks, ke)) = last_key.take() else {
                    continue;
                };
                if &b[ks + 1..ke - 1] != key {
                    continue;
                }
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                let vs = i;
                let ve = string_end(b, i)?;
                return Some((vs, ve));
            }
            _ => i += 1,
        }
    }
    None
}

/// The index just past the string starting at `b[i] == '"'`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The secret a request presents: `Authorization: Bearer <secret>` (any case of `Bearer`), else
/// an `api-key` header as Azure's SDKs send it.
pub fn presented_secret<'a>(
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(v) = authorization.map(str::trim) {
        if v.len() > 7 && v.is_char_boundary(7) && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim()).filter(|s| !s.is_empty());
        }
    }
    api_key.map(str::trim).filter(|s| !s.is_empty())
}

/// The targets a key may use, in fallback order (`allowed_groups` empty: every one).
pub fn allowed_targets<'a>(
    targets: &'a [Target],
    allowed_groups: &'a [String],
) -> impl Iterator<Item = &'a Target> + 'a {
    targets
        .iter()
        .filter(move |t| allowed_groups.is_empty() || allowed_groups.contains(&t.group))
}

/// The tokens a settled answer charges the key: an error answer none, a success what its usage
/// reported (`None`, no usage: the reservation's estimate stays charged).
pub fn charged_tokens(status: u16, reported: Option<u64>) -> Option<u64> {
    if (200..300).contains(&status) {
        reported
    } else {
        Some(0)
    }
}

/// OpenAI's error object for `e` (`type` from the status; `code` the problem slug, or
/// `model_not_found` for a model nobody configured, as OpenAI spells it).
pub fn openai_error(e: &GatewayError) -> Value {
    let status = e.status();
    let kind = match status {
        400 | 404 | 405 | 409 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    };
    let (code, param) = match e.slug() {
        MODEL_NOT_FOUND => ("model_not_found", json!("model")),
        s @ ("invalid-model" | "model-not-allowed") => (s, json!("model")),
        s => (s, Value::Null),
    };
    json!({ "message": e.to_string(), "type": kind, "param": param, "code": code })
}

/// The slug of a model no route serves.
pub const MODEL_NOT_FOUND: &str = "model-not-found";

/// The error for a model no route serves (404).
pub fn unknown_model(model: &str) -> GatewayError {
    GatewayError::Refused {
        status: 404,
        kind: MODEL_NOT_FOUND.into(),
        detail: format!(
            "the model {model} does not exist here; GET /v1/models lists the configured ones"
        ),
    }
}

/// `GET /v1/models`: the configured models in OpenAI's list shape.
pub fn models_list(models: &Models) -> Value {
    let data: Vec<Value> = models
        .keys()
        .map(|m| json!({ "id": m, "object": "model", "created": 0, "owned_by": "edge-gateway" }))
        .collect();
    json!({ "object": "list", "data": data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_model_changes_upstream() {
        let body = br#"{ "messages":[{"role":"user","content":"say \"model\": x"}], "model" : "gpt-4o", "stream":true }"#;
        let out = replace_model(body, "gpt-4o-2024-08-06").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "messages":[{"role":"user","content":"say \"model\": x"}], "model" : "gpt-4o-2024-08-06", "stream":true }"#
        );
        // A nested "model" key is not the request's model.
        let nested = br#"{"metadata":{"model":"inner"},"model":"m"}"#;
        let out = replace_model(nested, "up").unwrap();
        assert_eq!(
            out,
            br#"{"metadata":{"model":"inner"},"model":"up"}"#.to_vec()
        );
        // Escaped key spelling: re-serialised.
        let escaped = br#"{"mod\u0065l":"m","n":1}"#;
        assert!(replace_model(escaped, "up").is_none());
        let v: Value = serde_json::from_slice(&with_model(escaped, "up").unwrap()).unwrap();
        assert_eq!(v["model"], "up");
    }

    #[test]
    fn parse_reads_model_stream_and_max_tokens() {
        let p =
            parse(br#"{"model":"gpt-4o","stream":true,"max_tokens":50,"messages":[]}"#).unwrap();
        assert_eq!(
            (p.model.as_str(), p.stream, p.max_output),
            ("gpt-4o", true, Some(50))
        );
        let p = parse(br#"{"model":"m","max_completion_tokens":70}"#).unwrap();
        assert_eq!(p.max_output, Some(70));
        for (bad, slug) in [
            (&br#"[1]"#[..], "invalid-request"),
            (br#"{"messages":[]}"#, "invalid-model"),
            (br#"{"model":5}"#, "invalid-model"),
            (br#"{"model":"m","stream":"yes"}"#, "invalid-request"),
            (br#"{"model":"m","max_tokens":-1}"#, "invalid-request"),
            (br#"not json"#, "invalid-json"),
        ] {
            assert_eq!(
                parse(bad).unwrap_err().slug(),
                slug,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_estimate_covers_prompt_and_output() {
        let p = parse(br#"{"model":"m","max_tokens":100}"#).unwrap();
        assert_eq!(estimate(Endpoint::ChatCompletions, 401, &p, 256), 101 + 100);
        let p = parse(br#"{"model":"m"}"#).unwrap();
        assert_eq!(estimate(Endpoint::Completions, 8, &p, 256), 2 + 256);
        assert_eq!(estimate(Endpoint::Embeddings, 8, &p, 256), 2);
    }

    #[test]
    fn targets_name_the_upstream_model() {
        let models: Models = serde_json::from_str(
            r#"{"gpt-4o":[{"group":"openai"},{"group":"azure","model":"gpt4o","provider_models":{"eu":"gpt4o-eu"}}]}"#,
        )
        .unwrap();
        validate_models(&models).unwrap();
        let t = &models["gpt-4o"];
        assert_eq!(t[0].upstream_model("gpt-4o", "a"), "gpt-4o");
        assert_eq!(t[1].upstream_model("gpt-4o", "us"), "gpt4o");
        assert_eq!(t[1].upstream_model("gpt-4o", "eu"), "gpt4o-eu");
        let bad: Models = serde_json::from_str(r#"{"m":[]}"#).unwrap();
        assert!(validate_models(&bad).is_err());
        let list = models_list(&models);
        assert_eq!(list["data"][0]["id"], "gpt-4o");
    }

    #[test]
    fn the_secret_comes_from_bearer_or_api_key() {
        assert_eq!(
            presented_secret(Some("Bearer sk-eg-1"), None),
            Some("sk-eg-1")
        );
        assert_eq!(
            presented_secret(Some("bearer  sk-eg-2 "), Some("x")),
            Some("sk-eg-2")
        );
        assert_eq!(presented_secret(None, Some("sk-eg-3")), Some("sk-eg-3"));
        assert_eq!(presented_secret(Some("Basic abc"), None), None);
        assert_eq!(presented_secret(Some("Bearer "), None), None);
        assert_eq!(presented_secret(Some("Bé"), None), None);
    }

    #[test]
    fn fallbacks_skip_groups_the_key_may_not_reach_and_errors_charge_no_tokens() {
        let models: Models =
            serde_json::from_str(r#"{"m":[{"group":"a"},{"group":"b"},{"group":"c"}]}"#).unwrap();
        let only: Vec<String> = vec!["a".into(), "c".into()];
        let groups: Vec<&str> = allowed_targets(&models["m"], &only)
            .map(|t| t.group.as_str())
            .collect();
        assert_eq!(groups, ["a", "c"]);
        assert_eq!(allowed_targets(&models["m"], &[]).count(), 3);
        assert_eq!(charged_tokens(200, Some(40)), Some(40));
        assert_eq!(charged_tokens(200, None), None);
        assert_eq!(charged_tokens(400, Some(40)), Some(0));
        assert_eq!(charged_tokens(503, None), Some(0));
    }

    #[test]
    fn errors_take_openai_types() {
        let e = openai_error(&unknown_model("gpt-5"));
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(
            (e["code"].as_str(), e["param"].as_str()),
            (Some("model_not_found"), Some("model"))
        );
        assert_eq!(unknown_model("x").status(), 404);
        let e = openai_error(&GatewayError::TooManyRequests("slow down".into()));
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("rate_limit_error"), Some("rate-limited"))
        );
    }
}
