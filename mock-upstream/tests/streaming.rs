//! SSE streaming mode, through real sockets with a raw HTTP/1.1 client that decodes the chunked
//! body itself, so that framing, timing and truncation are all visible.

// A panic in a test's client helpers is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------------

fn server() -> mock_upstream::Server {
    mock_upstream::start("127.0.0.1:0").unwrap()
}

fn connect(port: u16) -> BufReader<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    BufReader::new(s)
}

fn send(conn: &mut BufReader<TcpStream>, method: &str, path: &str, extra: &str, body: &str) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).unwrap();
}

struct Head {
    status: u16,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(conn: &mut BufReader<TcpStream>) -> Head {
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 "), "status line {line:?}");
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = vec![];
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            return Head { status, headers };
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

/// One step of a chunked body.
enum Chunk {
    /// A data chunk and when its size line arrived.
    Data(Instant, String),
    /// The terminating zero-size chunk (and its blank line).
    End,
    /// The connection closed (or broke) before a complete chunk.
    Eof,
}

fn read_chunk(conn: &mut BufReader<TcpStream>) -> Chunk {
    let mut size = String::new();
    if conn.read_line(&mut size).unwrap_or(0) == 0 || !size.ends_with("\r\n") {
        return Chunk::Eof;
    }
    let at = Instant::now();
    let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
    if size == 0 {
        let mut blank = String::new();
        conn.read_line(&mut blank).unwrap();
        assert_eq!(blank, "\r\n", "no trailers expected");
        return Chunk::End;
    }
    let mut data = vec![0; size + 2];
    if conn.read_exact(&mut data).is_err() {
        return Chunk::Eof;
    }
    assert!(data.ends_with(b"\r\n"), "chunk data longer than its size");
    data.truncate(size);
    Chunk::Data(at, String::from_utf8(data).unwrap())
}

/// Every data chunk until the terminating chunk (`true`) or the connection's end (`false`).
fn read_chunks(conn: &mut BufReader<TcpStream>) -> (Vec<(Instant, String)>, bool) {
    let mut chunks = vec![];
    loop {
        match read_chunk(conn) {
            Chunk::Data(at, data) => chunks.push((at, data)),
            Chunk::End => return (chunks, true),
            Chunk::Eof => return (chunks, false),
        }
    }
}

fn rest(conn: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut out = vec![];
    let _ = conn.read_to_end(&mut out);
    out
}

/// A `Content-Length` response body after its head.
fn read_sized_body(conn: &mut BufReader<TcpStream>, head: &Head) -> Value {
    let len = head.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0; len];
    conn.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A whole non-streamed exchange on a fresh connection.
fn call(port: u16, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut conn = connect(port);
    send(&mut conn, method, path, "Connection: close\r\n", body);
    let head = read_head(&mut conn);
    assert!(head.header("transfer-encoding").is_none(), "not a stream");
    (head.status, read_sized_body(&mut conn, &head))
}

fn configure(port: u16, provider: &str, config: Value) {
    let (status, v) = call(
        port,
        "PUT",
        &format!("/__control/{provider}"),
        &config.to_string(),
    );
    assert_eq!(status, 200, "{v}");
}

fn counters(port: u16, provider: &str) -> Value {
    call(port, "GET", &format!("/__control/{provider}"), "").1["counters"].clone()
}

/// The stream counters only.
fn stream_counters(port: u16, provider: &str) -> Value {
    let c = counters(port, provider);
    json!({
        "streams": c["streams"],
        "streams_completed": c["streams_completed"],
        "streams_dropped": c["streams_dropped"],
        "streams_aborted": c["streams_aborted"],
    })
}

fn expect_stream_counters(port: u16, provider: &str, want: [u64; 4]) {
    let [streams, streams_completed, streams_dropped, streams_aborted] = want;
    assert_eq!(
        stream_counters(port, provider),
        json!({
            "streams": streams,
            "streams_completed": streams_completed,
            "streams_dropped": streams_dropped,
            "streams_aborted": streams_aborted,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Expected bytes, spelled out independently of the implementation
// ---------------------------------------------------------------------------------------------

const BODY: &str = r#"{"model":"mock","stream":true,"messages":[]}"#;

fn content(i: u32) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"mock\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"
    )
}

fn usage(prompt: u64, completion: u64) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"mock\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\n",
        prompt + completion
    )
}

const DONE: &str = "data: [DONE]\n\n";

/// Prompt tokens of [`BODY`], as in non-streamed answers: ceil(44 / 4).
const BODY_PROMPT_TOKENS: u64 = 11;

fn data(chunks: &[(Instant, String)]) -> Vec<&str> {
    chunks.iter().map(|(_, d)| d.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn stream_sends_each_event_as_its_own_chunk_as_it_is_produced() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "sse",
        json!({"stream": true, "stream_chunks": 5, "stream_delay_ms": 50}),
    );
    assert_eq!(BODY.len() as u64, 44, "BODY_PROMPT_TOKENS is ceil(44 / 4)");

    let mut conn = connect(port);
    let start = Instant::now();
    send(
        &mut conn,
        "POST",
        "/sse/v1/chat/completions",
        "X-Request-Id: r-7\r\n",
        BODY,
    );
    let head = read_head(&mut conn);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(head.header("cache-control"), Some("no-cache"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-length"), None);
    assert_eq!(head.header("connection"), Some("keep-alive"));
    assert_eq!(head.header("x-mock-provider"), Some("sse"));
    assert_eq!(head.header("x-request-id"), Some("r-7"));

    let (chunks, terminated) = read_chunks(&mut conn);
    assert!(
        terminated,
        "a complete stream ends with the zero-size chunk"
    );
    let want: Vec<String> = (0..5)
        .map(content)
        .chain([usage(BODY_PROMPT_TOKENS, 5), DONE.to_string()])
        .collect();
    assert_eq!(data(&chunks), want, "exact events, one per chunk");

    // Events leave as they are produced: the first arrives ~4 x 50 ms before the last content.
    let first = chunks[0].0;
    let last_content = chunks[4].0;
    assert!(
        last_content.duration_since(first) >= Duration::from_millis(150),
        "first {:?}, last content {:?} after the request",
        first.duration_since(start),
        last_content.duration_since(start)
    );
    // Usage and [DONE] follow the last content event without a delay.
    assert!(chunks[6].0.duration_since(last_content) < Duration::from_millis(45));

    // The connection stays usable: the chunked body ended exactly where it should. This also
    // orders the counter read after the stream's end was counted.
    send(&mut conn, "POST", "/sse/v1/chat/completions", "", "{}");
    let head = read_head(&mut conn);
    assert_eq!(head.status, 200);
    assert_eq!(
        read_sized_body(&mut conn, &head)["object"],
        "chat.completion"
    );

    expect_stream_counters(port, "sse", [1, 1, 0, 0]);
    let c = counters(port, "sse");
    assert_eq!(
        (c["requests"].as_u64(), c["successes"].as_u64()),
        (Some(2), Some(2))
    );
}

#[test]
fn stream_usage_false_ends_with_done_and_connection_close_is_honoured() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "nou",
        json!({"stream": true, "stream_chunks": 2, "stream_delay_ms": 0, "stream_usage": false}),
    );
    let mut conn = connect(port);
    send(
        &mut conn,
        "POST",
        "/nou/v1/x",
        "Connection: close\r\n",
        BODY,
    );
    let head = read_head(&mut conn);
    assert_eq!(head.header("connection"), Some("close"));
    let (chunks, terminated) = read_chunks(&mut conn);
    assert!(terminated);
    assert_eq!(data(&chunks), [content(0), content(1), DONE.to_string()]);
    assert!(rest(&mut conn).is_empty(), "closed after the stream");
    expect_stream_counters(port, "nou", [1, 1, 0, 0]);
}

#[test]
fn stream_drop_after_closes_without_the_terminating_chunk() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "drop",
        json!({"stream": true, "stream_chunks": 5, "stream_delay_ms": 50, "stream_drop_after": 2}),
    );
    let mut conn = connect(port);
    send(&mut conn, "POST", "/drop/v1/chat/completions", "", BODY);
    let head = read_head(&mut conn);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    let (chunks, terminated) = read_chunks(&mut conn);
    assert!(!terminated, "truncated: no zero-size chunk");
    assert_eq!(data(&chunks), [content(0), content(1)]);
    // The drop is counted before the connection closes.
    expect_stream_counters(port, "drop", [1, 0, 1, 0]);

