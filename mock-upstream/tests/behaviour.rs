//! The mock upstream's behaviour, through real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Resp {
    status: u16,
    head: String,
    body: String,
}

fn raw(port: u16, request: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn parse(bytes: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn call(port: u16, method: &str, path: &str, body: &str) -> Resp {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    parse(&raw(port, &req))
}

fn json(r: &Resp) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

#[test]
fn default_call_succeeds_with_openai_style_usage() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    let r = call(
        s.port(),
        "POST",
        "/alpha/v1/chat/completions",
        &"x".repeat(40),
    );
    assert_eq!(r.status, 200);
    assert!(r.head.contains("X-Mock-Provider: alpha"));
    let v = json(&r);
    assert_eq!(v["provider"], "alpha");
    assert_eq!(v["path"], "/v1/chat/completions");
    assert_eq!(v["usage"]["prompt_tokens"], 10);
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["usage"]["total_tokens"], 26);
}

#[test]
fn latency_is_applied() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    assert_eq!(
        call(s.port(), "PUT", "/__control/slow", r#"{"latency_ms":250}"#).status,
        200
    );
    let t = Instant::now();
    assert_eq!(call(s.port(), "GET", "/slow/x", "").status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[test]
fn failure_rate_half_fails_every_second_call() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    call(
        s.port(),
        "PUT",
        "/__control/flaky",
        r#"{"failure_rate":0.5,"status":502}"#,
    );
    let statuses: Vec<u16> = (0..10)
        .map(|_| call(s.port(), "GET", "/flaky/x", "").status)
        .collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 502).count(), 5);
    assert_eq!(statuses[..4], [200, 502, 200, 502]);
    let c = json(&call(s.port(), "GET", "/__control/flaky", ""));
    assert_eq!(c["counters"]["failures"], 5);
    assert_eq!(c["counters"]["successes"], 5);
    assert_eq!(c["counters"]["requests"], 10);
}

#[test]
fn status_429_carries_retry_after() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    call(
        s.port(),
        "PUT",
        "/__control/limited",
        r#"{"failure_rate":1.0,"status":429,"retry_after_s":7}"#,
    );
    let r = call(s.port(), "POST", "/limited/v1/x", "{}");
    assert_eq!(r.status, 429);
    assert!(r.head.contains("Retry-After: 7"), "{}", r.head);
}

#[test]
fn drop_connection_closes_without_a_response() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    call(
        s.port(),
        "PUT",
        "/__control/dropper",
        r#"{"failure_rate":1.0,"drop_connection":true}"#,
    );
    let bytes = raw(s.port(), "GET /dropper/x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        bytes.is_empty(),
        "got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let c = json(&call(s.port(), "GET", "/__control/dropper", ""));
    assert_eq!(c["counters"]["dropped"], 1);
}

#[test]
fn invalid_control_input_is_400_and_changes_nothing() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    call(s.port(), "PUT", "/__control/p", r#"{"latency_ms":5}"#);
    for bad in [
        r#"{"failure_rate":1.5}"#,
        r#"{"status":99}"#,
        r#"{"nope":1}"#,
        "not json",
        r#"{"latency_ms":-1}"#,
    ] {
        assert_eq!(
            call(s.port(), "PUT", "/__control/p", bad).status,
            400,
            "{bad}"
        );
    }
    let c = json(&call(s.port(), "GET", "/__control/p", ""));
    assert_eq!(c["config"]["latency_ms"], 5);
    assert_eq!(c["config"]["failure_rate"], 0.0);
}

#[test]
fn health_endpoint_follows_config_and_reset_restores_defaults() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    assert_eq!(call(s.port(), "GET", "/h/health", "").status, 200);
    call(
        s.port(),
        "PUT",
        "/__control/h",
        r#"{"failure_rate":1.0,"status":503}"#,
    );
    assert_eq!(call(s.port(), "GET", "/h/health", "").status, 503);
    assert_eq!(call(s.port(), "DELETE", "/__control/h", "").status, 200);
    assert_eq!(call(s.port(), "GET", "/h/health", "").status, 200);
    let c = json(&call(s.port(), "GET", "/__control/h", ""));
    assert_eq!(
        c["counters"]["health_checks"], 1,
        "reset cleared the counters"
    );
    assert_eq!(
        c["counters"]["requests"], 0,
        "probes are not provider calls"
    );
}

#[test]
fn survives_garbage_and_serves_keep_alive() {
    let s = mock_upstream::start("127.0.0.1:0").unwrap();
    let r = parse(&raw(s.port(), "\x00\x01garbage\r\n\r\n"));
    assert_eq!(r.status, 400);
    let r = parse(&raw(
        s.port(),
        "POST /a/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ));
    assert_eq!(r.status, 411);
    let two = "GET /ka/one HTTP/1.1\r\nHost: x\r\n\r\nGET /ka/two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let text = String::from_utf8_lossy(&raw(s.port(), two)).into_owned();
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.contains("\"path\":\"/one\"") && text.contains("\"path\":\"/two\""));
    assert_eq!(call(s.port(), "GET", "/health", "").status, 200);
    assert_eq!(call(s.port(), "GET", "/", "").status, 404);
}
