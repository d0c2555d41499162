//! A fake upstream provider server: named providers as path prefixes on one port, each with
//! behaviour (latency, failure status, failure rate, 429 + Retry-After, dropped connections)
//! switchable at run time over HTTP (`PUT /__control/{provider}`). See README.md.
//!
//! Failure pattern is deterministic: with failure rate `r`, the n-th call since the rate was set
//! (n = 0, 1, ...) fails iff `floor((n+1)*r) > floor(n*r)`; r = 0.5 fails every second call.
//! Thread per connection (capped), HTTP/1.1 keep-alive, `Content-Length` bodies only (chunked
//! request bodies get 411). Bad input gets a 400 and a closed connection; nothing panics.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const MAX_CONNECTIONS: usize = 512;
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 8 << 20;

/// A provider's behaviour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Behaviour {
    /// Delay before answering, ms.
    pub latency_ms: u64,
    /// Status of failing responses.
    pub status: u16,
    /// Fraction of calls that fail, 0..=1 (deterministic pattern).
    pub failure_rate: f64,
    /// Fail by closing the connection without a response.
    pub drop_connection: bool,
    /// `Retry-After` seconds on failures (always sent with 429).
    pub retry_after_s: Option<u64>,
    /// Completion tokens reported in `usage`.
    pub completion_tokens: u32,
    /// Replaces the success body verbatim.
    pub body: Option<String>,
    /// Extra response headers on success.
    pub headers: Option<BTreeMap<String, String>>,
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
        }
    }
}

/// Counters of one provider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Provider calls.
    pub requests: u64,
    /// Successful calls.
    pub successes: u64,
    /// Failed calls answered with the failure status.
    pub failures: u64,
    /// Failed calls whose connection was dropped.
    pub dropped: u64,
    /// Health probes.
    pub health_checks: u64,
    /// Provider calls that carried an `Authorization` header.
    pub authorized: u64,
    /// The last `Authorization` value seen (so tests can check credentials are sent).
    pub last_authorization: Option<String>,
}

#[derive(Debug, Default)]
struct Provider {
    behaviour: Behaviour,
    counters: Counters,
    /// Calls since the failure rate was last set (drives the deterministic pattern).
    pattern_n: u64,
}

/// The control-plane update: every field optional, unknown fields refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    latency_ms: Option<u64>,
    status: Option<u16>,
    failure_rate: Option<f64>,
    drop_connection: Option<bool>,
    retry_after_s: Option<Option<u64>>,
    completion_tokens: Option<u32>,
    #[serde(default, deserialize_with = "explicit")]
    body: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit")]
    headers: Option<Option<BTreeMap<String, String>>>,
}

fn explicit<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

type Providers = Arc<Mutex<BTreeMap<String, Provider>>>;

/// A running server. Stops accepting when dropped or shut down.
pub struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Blocks until the server stops (used by the binary).
    pub fn join(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }

    /// Stops accepting new connections (best effort).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the server on `addr` (e.g. `127.0.0.1:0` for a free port).
pub fn start(addr: &str) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    let port = listener.local_addr()?.port();
    let stop = Arc::new(AtomicBool::new(false));
    let providers: Providers = Arc::default();
    let active = Arc::new(AtomicUsize::new(0));
    let stop2 = stop.clone();
    let accept = std::thread::Builder::new()
        .name("mock-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    let mut s = stream;
                    let _ = write_response(
                        &mut s,
                        503,
                        &[],
                        br#"{"error":"too many connections"}"#,
                        true,
                    );
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (providers, active) = (providers.clone(), active.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("mock-conn".into())
                        .spawn(move || {
                            serve_connection(stream, &providers);
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    // Could not spawn: the stream was moved into the failed closure and is closed.
                }
            }
        })?;
    Ok(Server {
        port,
        stop,
        accept: Some(accept),
    })
}

struct HttpRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

