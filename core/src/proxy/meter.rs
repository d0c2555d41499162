//! Metering of an upstream body as it passes through: bytes, the token `usage` it reports, and
//! a bounded copy for the cache.
//!
//! A JSON answer (`application/json`, or anything that is not an event stream) reports `usage`
//! in its top-level object (OpenAI: `prompt_tokens`/`completion_tokens`; Anthropic:
//! `input_tokens`/`output_tokens`). An OpenAI-style Server-Sent Events stream reports it in a
//! `data:` event near the end (with `stream_options.include_usage`); the meter scans every
//! `data:` line as it passes, across chunk boundaries, and keeps the last `usage` it saw. A stream
//! that sends none is metered as *unknown usage*: zero tokens, so only the provider's
//! per-request price is charged.
//!
//! Memory is bounded: one partial SSE line of at most [`MAX_LINE`] bytes (longer lines are
//! skipped, never buffered), and a body copy of at most the `collect` cap the meter was made with
//! (beyond it the copy is dropped and the body is not cached).

use serde::Deserialize;

/// Longest SSE line the meter parses.
pub const MAX_LINE: usize = 64 << 10;
/// Largest JSON body the meter parses for `usage`.
pub const MAX_JSON: usize = 4 << 20;

/// Token counts an answer reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub input_tokens: u32,
    /// Completion (output) tokens.
    pub output_tokens: u32,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u32,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u32,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<UsageJson>,
}

fn parse_usage(json: &[u8]) -> Option<Usage> {
    match serde_json::from_slice::<WithUsage>(json) {
        Ok(WithUsage { usage: Some(u) }) => Some(Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }),
        _ => None,
    }
}

/// The `usage` of a complete JSON answer, if it has one.
pub fn json_usage(body: &[u8]) -> Option<Usage> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body.len() > MAX_JSON || body[start] != b'{' {
        return None;
    }
    parse_usage(body)
}

/// Whether a `content-type` is a Server-Sent Events stream.
pub fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        c.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
    })
}

/// How a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The upstream finished the body.
    Completed,
    /// The upstream failed or dropped the connection mid-body.
    UpstreamFailed,
    /// No chunk arrived within the provider's timeout.
    IdleTimeout,
    /// The client went away; the upstream was cancelled.
    ClientGone,
}

/// What the meter saw of one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    /// How it ended.
    pub end: End,
    /// Bytes passed to the client.
    pub bytes: u64,
    /// The usage it reported, if any (`None`: unknown).
    pub usage: Option<Usage>,
    /// The whole body, when it completed within the collect cap.
    pub body: Option<Vec<u8>>,
}

/// A running meter over one body.
#[derive(Debug)]
pub struct Meter {
    sse: bool,
    bytes: u64,
    usage: Option<Usage>,
    line: Vec<u8>,
    skipping: bool,
    copy: Option<Vec<u8>>,
    cap: usize,
}

impl Meter {
    /// A meter for a body of `content_type`, keeping a copy of up to `collect` bytes (0: none;
    /// a JSON body is copied up to [`MAX_JSON`] anyway, for its `usage`).
    pub fn new(content_type: Option<&str>, collect: usize) -> Meter {
        let sse = is_event_stream(content_type);
        let cap = if sse { collect } else { collect.max(MAX_JSON) };
        Meter {
            sse,
            bytes: 0,
            usage: None,
            line: Vec::new(),
            skipping: false,
            copy: (cap > 0).then(Vec::new),
            cap,
        }
    }