    // 0 drops right after the head; a value over stream_chunks after every content event.
    configure(port, "drop", json!({"stream_drop_after": 0}));
    let mut conn = connect(port);
    send(&mut conn, "POST", "/drop/v1/x", "", BODY);
    assert_eq!(read_head(&mut conn).status, 200);
    assert!(rest(&mut conn).is_empty(), "nothing after the head");

    configure(
        port,
        "drop",
        json!({"stream_drop_after": 99, "stream_delay_ms": 0}),
    );
    let mut conn = connect(port);
    send(&mut conn, "POST", "/drop/v1/x", "", BODY);
    read_head(&mut conn);
    let (chunks, terminated) = read_chunks(&mut conn);
    assert!(!terminated);
    assert_eq!(data(&chunks), (0..5).map(content).collect::<Vec<_>>());

    // null turns dropping off again.
    configure(port, "drop", json!({"stream_drop_after": null}));
    let mut conn = connect(port);
    send(
        &mut conn,
        "POST",
        "/drop/v1/x",
        "Connection: close\r\n",
        BODY,
    );
    read_head(&mut conn);
    assert!(read_chunks(&mut conn).1);
    expect_stream_counters(port, "drop", [4, 1, 3, 0]);
}

#[test]
fn a_client_that_goes_away_mid_stream_is_counted_as_aborted() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "gone",
        json!({"stream": true, "stream_chunks": 50, "stream_delay_ms": 20}),
    );
    let mut conn = connect(port);
    send(&mut conn, "POST", "/gone/v1/chat/completions", "", BODY);
    assert_eq!(read_head(&mut conn).status, 200);
    assert!(matches!(read_chunk(&mut conn), Chunk::Data(..)));
    drop(conn);

    let deadline = Instant::now() + Duration::from_secs(5);
    while stream_counters(port, "gone")["streams_aborted"] != 1 {
        assert!(
            Instant::now() < deadline,
            "not aborted: {}",
            stream_counters(port, "gone")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    expect_stream_counters(port, "gone", [1, 0, 0, 1]);
    // The mock serves on.
    assert_eq!(call(port, "POST", "/gone/v1/x", "{}").0, 200);
}

#[test]
fn only_stream_true_bodies_to_streaming_providers_stream() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "on",
        json!({"stream": true, "stream_chunks": 1, "stream_delay_ms": 0}),
    );
    for body in [
        "",
        "{}",
        r#"{"stream":false}"#,
        r#"{"stream":"true"}"#,
        r#"[{"stream":true}]"#,
        "not json",
    ] {
        let (status, v) = call(port, "POST", "/on/v1/x", body);
        assert_eq!(
            (status, v["object"].as_str()),
            (200, Some("chat.completion")),
            "{body}"
        );
    }
    // A provider without `stream` ignores the request's flag.
    let (status, v) = call(port, "POST", "/off/v1/x", BODY);
    assert_eq!(
        (status, v["object"].as_str()),
        (200, Some("chat.completion"))
    );
    expect_stream_counters(port, "on", [0, 0, 0, 0]);
    expect_stream_counters(port, "off", [0, 0, 0, 0]);
}

