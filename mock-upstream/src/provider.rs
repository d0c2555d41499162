//! The simulated providers: their behaviour and counters, the deterministic failure pattern,
//! latency, failures (status, `Retry-After`, dropped connections), JSON completions with
//! usage, and the streams handed to `sse`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::http::{json_response, Request, Response};
use crate::routes::Answer;
use crate::server::Shared;
use crate::sse;

/// Slack in the failure pattern's floor() so that e.g. 0.1 * 30 counts as 3.
const PATTERN_EPSILON: f64 = 1e-9;

/// A provider's behaviour (the `config` object of the control API).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Behaviour {
    /// Delay before answering a call or health probe, ms (<= 60000).
    pub latency_ms: u64,
    /// Status of failing responses (100..=599, default 500).
    pub status: u16,
    /// Fraction of calls that fail, 0..=1 (deterministic pattern, see the crate docs).
    pub failure_rate: f64,
    /// Fail by closing the connection without any response.
    pub drop_connection: bool,
    /// `Retry-After` seconds on failures (failures with status 429 always carry it, default 1).
    pub retry_after_s: Option<u64>,
    /// Completion tokens reported in `usage` (default 16).
    pub completion_tokens: u32,
    /// Replaces the success body verbatim.
    pub body: Option<String>,
    /// Extra response headers on success (streamed or not).
    pub headers: Option<BTreeMap<String, String>>,
    /// Answer calls whose body is a JSON object with `"stream": true` with an SSE stream.
    pub stream: bool,
    /// Content events per stream (1..=10000, default 10).
    pub stream_chunks: u32,
    /// Pause between two content events, ms (<= 60000, default 100); the first is sent at once.
    pub stream_delay_ms: u64,
    /// End streams with a usage event before `[DONE]` (default true).
    pub stream_usage: bool,
    /// Close the connection after this many content events (at most `stream_chunks`), without
    /// usage, `[DONE]` or the terminating chunk.
    pub stream_drop_after: Option<u32>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            latency_ms: 0,
            status: 500,
            failure_rate: 0.0,
            drop_connection: false,
            retry_after_s: None,
            completion_tokens: 16,
            body: None,
            headers: None,
            stream: false,
            stream_chunks: 10,
            stream_delay_ms: 100,
            stream_usage: true,
            stream_drop_after: None,
        }
    }
}

/// Counters of one provider (the `counters` object of the control API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Provider calls (not health probes, not control calls).
    pub requests: u64,
    /// Calls answered 200 (streams included).
    pub successes: u64,
    /// Failed calls answered with the failure status.
    pub failures: u64,
    /// Failed calls whose connection was dropped.
    pub dropped: u64,
    /// Health probes (`/{provider}/health`).
    pub health_checks: u64,
    /// Provider calls that carried an `Authorization` header.
    pub authorized: u64,
    /// The last `Authorization` value seen (so tests can check credentials are sent).
    pub last_authorization: Option<String>,
    /// Calls answered with an SSE stream. Once they end, each is counted in exactly one of the
    /// three counters below.
    pub streams: u64,
    /// Streams sent in full (terminating chunk included).
    pub streams_completed: u64,
    /// Streams cut short by `stream_drop_after`.
    pub streams_dropped: u64,
    /// Streams that failed because a write failed (the client went away).
    pub streams_aborted: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Provider {
    pub(crate) behaviour: Behaviour,
    pub(crate) counters: Counters,
    /// Calls since the failure rate was last set (drives the deterministic pattern).
    pub(crate) pattern_n: u64,
    /// Identity of this provider state: a stream that ends after its provider was reset (or
    /// deleted) is not counted in the new state.
    epoch: Arc<()>,
}

/// A stream to send for `provider`, as it was when the call was counted.
pub(crate) struct Stream {
    provider: String,
    epoch: Arc<()>,
    pub(crate) plan: sse::Plan,
}

/// Whether call `n` (0-based) fails at rate `r`: `floor((n+1)*r) > floor(n*r)`.
fn fails_at(n: u64, r: f64) -> bool {
    let at = |k: u64| (k as f64 * r + PATTERN_EPSILON).floor();
    at(n + 1) > at(n)
}

fn common_headers(req: &Request, name: &str) -> Vec<(String, String)> {
    let mut headers = vec![("X-Mock-Provider".to_string(), name.to_string())];
    if let Some(id) = req.header("x-request-id") {
        headers.push(("X-Request-Id".to_string(), id.to_string()));
    }
    headers
}

pub(crate) fn health_probe(req: &Request, name: &str, shared: &Shared) -> Answer {
    let b = {
        let mut map = shared.providers();
        let p = map.entry(name.to_string()).or_default();
        p.counters.health_checks += 1;
        p.behaviour.clone()
    };
    std::thread::sleep(Duration::from_millis(b.latency_ms));
    if b.drop_connection {
        Answer::Drop
    } else if b.failure_rate > 0.0 {
        failure(req, name, &b)
    } else {
        let mut resp = json_response(200, &json!({ "ok": true, "provider": name }));
        resp.headers = common_headers(req, name);
        Answer::Respond(resp)
    }
}

