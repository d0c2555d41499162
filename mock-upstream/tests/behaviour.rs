//! The mock upstream's behaviour, through real sockets (a tiny HTTP/1.1 client below).

// A panic in a test's client helpers is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// A tiny client
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Reads one response; `None` if the connection ended before a status line.
    fn read_response(&mut self, head_only: bool) -> Option<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = vec![];
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: vec![],
        };
        let no_body = head_only || status < 200 || status == 204 || status == 304;
        if !no_body {
            match resp.header("content-length") {
                Some(n) => {
                    let mut body = vec![0; n.parse().unwrap()];
                    self.reader.read_exact(&mut body).unwrap();
                    resp.body = body;
                }
                None => {
                    self.reader.read_to_end(&mut resp.body).unwrap();
                }
            }
        }
        Some(resp)
    }

    /// A keep-alive request on this connection.
    fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: mock\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.send(req.as_bytes());
        self.read_response(method == "HEAD")
            .expect("a response before the connection closed")
    }

    /// Everything the server sends until it closes the connection.
    fn rest(&mut self) -> Vec<u8> {
        let mut out = vec![];
        let _ = self.reader.read_to_end(&mut out);
        out
    }
}

/// One request on a fresh connection (`Connection: close`).
fn call_with(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    Conn::open(port).request(method, path, &all, body)
}

fn call(port: u16, method: &str, path: &str, body: &str) -> Resp {
    call_with(port, method, path, &[], body)
}

/// Sets a provider's behaviour and checks the control plane accepted it.
fn configure(port: u16, provider: &str, config: Value) -> Value {
    let r = call(
        port,
        "PUT",
        &format!("/__control/{provider}"),
        &config.to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn state(port: u16, provider: &str) -> Value {
    let r = call(port, "GET", &format!("/__control/{provider}"), "");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Raw bytes to a fresh connection, then half-close; returns everything the server sent.
fn raw(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut c = Conn::open(port);
    let _ = c.reader.get_mut().write_all(bytes);
    let _ = c.reader.get_ref().shutdown(Shutdown::Write);
    c.rest()
}

fn status_of(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn server() -> mock_upstream::Server {
    mock_upstream::start("127.0.0.1:0").unwrap()
}

// ---------------------------------------------------------------------------------------------
// Provider calls
// ---------------------------------------------------------------------------------------------

#[test]
fn the_answer_names_the_model_the_request_asked_for() {
    let s = server();
    let r = call_with(
        s.port(),
        "POST",
        "/alpha/v1/chat/completions",
        &[],
        r#"{"messages":[],"model":"gpt-4o-mini"}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "gpt-4o-mini");
}

#[test]
fn default_call_succeeds_with_openai_style_body_and_usage() {
    let s = server();
    let r = call_with(
        s.port(),
        "POST",
        "/alpha/v1/chat/completions",
        &[("X-Request-Id", "req-42")],
        &"x".repeat(41),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-mock-provider"), Some("alpha"));
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    assert!(
        r.text().starts_with(
            r#"{"id":"mock-alpha-1","object":"chat.completion","provider":"alpha","model":"mock-1","method":"POST","path":"/v1/chat/completions","choices":[{"index":0,"#
        ),
        "fields in OpenAI order: {}",
        r.text()
    );
    assert_eq!(
        r.json(),
        json!({
            "id": "mock-alpha-1",
            "object": "chat.completion",
            "provider": "alpha",
            "model": "mock-1",
            "method": "POST",
            "path": "/v1/chat/completions",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "hello from alpha"},
                "finish_reason": "stop"
            }],
            // ceil(41 / 4) = 11 prompt tokens, 16 completion tokens by default.
            "usage": {"prompt_tokens": 11, "completion_tokens": 16, "total_tokens": 27}
        })
    );
}

#[test]
fn usage_counts_at_least_one_prompt_token_and_the_configured_completion_tokens() {
    let s = server();
    configure(s.port(), "tok", json!({"completion_tokens": 3}));
    let v = call(s.port(), "GET", "/tok/v1/models", "").json();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4})
    );
    assert_eq!(v["id"], "mock-tok-1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/v1/models");
    let v = call(s.port(), "GET", "/tok/v1/models", "").json();
    assert_eq!(v["id"], "mock-tok-2", "ids count the provider's calls");
}