#[test]
fn failures_and_latency_apply_before_a_stream_starts() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "bad",
        json!({"stream": true, "failure_rate": 1.0, "status": 503}),
    );
    let (status, v) = call(port, "POST", "/bad/v1/x", BODY);
    assert_eq!((status, v["error"]["status"].as_u64()), (503, Some(503)));

    configure(
        port,
        "bad",
        json!({"failure_rate": 0.0, "latency_ms": 150, "stream_chunks": 1, "stream_delay_ms": 0}),
    );
    let mut conn = connect(port);
    let start = Instant::now();
    send(
        &mut conn,
        "POST",
        "/bad/v1/x",
        "Connection: close\r\n",
        BODY,
    );
    let head = read_head(&mut conn);
    assert!(
        start.elapsed() >= Duration::from_millis(140),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert!(read_chunks(&mut conn).1);

    let c = counters(port, "bad");
    assert_eq!(
        (c["failures"].as_u64(), c["successes"].as_u64()),
        (Some(1), Some(1))
    );
    expect_stream_counters(port, "bad", [1, 1, 0, 0]);
}

#[test]
fn http_1_0_streams_are_delimited_by_closing_the_connection() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "old",
        json!({"stream": true, "stream_chunks": 2, "stream_delay_ms": 0}),
    );
    let mut conn = connect(port);
    let req = format!(
        "POST /old/v1/x HTTP/1.0\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    conn.get_mut().write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut conn);
    assert_eq!(head.header("transfer-encoding"), None);
    assert_eq!(head.header("connection"), Some("close"));
    let body = String::from_utf8(rest(&mut conn)).unwrap();
    assert_eq!(
        body,
        [
            content(0),
            content(1),
            usage(BODY_PROMPT_TOKENS, 2),
            DONE.to_string()
        ]
        .concat()
    );
    expect_stream_counters(port, "old", [1, 1, 0, 0]);
}

