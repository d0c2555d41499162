//! OpenAI-style streamed answers (server-sent events) to provider calls.
//!
//! A call streams when its provider has `stream` on and the request body is a JSON object with
//! `"stream": true` (see [`asks_for_stream`]). The answer is `200 text/event-stream`, framed with
//! `Transfer-Encoding: chunked`, one event per chunk, each written and flushed on its own:
//!
//! 1. `stream_chunks` content events, the first right after the head, then `stream_delay_ms`
//!    apart;
//! 2. with `stream_usage`, a usage event (no delay before it);
//! 3. `data: [DONE]`, then the terminating zero-size chunk.
//!
//! With `stream_drop_after = k` the stream stops after `min(k, stream_chunks)` content events,
//! before any usage or `[DONE]` event, and the caller closes the connection without the
//! terminating chunk, so the client sees a truncated body.

use std::io::{self, Write};
use std::time::Duration;

use serde_json::{Map, Value};

/// Upper bound of `stream_chunks` (the lower bound is 1).
pub(crate) const MAX_CHUNKS: u32 = 10_000;
/// Upper bound of `stream_delay_ms`.
pub(crate) const MAX_DELAY_MS: u64 = 60_000;
/// The last event of a complete stream.
pub(crate) const DONE_EVENT: &str = "data: [DONE]\n\n";

/// What to stream, decided when the call is counted.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Response headers besides the framing ones (provider, request id, configured extras).
    /// A `Content-Type` or `Cache-Control` among them replaces the SSE default.
    pub(crate) headers: Vec<(String, String)>,
    /// Content events (1..=[`MAX_CHUNKS`]).
    pub(crate) chunks: u32,
    /// Pause between two content events.
    pub(crate) delay: Duration,
    /// Whether to send the usage event.
    pub(crate) usage: bool,
    /// Stop (and have the connection closed) after this many content events.
    pub(crate) drop_after: Option<u32>,
    /// `usage.prompt_tokens`.
    pub(crate) prompt_tokens: u64,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything sent, including the terminating chunk.
    Completed,
    /// Stopped by `stream_drop_after`: the caller must close the connection.
    Dropped,
    /// A write failed (the client went away, or stopped reading for the write timeout).
    Aborted,
}

/// Whether a request body asks for a streamed answer: a JSON object whose `stream` member is
/// the boolean `true` (a string `"true"`, a non-object or invalid JSON do not).
pub(crate) fn asks_for_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<Map<String, Value>>(body)
        .is_ok_and(|m| m.get("stream") == Some(&Value::Bool(true)))
}

/// Content event `i` (0-based).
pub(crate) fn content_event(i: u32) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\
         \"model\":\"mock\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\
         \"finish_reason\":null}}]}}\n\n"
    )
}

/// The final usage event (OpenAI's `stream_options.include_usage` shape: empty `choices`).
pub(crate) fn usage_event(prompt: u64, completion: u64) -> String {
    let total = prompt.saturating_add(completion);
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\
         \"model\":\"mock\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\
         \"completion_tokens\":{completion},\"total_tokens\":{total}}}}}\n\n"
    )
}

/// Writes the head and the events of `plan` to `out`, sleeping between content events (one
/// thread per connection, so blocking here holds up nobody else).
///
/// `chunked` frames every event as one chunk; without it (HTTP/1.0 clients) the body is
/// delimited by closing the connection, which the caller must then do. `close` only chooses the
/// `Connection` header.
pub(crate) fn send<W: Write>(out: &mut W, plan: &Plan, chunked: bool, close: bool) -> Outcome {
    match try_send(out, plan, chunked, close) {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Aborted,
    }
}

fn try_send<W: Write>(out: &mut W, plan: &Plan, chunked: bool, close: bool) -> io::Result<Outcome> {
    write_flushed(out, head(plan, chunked, close).as_bytes())?;
    let sent = plan.drop_after.map_or(plan.chunks, |k| k.min(plan.chunks));
    for i in 0..sent {
        if i > 0 {
            std::thread::sleep(plan.delay);
        }
        event(out, chunked, &content_event(i))?;
    }
    if plan.drop_after.is_some() {
        return Ok(Outcome::Dropped);
    }
    if plan.usage {
        // N = stream_chunks: one completion token per content event ("tok<i> ").
        let usage = usage_event(plan.prompt_tokens, u64::from(plan.chunks));
        event(out, chunked, &usage)?;
    }
    event(out, chunked, DONE_EVENT)?;
    if chunked {
        write_flushed(out, b"0\r\n\r\n")?;
    }
    Ok(Outcome::Completed)
}

fn head(plan: &Plan, chunked: bool, close: bool) -> String {
    let has = |name: &str| {
        plan.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    };
    let mut out = String::from("HTTP/1.1 200 OK\r\n");
    if !has("content-type") {
        out.push_str("Content-Type: text/event-stream\r\n");
    }
    if !has("cache-control") {
        out.push_str("Cache-Control: no-cache\r\n");
    }
    for (k, v) in &plan.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        out.push_str("Transfer-Encoding: chunked\r\n");
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    out
}

/// One event as one chunk (size line, data and CRLF in a single write), flushed.
fn event<W: Write>(out: &mut W, chunked: bool, data: &str) -> io::Result<()> {
    if !chunked {
        return write_flushed(out, data.as_bytes());
    }
    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(data.as_bytes());
    chunk.extend_from_slice(b"\r\n");
    write_flushed(out, &chunk)
}