#[test]
fn latency_is_applied_to_calls_and_health_probes() {
    let s = server();
    configure(s.port(), "slow", json!({"latency_ms": 250}));
    let t = Instant::now();
    assert_eq!(call(s.port(), "POST", "/slow/v1/x", "{}").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(call(s.port(), "GET", "/slow/health", "").status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn failure_rate_half_fails_every_second_call() {
    let s = server();
    configure(
        s.port(),
        "flaky",
        json!({"failure_rate": 0.5, "status": 502}),
    );
    let statuses: Vec<u16> = (0..10)
        .map(|_| call(s.port(), "GET", "/flaky/x", "").status)
        .collect();
    assert_eq!(
        statuses,
        [200, 502, 200, 502, 200, 502, 200, 502, 200, 502],
        "n fails iff floor((n+1)/2) > floor(n/2)"
    );
    let c = &state(s.port(), "flaky")["counters"];
    assert_eq!(c["requests"], 10);
    assert_eq!(c["failures"], 5);
    assert_eq!(c["successes"], 5);
}

#[test]
fn failure_rate_one_fails_every_call_and_a_tenth_fails_exactly_one_in_ten() {
    let s = server();
    configure(s.port(), "down", json!({"failure_rate": 1.0}));
    for _ in 0..5 {
        let r = call(s.port(), "POST", "/down/v1/x", "{}");
        assert_eq!(r.status, 500);
        assert_eq!(
            r.json(),
            json!({"error": {"message": "injected failure", "provider": "down", "status": 500}})
        );
    }
    configure(
        s.port(),
        "tenth",
        json!({"failure_rate": 0.1, "status": 503}),
    );
    let failed = (0..20)
        .filter(|_| call(s.port(), "GET", "/tenth/x", "").status == 503)
        .count();
    assert_eq!(failed, 2);
}

#[test]
fn setting_the_failure_rate_restarts_the_pattern() {
    let s = server();
    configure(s.port(), "re", json!({"failure_rate": 0.5}));
    assert_eq!(call(s.port(), "GET", "/re/x", "").status, 200); // n = 0
    configure(s.port(), "re", json!({"latency_ms": 0})); // not the rate: pattern goes on
    assert_eq!(call(s.port(), "GET", "/re/x", "").status, 500); // n = 1
    configure(s.port(), "re", json!({"failure_rate": 0.5})); // the rate: n back to 0
    assert_eq!(call(s.port(), "GET", "/re/x", "").status, 200);
    assert_eq!(call(s.port(), "GET", "/re/x", "").status, 500);
}

#[test]
fn status_429_carries_retry_after_default_one_or_as_configured() {
    let s = server();
    configure(
        s.port(),
        "limited",
        json!({"failure_rate": 1.0, "status": 429}),
    );
    let r = call_with(
        s.port(),
        "POST",
        "/limited/v1/x",
        &[("X-Request-Id", "r1")],
        "{}",
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-request-id"), Some("r1"));
    assert_eq!(r.header("x-mock-provider"), Some("limited"));
    assert_eq!(r.json()["error"]["status"], 429);

    configure(s.port(), "limited", json!({"retry_after_s": 7}));
    let r = call(s.port(), "POST", "/limited/v1/x", "{}");
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));

    // retry_after_s also applies to other failure statuses; without it they carry none.
    configure(
        s.port(),
        "busy",
        json!({"failure_rate": 1.0, "status": 503}),
    );
    assert_eq!(
        call(s.port(), "GET", "/busy/x", "").header("retry-after"),
        None
    );
    configure(s.port(), "busy", json!({"retry_after_s": 3}));
    assert_eq!(
        call(s.port(), "GET", "/busy/x", "").header("retry-after"),
        Some("3")
    );
}

#[test]
fn drop_connection_closes_without_any_bytes() {
    let s = server();
    configure(
        s.port(),
        "dropper",
        json!({"failure_rate": 1.0, "drop_connection": true}),
    );
    let mut c = Conn::open(s.port());
    c.send(b"GET /dropper/v1/x HTTP/1.1\r\nHost: mock\r\n\r\n");
    let bytes = c.rest();
    assert!(
        bytes.is_empty(),
        "got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let counters = &state(s.port(), "dropper")["counters"];
    assert_eq!(counters["dropped"], 1);
    assert_eq!(counters["failures"], 0);
    assert_eq!(counters["requests"], 1);
    // drop_connection alone (rate 0) never fails a call.
    configure(s.port(), "dropper", json!({"failure_rate": 0.0}));
    assert_eq!(call(s.port(), "GET", "/dropper/x", "").status, 200);
}

#[test]
fn body_and_header_overrides_apply_to_successes_and_null_clears_them() {
    let s = server();
    configure(
        s.port(),
        "ovr",
        json!({
            "body": "plain text, verbatim",
            "headers": {
                "Content-Type": "text/plain",
                "Set-Cookie": "session=abc; Path=/",
                "Cache-Control": "max-age=60"
            }
        }),
    );
    let r = call(s.port(), "GET", "/ovr/x", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "plain text, verbatim");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("set-cookie"), Some("session=abc; Path=/"));
    assert_eq!(r.header("cache-control"), Some("max-age=60"));

    let v = configure(s.port(), "ovr", json!({"body": null, "headers": null}));
    assert_eq!(v["config"]["body"], Value::Null);
    let r = call(s.port(), "GET", "/ovr/x", "");
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.header("set-cookie"), None);
}

// ---------------------------------------------------------------------------------------------
// Control plane
// ---------------------------------------------------------------------------------------------

#[test]
fn control_put_merges_partial_updates_and_answers_the_full_state() {
    let s = server();
    let v = configure(s.port(), "p", json!({"latency_ms": 5}));
    assert_eq!(v["name"], "p");
    assert_eq!(
        v["config"],
        json!({
            "latency_ms": 5, "status": 500, "failure_rate": 0.0, "drop_connection": false,
            "retry_after_s": null, "completion_tokens": 16, "body": null, "headers": null,
            "stream": false, "stream_chunks": 10, "stream_delay_ms": 100, "stream_usage": true,
            "stream_drop_after": null
        })
    );
    assert_eq!(v["counters"]["requests"], 0);
    let v = configure(s.port(), "p", json!({"status": 503, "failure_rate": 0.25}));
    assert_eq!(v["config"]["latency_ms"], 5, "earlier fields kept");
    assert_eq!(v["config"]["status"], 503);
    assert_eq!(v["config"]["failure_rate"], 0.25);
    assert_eq!(state(s.port(), "p")["config"], v["config"]);
}

#[test]
fn invalid_control_input_is_400_and_changes_nothing() {
    let s = server();
    configure(s.port(), "p", json!({"latency_ms": 5, "status": 502}));
    let before = state(s.port(), "p");
    for bad in [
        r#"{"failure_rate":1.5}"#,
        r#"{"failure_rate":-0.1}"#,
        r#"{"status":99}"#,
        r#"{"status":600}"#,
        r#"{"status":70000}"#,
        r#"{"latency_ms":60001}"#,
        r#"{"latency_ms":-1}"#,
        r#"{"latency_ms":null}"#,
        r#"{"drop_connection":"yes"}"#,
        r#"{"completion_tokens":1.5}"#,
        r#"{"body":5}"#,
        r#"{"headers":{"X-A":"a\r\nX-B: b"}}"#,
        r#"{"headers":{"Content-Length":"1"}}"#,
        r#"{"headers":["x"]}"#,
        r#"{"nope":1}"#,
        r#"{"latency_ms":7,"status":99}"#,
        "not json",
        "[]",
        "",
    ] {
        let r = call(s.port(), "PUT", "/__control/p", bad);
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"]["status"], 400, "{bad}");
        assert!(r.json()["error"]["message"].is_string(), "{bad}");
    }
    assert_eq!(state(s.port(), "p"), before);
}

#[test]
fn counters_count_calls_but_not_control_calls_or_health_probes() {
    let s = server();
    for _ in 0..3 {
        call_with(
            s.port(),
            "POST",
            "/c/v1/x",
            &[("Authorization", "Bearer k")],
            "{}",
        );
    }
    configure(s.port(), "c", json!({"failure_rate": 1.0}));
    call(s.port(), "POST", "/c/v1/x", "{}");
    call(s.port(), "POST", "/c/v1/x", "{}");
    call(s.port(), "GET", "/c/health", "");
    call(s.port(), "GET", "/c/health", "");
    state(s.port(), "c");
    let c = &state(s.port(), "c")["counters"];
    assert_eq!(
        *c,
        json!({
            "requests": 5, "successes": 3, "failures": 2, "dropped": 0, "health_checks": 2,
            "authorized": 3, "last_authorization": "Bearer k", "streams": 0,
            "streams_completed": 0, "streams_dropped": 0, "streams_aborted": 0
        })
    );
}

#[test]
fn delete_and_reset_restore_defaults_and_list_shows_every_provider() {
    let s = server();
    configure(s.port(), "one", json!({"status": 503}));
    call(s.port(), "GET", "/two/x", "");
    let list = call(s.port(), "GET", "/__control", "").json();
    let names: Vec<&str> = list["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);

    let r = call(s.port(), "DELETE", "/__control/one", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["config"]["status"], 500);

    assert_eq!(call(s.port(), "POST", "/__control/reset", "").status, 200);
    let list = call(s.port(), "GET", "/__control", "").json();
    assert_eq!(list, json!({"providers": []}));
    assert_eq!(state(s.port(), "two")["counters"]["requests"], 0);
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

#[test]
fn mock_health_is_ok() {
    let s = server();
    let r = call(s.port(), "GET", "/health", "");
    assert_eq!((r.status, r.json()), (200, json!({"ok": true})));
}

#[test]
fn provider_health_follows_config() {
    let s = server();
    let r = call(s.port(), "GET", "/h/health", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"ok": true, "provider": "h"}));

    configure(s.port(), "h", json!({"failure_rate": 0.5, "status": 503}));
    let r = call(s.port(), "POST", "/h/health", "");
    assert_eq!(r.status, 503, "any failure rate above 0 is unhealthy");

    configure(
        s.port(),
        "h",
        json!({"failure_rate": 0.0, "drop_connection": true}),
    );
    let mut c = Conn::open(s.port());
    c.send(b"GET /h/health HTTP/1.1\r\nHost: mock\r\n\r\n");
    assert!(c.rest().is_empty(), "drop_connection drops the probe");

    assert_eq!(call(s.port(), "DELETE", "/__control/h", "").status, 200);
    assert_eq!(call(s.port(), "GET", "/h/health", "").status, 200);
    let c = &state(s.port(), "h")["counters"];
    assert_eq!(c["health_checks"], 1, "DELETE cleared the counters");
    assert_eq!(c["requests"], 0, "probes are not provider calls");
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_paths_and_bad_provider_names_are_404() {
    let s = server();
    let long = format!("/{}/x", "a".repeat(33));
    for path in [
        "/",
        "/alpha",
        "/__control/x/y",
        "/__control/Bad",
        "/Alpha/x",
        "/al.pha/x",
        long.as_str(),
    ] {
        let r = call(s.port(), "GET", path, "");
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"]["status"], 404, "{path}");
    }
    assert_eq!(call(s.port(), "POST", "/__control", "").status, 405);
    assert_eq!(call(s.port(), "PATCH", "/__control/p", "{}").status, 405);
    let list = call(s.port(), "GET", "/__control", "").json();
    assert_eq!(list, json!({"providers": []}), "404s create no provider");
}

#[test]
fn query_strings_and_absolute_targets_route_like_paths() {
    let s = server();
    let v = call(s.port(), "GET", "/q/v1/models?limit=2", "").json();
    assert_eq!(v["path"], "/v1/models?limit=2");
    let v = call(s.port(), "GET", "http://mock/q/v1/models", "").json();
    assert_eq!(v["path"], "/v1/models");
    assert_eq!(state(s.port(), "q")["counters"]["requests"], 2);
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let s = server();
    let mut c = Conn::open(s.port());
    let a = c.request("POST", "/ka/one", &[], "{}");
    assert_eq!(a.header("connection"), Some("keep-alive"));
    let b = c.request("POST", "/ka/two", &[], "{}");
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.json()["path"], "/one");
    assert_eq!(b.json()["path"], "/two");

    // Pipelined: both requests in one write.
    let mut c = Conn::open(s.port());
    c.send(b"GET /ka/three HTTP/1.1\r\nHost: m\r\n\r\nGET /ka/four HTTP/1.1\r\nHost: m\r\n\r\n");
    let three = c.read_response(false).unwrap();
    let four = c.read_response(false).unwrap();
    assert_eq!(three.json()["path"], "/three");
    assert_eq!(four.json()["path"], "/four");
}

#[test]
fn connection_close_ends_the_connection_after_the_response() {
    let s = server();
    let mut c = Conn::open(s.port());
    let r = c.request("GET", "/cc/x", &[("Connection", "close")], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.rest().is_empty());

    // HTTP/1.0 without keep-alive closes too.
    let mut c = Conn::open(s.port());
    c.send(b"GET /cc/x HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 200);
    assert!(c.rest().is_empty());
}

#[test]
fn chunked_request_bodies_are_decoded() {
    let s = server();
    let mut c = Conn::open(s.port());
    c.send(
        b"POST /ch/v1/x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n8;ext=1\r\n, world!\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["usage"]["prompt_tokens"],
        4,
        "13 bytes -> 4 tokens"
    );
    // The connection stays usable after a chunked body.
    assert_eq!(c.request("GET", "/ch/y", &[], "").status, 200);

    let bad = raw(
        s.port(),
        b"POST /ch/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(status_of(&bad), 400);
    let bad = raw(
        s.port(),
        b"POST /ch/x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    );
    assert_eq!(status_of(&bad), 400);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let s = server();
    let mut c = Conn::open(s.port());
    c.send(
        b"POST /ex/v1/x HTTP/1.1\r\nHost: m\r\nContent-Length: 8\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.read_response(false).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"12345678");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["prompt_tokens"], 2);
}

#[test]
fn head_requests_get_headers_without_a_body() {
    let s = server();
    let mut c = Conn::open(s.port());
    let r = c.request("HEAD", "/hd/x", &[], "");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
    // Had a body been sent, this next response would be misread.
    let r = c.request("GET", "/hd/x", &[], "");
    assert_eq!(r.json()["provider"], "hd");
}

#[test]
fn server_survives_garbage_and_then_serves_normally() {
    let s = server();
    // Deterministic pseudo-random bytes (xorshift), several sizes.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in [1usize, 7, 64, 300, 4096, 20_000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let answer = raw(s.port(), &bytes);
        let st = status_of(&answer);
        assert!(
            answer.is_empty() || (400..500).contains(&st),
            "len {len}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    let cases: [(&[u8], u16); 8] = [
        (b"\x00\x01garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (
            b"POST /a/x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            413,
        ),
        (
            b"POST /a/x HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort",
            400,
        ),
        (b"GET /a/x HTTP/1.1\r\nHost: m\r\n", 400),
        (b"GET /a/x HTTP/9.9\r\n\r\n", 400),
        (b"GET /a/x HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    ];
    for (bytes, want) in cases {
        let answer = raw(s.port(), bytes);
        assert_eq!(
            status_of(&answer),
            want,
            "{:?} -> {:?}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&answer)
        );
    }
    let mut huge = b"GET /a/x HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    huge.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status_of(&raw(s.port(), &huge)), 431);
    let mut many = b"GET /a/x HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status_of(&raw(s.port(), &many)), 431);

    assert_eq!(call(s.port(), "GET", "/health", "").status, 200);
    assert_eq!(call(s.port(), "POST", "/a/v1/x", "{}").status, 200);
    assert_eq!(state(s.port(), "a")["counters"]["requests"], 1);
}

#[test]
fn connections_beyond_the_cap_get_503() {
    let s = mock_upstream::start_with_limit("127.0.0.1:0", 2).unwrap();
    let mut held: Vec<Conn> = (0..2).map(|_| Conn::open(s.port())).collect();
    for c in &mut held {
        assert_eq!(c.request("GET", "/cap/x", &[], "").status, 200);
    }
    let mut third = Conn::open(s.port());
    let r = third.read_response(false).expect("a 503 before close");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["status"], 503);

    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Conn::open(s.port());
        c.send(b"GET /cap/x HTTP/1.1\r\nConnection: close\r\n\r\n");
        match c.read_response(false).map(|r| r.status) {
            Some(200) => break,
            other => assert!(Instant::now() < deadline, "slot not freed: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_stops_accepting_connections() {
    let s = server();
    let port = s.port();
    assert_eq!(s.url(), format!("http://127.0.0.1:{port}"));
    assert_eq!(call(port, "GET", "/health", "").status, 200);
    s.shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_prints_its_port_first_and_serves_it() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args(["--port", "0", "--host", "127.0.0.1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: Option<u16> = line
        .trim_end()
        .strip_prefix("listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok());
    let health = port.map(|p| call(p, "GET", "/health", "").status);
    let _ = child.kill();
    let _ = child.wait();
    assert!(port.is_some_and(|p| p > 0), "first line {line:?}");
    assert_eq!(health, Some(200));

    let out = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
