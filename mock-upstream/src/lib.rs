//! A fake upstream provider server: named providers as path prefixes on one port, each with
//! behaviour (latency, failure status, failure rate, 429 + Retry-After, dropped connections,
//! OpenAI-style SSE streaming) switchable at run time over HTTP (`PUT /__control/{provider}`).
//! See README.md.
//!
//! * Failures are deterministic: with failure rate `r`, the n-th provider call since the rate was
//!   last set (or the provider reset), n = 0, 1, 2, ..., fails iff `floor((n+1)*r) > floor(n*r)`
//!   (evaluated with a 1e-9 tolerance so decimal rates such as 0.1 give exact counts). `r = 1`
//!   fails every call, `r = 0.5` every second call (n = 1, 3, 5, ...), `r = 0` never.
//! * HTTP/1.1 with keep-alive and `Connection: close`; request bodies framed by `Content-Length`
//!   or `Transfer-Encoding: chunked` (decoded); `Expect: 100-continue` is answered.
//! * One thread per connection, at most [`MAX_CONNECTIONS`] at once (503 beyond that).
//! * Malformed input gets a 4xx JSON error and the connection is closed; nothing read from the
//!   network can panic the server.
//! * Streamed answers (`stream` on and a `"stream": true` body): see `src/sse.rs`.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

mod sse;

/// Concurrent connections served by [`start`]; further connections get a 503 and are closed.
pub const MAX_CONNECTIONS: usize = 512;
/// Largest request head (request line + headers), bytes; 431 beyond.
const MAX_HEAD: usize = 16 * 1024;
/// Most request headers; 431 beyond.
const MAX_HEADERS: usize = 64;
/// Largest request body, bytes; 413 beyond.
const MAX_BODY: usize = 8 << 20;
/// A connection idle (or stalled mid-request) this long is closed.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of `latency_ms`.
const MAX_LATENCY_MS: u64 = 60_000;
/// Most extra response headers in a provider's config.
const MAX_EXTRA_HEADERS: usize = 32;
/// Slack in the failure pattern's floor() so that e.g. 0.1 * 30 counts as 3.
const PATTERN_EPSILON: f64 = 1e-9;

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

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
struct Provider {
    behaviour: Behaviour,
    counters: Counters,
    /// Calls since the failure rate was last set (drives the deterministic pattern).
    pattern_n: u64,
    /// Identity of this provider state: a stream that ends after its provider was reset (or
    /// deleted) is not counted in the new state.
    epoch: Arc<()>,
}

#[derive(Serialize)]
struct ProviderView<'a> {
    name: &'a str,
    config: &'a Behaviour,
    counters: &'a Counters,
}

struct Shared {
    providers: Mutex<BTreeMap<String, Provider>>,
    stop: AtomicBool,
    active: AtomicUsize,
    max_connections: usize,
}