fn write_flushed<W: Write>(out: &mut W, bytes: &[u8]) -> io::Result<()> {
    out.write_all(bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(chunks: u32, usage: bool, drop_after: Option<u32>) -> Plan {
        Plan {
            headers: vec![("X-Mock-Provider".to_string(), "p".to_string())],
            chunks,
            delay: Duration::ZERO,
            usage,
            drop_after,
            prompt_tokens: 7,
        }
    }

    fn run(plan: &Plan, chunked: bool) -> (Outcome, String) {
        let mut out = Vec::new();
        let outcome = send(&mut out, plan, chunked, false);
        (outcome, String::from_utf8(out).unwrap())
    }

    fn chunk(data: &str) -> String {
        format!("{:x}\r\n{data}\r\n", data.len())
    }

    const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
        Cache-Control: no-cache\r\nX-Mock-Provider: p\r\nTransfer-Encoding: chunked\r\n\
        Connection: keep-alive\r\n\r\n";

    #[test]
    fn events_have_the_exact_openai_shape() {
        assert_eq!(
            content_event(3),
            "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\
             \"model\":\"mock\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok3 \"},\
             \"finish_reason\":null}]}\n\n"
        );
        assert_eq!(
            usage_event(7, 5),
            "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\
             \"model\":\"mock\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\
             \"completion_tokens\":5,\"total_tokens\":12}}\n\n"
        );
        // Each event's payload is valid JSON.
        for e in [content_event(0), usage_event(1, 2)] {
            let json = e.strip_prefix("data: ").unwrap().trim_end();
            serde_json::from_str::<Value>(json).unwrap();
        }
    }

    #[test]
    fn a_complete_stream_is_one_chunk_per_event_then_the_terminator() {
        let (outcome, text) = run(&plan(2, true, None), true);
        assert_eq!(outcome, Outcome::Completed);
        let want = [
            HEAD.to_string(),
            chunk(&content_event(0)),
            chunk(&content_event(1)),
            chunk(&usage_event(7, 2)),
            chunk(DONE_EVENT),
            "0\r\n\r\n".to_string(),
        ]
        .concat();
        assert_eq!(text, want);

        let (_, text) = run(&plan(1, false, None), true);
        let tail = [
            chunk(&content_event(0)),
            chunk(DONE_EVENT),
            "0\r\n\r\n".into(),
        ]
        .concat();
        assert!(text.ends_with(&tail), "{text}");
        assert!(!text.contains("usage"));
    }

    #[test]
    fn drop_after_stops_before_usage_done_and_terminator() {
        let (outcome, text) = run(&plan(5, true, Some(2)), true);
        assert_eq!(outcome, Outcome::Dropped);
        let want = [
            HEAD.to_string(),
            chunk(&content_event(0)),
            chunk(&content_event(1)),
        ]
        .concat();
        assert_eq!(text, want);
        // 0: the head only; more than stream_chunks: every content event, then the drop.
        assert_eq!(
            run(&plan(5, true, Some(0)), true),
            (Outcome::Dropped, HEAD.to_string())
        );
        let (outcome, text) = run(&plan(3, true, Some(99)), true);
        assert_eq!(outcome, Outcome::Dropped);
        assert!(text.ends_with(&chunk(&content_event(2))), "{text}");
    }

    #[test]
    fn without_chunking_events_are_written_raw() {
        let (outcome, text) = run(&plan(1, true, None), false);
        assert_eq!(outcome, Outcome::Completed);
        assert!(!text.contains("Transfer-Encoding"));
        let body = text.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            body,
            [content_event(0), usage_event(7, 1), DONE_EVENT.to_string()].concat()
        );
    }

    #[test]
    fn configured_content_type_and_cache_control_replace_the_defaults() {
        let mut p = plan(1, false, None);
        p.headers.push(("content-type".into(), "text/plain".into()));
        p.headers.push(("Cache-Control".into(), "no-store".into()));
        let (_, text) = run(&p, true);
        assert!(!text.contains("text/event-stream") && !text.contains("no-cache"));
        assert!(text.contains("content-type: text/plain\r\nCache-Control: no-store\r\n"));
    }

    /// Accepts `budget` writes, then fails like a socket whose peer went away.
    struct Broken(usize);

    impl Write for Broken {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.0 -= 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_aborts() {
        for budget in 0..5 {
            let outcome = send(&mut Broken(budget), &plan(3, true, None), true, false);
            assert_eq!(outcome, Outcome::Aborted, "after {budget} writes");
        }
    }

    #[test]
    fn only_a_json_object_with_stream_true_asks_for_a_stream() {
        assert!(asks_for_stream(br#"{"model":"m","stream":true}"#));
        assert!(asks_for_stream(
            br#" {"stream" : true , "messages":[{"stream":false}]} "#
        ));
        for body in [
            &b""[..],
            b"{}",
            br#"{"stream":false}"#,
            br#"{"stream":"true"}"#,
            br#"{"stream":1}"#,
            br#"[{"stream":true}]"#,
            br#"{"stream":true"#,
            b"\xff\xfe",
            br#"{"options":{"stream":true}}"#,
        ] {
            assert!(!asks_for_stream(body), "{}", String::from_utf8_lossy(body));
        }
    }
}