enum ReadError {
    Closed,
    Bad(u16, &'static str),
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Result<HttpRequest, ReadError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_HEAD as u64)
            .read_until(b'\n', &mut line)
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(if head.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Bad(400, "truncated request")
            });
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(ReadError::Bad(431, "request head too large"));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.len() == line.len() {
                head.clear(); // tolerate blank lines between requests
                continue;
            }
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ReadError::Bad(400, "malformed request")),
    }
    let method = req.method.unwrap_or("GET").to_string();
    let path = req.path.unwrap_or("/").to_string();
    let version = req.version.unwrap_or(1);
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Err(ReadError::Bad(
            411,
            "chunked request bodies are not supported; send Content-Length",
        ));
    }
    let len = match get("content-length") {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| ReadError::Bad(400, "bad Content-Length"))?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err(ReadError::Bad(413, "body too large"));
    }
    let mut body = vec![0; len];
    reader
        .read_exact(&mut body)
        .map_err(|_| ReadError::Bad(400, "truncated body"))?;
    let conn = get("connection").map(|v| v.to_ascii_lowercase());
    let close =
        conn.as_deref() == Some("close") || (version == 0 && conn.as_deref() != Some("keep-alive"));
    Ok(HttpRequest {
        method,
        path,
        headers,
        body,
        close,
    })
}