impl Shared {
    fn providers(&self) -> MutexGuard<'_, BTreeMap<String, Provider>> {
        // Nothing panics while holding the lock, but never let one poisoned lock end the mock.
        self.providers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Frees a connection slot when the connection's thread ends (or never starts).
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A running mock. Stops accepting connections when dropped or [`Server::shutdown`]; connections
/// already open are closed after their current request (best effort, nothing is joined).
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT` (a wildcard bind address is given as loopback).
    pub fn url(&self) -> String {
        format!("http://{}", reachable(self.addr))
    }

    /// Stops accepting new connections (best effort; returns at once).
    pub fn shutdown(&self) {
        if !self.shared.stop.swap(true, Ordering::SeqCst) {
            // Wake the accept loop so that it sees the flag and drops the listener.
            let _ = TcpStream::connect_timeout(&reachable(self.addr), Duration::from_secs(1));
        }
    }

    /// Blocks until the server stops (the binary's main thread).
    pub fn join(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The address a client on this machine can connect to for a bound address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Starts the mock on `addr` (`127.0.0.1:0` picks a free port) and returns at once.
pub fn start(addr: &str) -> io::Result<Server> {
    start_with_limit(addr, MAX_CONNECTIONS)
}

/// [`start`] with another cap on concurrent connections (at least 1).
pub fn start_with_limit(addr: &str, max_connections: usize) -> io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        providers: Mutex::default(),
        stop: AtomicBool::new(false),
        active: AtomicUsize::new(0),
        max_connections: max_connections.max(1),
    });
    let for_loop = shared.clone();
    let accept = std::thread::Builder::new()
        .name("mock-accept".into())
        .spawn(move || accept_loop(listener, &for_loop))?;
    Ok(Server {
        addr,
        shared,
        accept: Some(accept),
    })
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(_) => {
                // e.g. out of file descriptors: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Only this thread takes slots, so the check and the increment cannot race.
        if shared.active.load(Ordering::SeqCst) >= shared.max_connections {
            reject(stream);
            continue;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(shared.clone());
        let spawned = std::thread::Builder::new()
            .name("mock-conn".into())
            .spawn(move || {
                let slot = slot;
                serve_connection(stream, &slot.0);
            });
        // If the thread could not be spawned, the closure (stream and slot) was dropped: the
        // connection is closed and its slot freed.
        drop(spawned);
    }
}

/// Answers a connection over the cap with 503 without reading from it.
fn reject(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let resp = error_response(503, "too many connections");
    let _ = write_response(&mut stream, &resp, true, false);
    let _ = stream.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1
// ---------------------------------------------------------------------------------------------

struct Request {
    method: String,
    /// The request target in origin form (`/alpha/v1/x?q=1`).
    target: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
    /// HTTP/1.1 (chunked responses allowed) rather than HTTP/1.0.
    http11: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

enum Answer {
    Respond(Response),
    /// Close the connection without writing anything.
    Drop,
    /// Stream server-sent events, then count how the stream ended.
    Stream(Stream),
}

/// A stream to send for `provider`, as it was when the call was counted.
struct Stream {
    provider: String,
    epoch: Arc<()>,
    plan: sse::Plan,
}

enum ReadError {
    /// The peer went away (or idled out) between requests: close quietly.
    Closed,
    /// Answer with this status and message, then close.
    Bad(u16, String),
}

fn bad(status: u16, msg: &str) -> ReadError {
    ReadError::Bad(status, msg.to_string())
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    // Every answer leaves in whole writes; SSE events in particular must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while !shared.stop.load(Ordering::SeqCst) {
        let req = match read_request(&mut reader, &mut writer) {
            Ok(r) => r,
            Err(ReadError::Closed) => break,
            Err(ReadError::Bad(status, msg)) => {
                let _ = write_response(&mut writer, &error_response(status, &msg), true, false);
                linger_close(&mut reader, &mut writer);
                return;
            }
        };
        match handle(&req, shared) {
            Answer::Respond(resp) => {
                // A 1xx as a final answer leaves the client waiting: end the exchange.
                let close = req.close || resp.status < 200;
                let head_only = req.method == "HEAD";
                if write_response(&mut writer, &resp, close, head_only).is_err() || close {
                    break;
                }
            }
            Answer::Drop => break,
            Answer::Stream(stream) => {
                // HTTP/1.0 has no chunked coding: its streams end by closing the connection.
                let close = req.close || !req.http11;
                let outcome = sse::send(&mut writer, &stream.plan, req.http11, close);
                count_stream_end(shared, &stream, outcome);
                // A dropped stream closes without the terminating chunk (the shutdown below).
                if outcome != sse::Outcome::Completed || close {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Closes after an error answer without resetting the connection over unread input (which could
/// discard the answer before the client reads it): half-close, then drain briefly.
fn linger_close(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream) {
    let _ = writer.shutdown(Shutdown::Write);
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 1 << 20 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Reads the request head up to and including the blank line.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, ReadError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let budget = (MAX_HEAD + 1 - head.len()) as u64;
        let n = reader
            .by_ref()
            .take(budget)
            .read_until(b'\n', &mut line)
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(if head.is_empty() {
                ReadError::Closed
            } else {
                bad(400, "truncated request head")
            });
        }
        if head.len() + line.len() > MAX_HEAD {
            return Err(bad(431, "request head too large"));
        }
        if !line.ends_with(b"\n") {
            return Err(bad(400, "truncated request head"));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue; // blank lines before a request line are tolerated
            }
            head.extend_from_slice(&line);
            return Ok(head);
        }
        head.extend_from_slice(&line);
    }
}

fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<Request, ReadError> {
    let head = read_head(reader)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(bad(431, "too many request headers")),
        _ => return Err(bad(400, "malformed request")),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(bad(400, "malformed request line"));
    };
    let method = method.to_string();
    let target = origin_form(target).to_string();
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let values = |name: &'static str| header_values(&headers, name);
    let tokens = |name: &'static str| -> Vec<String> {
        values(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let connection = tokens("connection");
    let mut close = if version == 0 {
        !connection.iter().any(|t| t == "keep-alive")
    } else {
        connection.iter().any(|t| t == "close")
    };

    // Body framing (RFC 9112 section 6): Transfer-Encoding wins over Content-Length.
    let codings = tokens("transfer-encoding");
    let body = if !codings.is_empty() {
        if codings.last().map(String::as_str) != Some("chunked") {
            return Err(bad(
                400,
                "Transfer-Encoding must end with chunked (or send Content-Length)",
            ));
        }
        if values("content-length").next().is_some() {
            close = true; // both framings: honour chunked, then don't trust the stream further
        }
        continue_if_expected(&headers, writer)?;
        read_chunked(reader)?
    } else {
        let mut len: Option<u64> = None;
        for v in values("content-length") {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(400, "bad Content-Length"));
            }
            let n = v.parse::<u64>().unwrap_or(u64::MAX);
            if len.is_some_and(|l| l != n) {
                return Err(bad(400, "conflicting Content-Length headers"));
            }
            len = Some(n);
        }
        let len = len.unwrap_or(0);
        if len > MAX_BODY as u64 {
            return Err(bad(413, "request body too large"));
        }
        if len > 0 {
            continue_if_expected(&headers, writer)?;
        }
        let mut body = Vec::with_capacity((len as usize).min(64 * 1024));
        let got = reader
            .by_ref()
            .take(len)
            .read_to_end(&mut body)
            .map_err(|_| bad(400, "truncated request body"))?;
        if (got as u64) < len {
            return Err(bad(400, "truncated request body"));
        }
        body
    };
    Ok(Request {
        method,
        target,
        headers,
        body,
        close,
        http11: version == 1,
    })
}

fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Sends `100 Continue` when the client waits for it before sending its body.
fn continue_if_expected(
    headers: &[(String, String)],
    writer: &mut TcpStream,
) -> Result<(), ReadError> {
    let expects = headers
        .iter()
        .any(|(k, v)| k == "expect" && v.eq_ignore_ascii_case("100-continue"));
    if expects {
        writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| ReadError::Closed)?;
    }
    Ok(())
}

/// One line of a chunked body without its line ending; `limit` bytes at most.
fn read_chunk_line(reader: &mut BufReader<TcpStream>, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(limit as u64 + 2)
        .read_until(b'\n', &mut line)
        .map_err(|_| bad(400, "truncated chunked body"))?;
    if line.pop() != Some(b'\n') {
        return Err(bad(400, "truncated chunked body or overlong chunk line"));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_chunk_line(reader, 1024)?;
        let size_field = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_field).unwrap_or("").trim();
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad(400, "bad chunk size"));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad(400, "bad chunk size"))?;
        if size == 0 {
            // Trailer fields (ignored) up to the blank line.
            let mut trailers = 0usize;
            loop {
                let t = read_chunk_line(reader, MAX_HEAD)?;
                if t.is_empty() {
                    return Ok(body);
                }
                trailers += t.len();
                if trailers > MAX_HEAD {
                    return Err(bad(431, "chunked trailers too large"));
                }
            }
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(bad(413, "request body too large"));
        }
        let got = reader
            .by_ref()
            .take(size as u64)
            .read_to_end(&mut body)
            .map_err(|_| bad(400, "truncated chunked body"))?;
        if got < size {
            return Err(bad(400, "truncated chunked body"));
        }
        if !read_chunk_line(reader, 0)?.is_empty() {
            return Err(bad(400, "chunk data longer than its size"));
        }
    }
}

/// `http://host/x?y` -> `/x?y`; origin-form targets unchanged.
fn origin_form(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let status = resp.status;
    // 1xx, 204 and 304 have no body (and 1xx/204 no Content-Length) by definition.
    let no_body = status < 200 || status == 204 || status == 304;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !(status < 200 || status == 204) {
        let len = if no_body { 0 } else { resp.body.len() };
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    let has_type = resp
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !no_body && !has_type {
        out.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    // One write: head and body in separate segments would meet Nagle + delayed ACK (40 ms).
    let mut bytes = out.into_bytes();
    if !no_body && !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

fn json_response(status: u16, v: &Value) -> Response {
    Response {
        status,
        headers: vec![],
        body: v.to_string().into_bytes(),
    }
}

fn error_response(status: u16, msg: &str) -> Response {
    json_response(
        status,
        &json!({ "error": { "message": msg, "status": status } }),
    )
}

fn provider_body(name: &str, p: &Provider) -> Vec<u8> {
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

/// `[a-z0-9_-]{1,32}`.
fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_provider(s: &str) -> bool {
    valid_name(s) && s != "__control"
}

fn handle(req: &Request, shared: &Shared) -> Answer {
    let path = req.target.split(['?', '#']).next().unwrap_or("/");
    let segs: Vec<&str> = match path.strip_prefix('/') {
        Some(p) => p.split('/').collect(),
        None => vec![],
    };
    let method = req.method.as_str();
    match segs.as_slice() {
        ["health"] => Answer::Respond(json_response(200, &json!({ "ok": true }))),
        ["__control"] if method == "GET" => {
            let map = shared.providers();
            let mut out = b"{\"providers\":[".to_vec();
            for (i, (name, p)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&provider_body(name, p));
            }
            out.extend_from_slice(b"]}");
            Answer::Respond(Response {
                status: 200,
                headers: vec![],
                body: out,
            })
        }
        ["__control"] => not_allowed("GET"),
        ["__control", "reset"] if method == "POST" => {
            shared.providers().clear();
            Answer::Respond(json_response(200, &json!({ "reset": true })))
        }
        ["__control", name] if valid_name(name) => control(req, name, shared),
        [name, "health"] if is_provider(name) => health_probe(req, name, shared),
        [name, _, ..] if is_provider(name) => provider_call(req, name, shared),
        _ => Answer::Respond(error_response(404, &format!("nothing at {path}"))),
    }
}

fn not_allowed(allow: &str) -> Answer {
    let mut resp = error_response(405, &format!("method not allowed; use {allow}"));
    resp.headers.push(("Allow".to_string(), allow.to_string()));
    Answer::Respond(resp)
}

// ---------------------------------------------------------------------------------------------
// Control plane
// ---------------------------------------------------------------------------------------------

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

fn control(req: &Request, name: &str, shared: &Shared) -> Answer {
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

// ---------------------------------------------------------------------------------------------
// Provider calls
// ---------------------------------------------------------------------------------------------

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

fn health_probe(req: &Request, name: &str, shared: &Shared) -> Answer {
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

fn provider_call(req: &Request, name: &str, shared: &Shared) -> Answer {
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
            let body = Completion {
                id: format!("mock-{name}-{id}"),
                object: "chat.completion",
                provider: name,
                model: "mock-1",
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
fn count_stream_end(shared: &Shared, stream: &Stream, outcome: sse::Outcome) {
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

    #[test]
    fn provider_names_follow_the_pattern() {
        assert!(valid_name("alpha") && valid_name("a-b_9") && valid_name(&"a".repeat(32)));
        assert!(!valid_name("") && !valid_name("Alpha") && !valid_name(&"a".repeat(33)));
        assert!(!valid_name("a.b") && !valid_name("a b"));
        assert!(!is_provider("__control"));
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(origin_form("/a/b?c"), "/a/b?c");
        assert_eq!(origin_form("http://h:1/a/b?c"), "/a/b?c");
        assert_eq!(origin_form("HTTPS://h"), "/");
    }

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