pub(crate) fn provider_call(req: &Request, name: &str, shared: &Shared) -> Answer {
    // Parse the body (outside the lock) only for a provider that streams.
    let stream_on = shared
        .providers()
        .get(name)
        .is_some_and(|p| p.behaviour.stream);
    let asks = stream_on && req.method != "HEAD" && sse::asks_for_stream(&req.body);
    let (b, fails, id, stream_epoch) = {
        let mut map = shared.providers();
        let p = map.entry(name.to_string()).or_default();
        p.counters.requests += 1;
        if let Some(v) = req.header("authorization") {
            p.counters.authorized += 1;
            p.counters.last_authorization = Some(v.to_string());
        }
        let fails = fails_at(p.pattern_n, p.behaviour.failure_rate);
        p.pattern_n += 1;
        match (fails, p.behaviour.drop_connection) {
            (false, _) => p.counters.successes += 1,
            (true, false) => p.counters.failures += 1,
            (true, true) => p.counters.dropped += 1,
        }
        // Failures answer as configured, never with a stream.
        let streams = !fails && asks && p.behaviour.stream;
        if streams {
            p.counters.streams += 1;
        }
        let epoch = streams.then(|| p.epoch.clone());
        (p.behaviour.clone(), fails, p.counters.requests, epoch)
    };
    std::thread::sleep(Duration::from_millis(b.latency_ms));
    match (fails, b.drop_connection) {
        (false, _) => match stream_epoch {
            Some(epoch) => Answer::Stream(Stream {
                provider: name.to_string(),
                epoch,
                plan: stream_plan(req, name, &b),
            }),
            None => success(req, name, id, &b),
        },
        (true, false) => failure(req, name, &b),
        (true, true) => Answer::Drop,
    }
}

fn failure(req: &Request, name: &str, b: &Behaviour) -> Answer {
    let mut headers = common_headers(req, name);
    if b.status == 429 || b.retry_after_s.is_some() {
        let secs = b.retry_after_s.unwrap_or(1);
        headers.push(("Retry-After".to_string(), secs.to_string()));
    }
    let body = json!({
        "error": { "message": "injected failure", "provider": name, "status": b.status }
    });
    Answer::Respond(Response {
        status: b.status,
        headers,
        body: body.to_string().into_bytes(),
    })
}

/// The success body; a struct so that the fields keep this (OpenAI-like) order.
#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'a str,
    provider: &'a str,
    model: &'a str,
    method: &'a str,
    path: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    finish_reason: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'a str,
    content: String,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

/// Headers of successful answers, streamed or not: the common ones, then the configured extras.
fn success_headers(req: &Request, name: &str, b: &Behaviour) -> Vec<(String, String)> {
    let mut headers = common_headers(req, name);
    if let Some(extra) = &b.headers {
        headers.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    headers
}

/// `usage.prompt_tokens` of every success: `ceil(request body bytes / 4)`, at least 1.
fn prompt_tokens(req: &Request) -> u64 {
    (req.body.len() as u64).div_ceil(4).max(1)
}

fn success(req: &Request, name: &str, id: u64, b: &Behaviour) -> Answer {
    let headers = success_headers(req, name, b);
    let body = match &b.body {
        Some(text) => text.clone().into_bytes(),
        None => {
            let prompt = prompt_tokens(req);
            let completion = u64::from(b.completion_tokens);
            // The target after `/{name}`, e.g. `/v1/chat/completions` (query kept).
            let path = req.target.get(name.len() + 1..).unwrap_or("/");
            // Like OpenAI, the answer names the model the request asked for.
            let asked = serde_json::from_slice::<serde_json::Value>(&req.body)
                .ok()
                .and_then(|v| v.get("model")?.as_str().map(str::to_string));
            let body = Completion {
                id: format!("mock-{name}-{id}"),
                object: "chat.completion",
                provider: name,
                model: asked.as_deref().unwrap_or("mock-1"),
                method: &req.method,
                path,
                choices: [Choice {
                    index: 0,
                    message: Message {
                        role: "assistant",
                        content: format!("hello from {name}"),
                    },
                    finish_reason: "stop",
                }],
                usage: Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: prompt + completion,
                },
            };
            serde_json::to_vec(&body).unwrap_or_default()
        }
    };
    Answer::Respond(Response {
        status: 200,
        headers,
        body,
    })
}

/// The stream for a successful streamed call. Its usage event reports the same prompt tokens as
/// a non-streamed answer to the same request (derived from the body, not configured), and
/// `stream_chunks` completion tokens: one per content event (`"tok<i> "`). The
/// `completion_tokens` setting applies to non-streamed answers only, and `body` is ignored.
fn stream_plan(req: &Request, name: &str, b: &Behaviour) -> sse::Plan {
    sse::Plan {
        headers: success_headers(req, name, b),
        chunks: b.stream_chunks,
        delay: Duration::from_millis(b.stream_delay_ms),
        usage: b.stream_usage,
        drop_after: b.stream_drop_after,
        prompt_tokens: prompt_tokens(req),
    }
}

/// Counts how a stream ended, unless its provider was reset (or deleted) meanwhile.
pub(crate) fn count_stream_end(shared: &Shared, stream: &Stream, outcome: sse::Outcome) {
    let mut map = shared.providers();
    let Some(p) = map.get_mut(&stream.provider) else {
        return;
    };
    if !Arc::ptr_eq(&p.epoch, &stream.epoch) {
        return;
    }
    let c = &mut p.counters;
    match outcome {
        sse::Outcome::Completed => c.streams_completed += 1,
        sse::Outcome::Dropped => c.streams_dropped += 1,
        sse::Outcome::Aborted => c.streams_aborted += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_pattern_counts_are_exact() {
        let fails = |r: f64, n: u64| (0..n).filter(|&i| fails_at(i, r)).count();
        assert_eq!(fails(0.0, 100), 0);
        assert_eq!(fails(1.0, 100), 100);
        assert_eq!(fails(0.5, 10), 5);
        assert_eq!(fails(0.1, 10), 1);
        assert_eq!(fails(0.1, 100), 10);
        assert_eq!(fails(0.29, 100), 29);
        assert_eq!(fails(0.7, 10), 7);
        assert_eq!(fails(1.0 / 3.0, 9), 3);
        let half: Vec<bool> = (0..4).map(|i| fails_at(i, 0.5)).collect();
        assert_eq!(half, [false, true, false, true]);
    }
}