    /// Feeds the next chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if let Some(copy) = &mut self.copy {
            if copy.len() + chunk.len() > self.cap {
                self.copy = None;
            } else {
                copy.extend_from_slice(chunk);
            }
        }
        if self.sse {
            self.scan(chunk);
        }
    }

    fn scan(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(nl);
            if !self.skipping && self.line.len() + head.len() <= MAX_LINE {
                self.line.extend_from_slice(head);
                let line = std::mem::take(&mut self.line);
                self.on_line(&line);
            }
            self.line.clear();
            self.skipping = false;
            rest = &tail[1..];
        }
        if !self.skipping {
            if self.line.len() + rest.len() > MAX_LINE {
                self.line.clear();
                self.skipping = true;
            } else {
                self.line.extend_from_slice(rest);
            }
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Cheap pre-check: only events that mention usage are parsed.
        if data.windows(7).any(|w| w == b"\"usage\"") {
            if let Some(u) = parse_usage(data) {
                self.usage = Some(u);
            }
        }
    }

    /// Ends the meter.
    pub fn finish(mut self, end: End) -> Metered {
        if end == End::Completed && self.sse && !self.line.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line);
        }
        let body = self.copy.filter(|_| end == End::Completed);
        let usage = if self.sse {
            self.usage
        } else {
            body.as_deref().and_then(json_usage)
        };
        Metered {
            end,
            bytes: self.bytes,
            usage,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":34,\"total_tokens\":46}}\n\n\
data: [DONE]\n\n";

    fn run(chunks: &[&[u8]], end: End, collect: usize) -> Metered {
        let mut m = Meter::new(Some("text/event-stream; charset=utf-8"), collect);
        for c in chunks {
            m.feed(c);
        }
        m.finish(end)
    }

    #[test]
    fn finds_the_final_usage_event_however_the_stream_is_split() {
        let want = Some(Usage {
            input_tokens: 12,
            output_tokens: 34,
        });
        for size in 1..EVENTS.len() {
            let chunks: Vec<&[u8]> = EVENTS.chunks(size).collect();
            let m = run(&chunks, End::Completed, 0);
            assert_eq!(m.usage, want, "chunk size {size}");
            assert_eq!(m.bytes, EVENTS.len() as u64);
        }
    }

    #[test]
    fn crlf_lines_and_anthropic_names_are_understood() {
        let m = run(
            &[b"event: x\r\ndata: {\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}\r\n\r\n"],
            End::Completed,
            0,
        );
        assert_eq!(
            m.usage,
            Some(Usage {
                input_tokens: 3,
                output_tokens: 4
            })
        );
    }

    #[test]
    fn a_stream_without_usage_is_unknown() {
        let m = run(
            &[b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"],
            End::Completed,
            0,
        );
        assert_eq!(m.usage, None);
    }

    #[test]
    fn an_overlong_line_is_skipped_not_buffered() {
        let mut big = b"data: {\"usage\":{\"prompt_tokens\":1}, \"pad\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        big.extend_from_slice(b"\"}\n\n");
        let mut m = Meter::new(Some("text/event-stream"), 0);
        for c in big.chunks(1000) {
            m.feed(c);
            assert!(m.line.len() <= MAX_LINE);
        }
        m.feed(b"data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":5}}\n\n");
        assert_eq!(
            m.finish(End::Completed).usage.map(|u| u.input_tokens),
            Some(2)
        );
    }

    #[test]
    fn the_copy_is_kept_only_for_a_complete_body_within_the_cap() {
        assert_eq!(
            run(&[EVENTS], End::Completed, 1 << 20).body.as_deref(),
            Some(EVENTS)
        );
        assert_eq!(
            run(&[EVENTS], End::Completed, 10).body,
            None,
            "over the cap"
        );
        assert_eq!(run(&[EVENTS], End::UpstreamFailed, 1 << 20).body, None);
        assert_eq!(run(&[EVENTS], End::ClientGone, 1 << 20).body, None);
        assert_eq!(
            run(&[EVENTS], End::Completed, 0).body,
            None,
            "nothing to fill"
        );
    }

    #[test]
    fn json_usage_reads_the_top_level_object() {
        let body = br#" {"id":"x","usage":{"prompt_tokens":7,"completion_tokens":9}}"#;
        let mut m = Meter::new(Some("application/json"), 0);
        m.feed(body);
        let got = m.finish(End::Completed);
        assert_eq!(
            got.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 9
            })
        );
        assert_eq!(got.body.as_deref(), Some(&body[..]), "copied for usage");
        assert_eq!(json_usage(b"[1]"), None);
        assert_eq!(json_usage(b"{\"usage\":\"no\"}"), None);
        assert!(is_event_stream(Some("Text/Event-Stream")) && !is_event_stream(None));
    }
}