#[test]
fn a_stream_ending_after_a_reset_is_not_counted_in_the_new_state() {
    let s = server();
    let port = s.port();
    configure(
        port,
        "rst",
        json!({"stream": true, "stream_chunks": 3, "stream_delay_ms": 100}),
    );
    let mut conn = connect(port);
    send(&mut conn, "POST", "/rst/v1/x", "", BODY);
    read_head(&mut conn);
    assert!(matches!(read_chunk(&mut conn), Chunk::Data(..)));
    assert_eq!(call(port, "DELETE", "/__control/rst", "").0, 200);
    let (chunks, terminated) = read_chunks(&mut conn);
    assert!(
        terminated,
        "the stream goes on with the plan it started with"
    );
    assert_eq!(chunks.len(), 2 + 2);
    // Same connection: answered only once the stream's end has been (not) counted.
    send(&mut conn, "GET", "/rst/v1/x", "", "");
    read_head(&mut conn);
    expect_stream_counters(port, "rst", [0, 0, 0, 0]);
}

#[test]
fn invalid_stream_settings_are_400_and_change_nothing() {
    let s = server();
    let port = s.port();
    configure(port, "cfg", json!({"stream": true, "stream_chunks": 5}));
    let before = call(port, "GET", "/__control/cfg", "").1;
    for bad in [
        r#"{"stream":1}"#,
        r#"{"stream":null}"#,
        r#"{"stream_chunks":0}"#,
        r#"{"stream_chunks":10001}"#,
        r#"{"stream_chunks":"5"}"#,
        r#"{"stream_delay_ms":60001}"#,
        r#"{"stream_delay_ms":-1}"#,
        r#"{"stream_usage":"no"}"#,
        r#"{"stream_drop_after":-1}"#,
        r#"{"stream_drop_after":2.5}"#,
        r#"{"stream_chunks":7,"stream_delay_ms":60001}"#,
    ] {
        let (status, v) = call(port, "PUT", "/__control/cfg", bad);
        assert_eq!(status, 400, "{bad}");
        assert!(v["error"]["message"].is_string(), "{bad}");
    }
    assert_eq!(call(port, "GET", "/__control/cfg", "").1, before);
    assert_eq!(
        before["config"],
        json!({
            "latency_ms": 0, "status": 500, "failure_rate": 0.0, "drop_connection": false,
            "retry_after_s": null, "completion_tokens": 16, "body": null, "headers": null,
            "stream": true, "stream_chunks": 5, "stream_delay_ms": 100, "stream_usage": true,
            "stream_drop_after": null
        })
    );
}