fn write_response(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        out.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    // One write: head and body in separate segments would meet Nagle + delayed ACK (40 ms).
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn serve_connection(stream: TcpStream, providers: &Providers) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader) {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(status, msg)) => {
                let body = json!({ "error": { "message": msg } }).to_string();
                let _ = write_response(&mut writer, status, &[], body.as_bytes(), true);
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        };
        match handle(&req, providers) {
            Answer::Respond {
                status,
                headers,
                body,
            } => {
                if write_response(&mut writer, status, &headers, &body, req.close).is_err()
                    || req.close
                {
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                }
            }
            Answer::Drop => {
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

enum Answer {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Drop,
}

fn json_answer(status: u16, v: Value) -> Answer {
    Answer::Respond {
        status,
        headers: vec![],
        body: v.to_string().into_bytes(),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn provider_json(name: &str, p: &Provider) -> Value {
    json!({ "name": name, "config": p.behaviour, "counters": p.counters })
}

fn handle(req: &HttpRequest, providers: &Providers) -> Answer {
    let path = req.path.split('?').next().unwrap_or("/");
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let Ok(mut map) = providers.lock() else {
        return json_answer(500, json!({"error": {"message": "state lock poisoned"}}));
    };
    match segs.as_slice() {
        ["health"] => json_answer(200, json!({"ok": true})),
        ["__control"] if req.method == "GET" => {
            let all: Vec<Value> = map.iter().map(|(n, p)| provider_json(n, p)).collect();
            json_answer(200, json!({ "providers": all }))
        }
        ["__control", "reset"] if req.method == "POST" => {
            map.clear();
            json_answer(200, json!({"reset": true}))
        }
        ["__control", name] if valid_name(name) => match req.method.as_str() {
            "GET" => json_answer(
                200,
                provider_json(name, map.entry(name.to_string()).or_default()),
            ),
            "DELETE" => {
                map.insert(name.to_string(), Provider::default());
                json_answer(200, provider_json(name, &map[*name]))
            }
            "PUT" => {
                let update: Update = match serde_json::from_slice(&req.body) {
                    Ok(u) => u,
                    Err(e) => {
                        return json_answer(
                            400,
                            json!({"error": {"message": format!("invalid control JSON: {e}")}}),
                        )
                    }
                };
                let p = map.entry(name.to_string()).or_default();
                let mut b = p.behaviour.clone();
                if let Some(v) = update.latency_ms {
                    if v > 60_000 {
                        return json_answer(
                            400,
                            json!({"error": {"message": "latency_ms must be <= 60000"}}),
                        );
                    }
                    b.latency_ms = v;
                }
                if let Some(v) = update.status {
                    if !(100..=599).contains(&v) {
                        return json_answer(
                            400,
                            json!({"error": {"message": "status must be 100..=599"}}),
                        );
                    }
                    b.status = v;
                }
                let rate_changed = update.failure_rate.is_some();
                if let Some(v) = update.failure_rate {
                    if !(0.0..=1.0).contains(&v) {
                        return json_answer(
                            400,
                            json!({"error": {"message": "failure_rate must be in [0,1]"}}),
                        );
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
                    b.headers = v;
                }
                p.behaviour = b;
                if rate_changed {
                    p.pattern_n = 0;
                }
                json_answer(200, provider_json(name, p))
            }
            _ => json_answer(405, json!({"error": {"message": "use GET, PUT or DELETE"}})),
        },
        [name, "health"] if valid_name(name) && *name != "__control" => {
            let p = map.entry(name.to_string()).or_default();
            p.counters.health_checks += 1;
            let b = p.behaviour.clone();
            drop(map);
            std::thread::sleep(Duration::from_millis(b.latency_ms));
            let healthy = b.failure_rate == 0.0 && !b.drop_connection;
            if healthy {
                json_answer(200, json!({"ok": true, "provider": name}))
            } else if b.drop_connection {
                Answer::Drop
            } else {
                failure(name, &b)
            }
        }
        [name, ..] if valid_name(name) && segs.len() >= 2 && *name != "__control" => {
            let p = map.entry(name.to_string()).or_default();
            p.counters.requests += 1;
            if let Some((_, v)) = req.headers.iter().find(|(k, _)| k == "authorization") {
                p.counters.authorized += 1;
                p.counters.last_authorization = Some(v.clone());
            }
            let n = p.pattern_n;
            p.pattern_n += 1;
            let r = p.behaviour.failure_rate;
            let fails = ((n + 1) as f64 * r).floor() > (n as f64 * r).floor();
            let b = p.behaviour.clone();
            let id = p.counters.requests;
            if fails {
                if b.drop_connection {
                    p.counters.dropped += 1;
                } else {
                    p.counters.failures += 1;
                }
            } else {
                p.counters.successes += 1;
            }
            drop(map);
            std::thread::sleep(Duration::from_millis(b.latency_ms));
            if fails {
                return if b.drop_connection {
                    Answer::Drop
                } else {
                    failure(name, &b)
                };
            }
            success(name, id, req, &b)
        }
        _ => json_answer(
            404,
            json!({"error": {"message": format!("nothing at {path}")}}),
        ),
    }
}

fn failure(name: &str, b: &Behaviour) -> Answer {
    let mut headers = vec![];
    if b.status == 429 || b.retry_after_s.is_some() {
        headers.push((
            "Retry-After".to_string(),
            b.retry_after_s.unwrap_or(1).to_string(),
        ));
    }
    headers.push(("X-Mock-Provider".to_string(), name.to_string()));
    let body =
        json!({"error": {"message": "injected failure", "provider": name, "status": b.status}});
    Answer::Respond {
        status: b.status,
        headers,
        body: body.to_string().into_bytes(),
    }
}

fn success(name: &str, id: u64, req: &HttpRequest, b: &Behaviour) -> Answer {
    let mut headers = vec![("X-Mock-Provider".to_string(), name.to_string())];
    if let Some((_, v)) = req.headers.iter().find(|(k, _)| k == "x-request-id") {
        headers.push(("X-Request-Id".to_string(), v.clone()));
    }
    if let Some(extra) = &b.headers {
        headers.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let body = match &b.body {
        Some(text) => text.clone().into_bytes(),
        None => {
            let prompt = (req.body.len() as u64).div_ceil(4).max(1);
            let completion = u64::from(b.completion_tokens);
            let path = req
                .path
                .splitn(3, '/')
                .nth(2)
                .map(|p| format!("/{p}"))
                .unwrap_or_default();
            json!({
                "id": format!("mock-{name}-{id}"),
                "object": "chat.completion",
                "provider": name,
                "model": "mock-1",
                "method": req.method,
                "path": path,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {name}")}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            })
            .to_string()
            .into_bytes()
        }
    };
    Answer::Respond {
        status: 200,
        headers,
        body,
    }
}
