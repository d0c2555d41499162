//! End-to-end harness: the built worker on the real local runtime (`wrangler dev`, i.e. workerd
//! with local SQLite-backed Durable Objects), the in-process mock upstream, and a small HTTP client.
//!
//! - [`Runtime::start`] picks a free port, starts `wrangler dev` with a persist folder (on tmpfs
//!   when `/dev/shm` exists) and `--var` overrides, and waits for `GET /health` with a deadline.
//! - The runtime runs under a tiny shell supervisor that owns a process group and kills it when
//!   its stdin closes, so wrangler and workerd die with the test process even if it panics or is
//!   killed. [`Runtime::stop`] closes that pipe and waits.
//! - [`Runtime::restart`] stops and starts again on the same persist folder.
//! - The worker must already be built (`make build`); the harness sets `EG_PREBUILT=1` so
//!   wrangler's `[build]` step does not rebuild it for every start.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use mock_upstream;

/// The API key the test runtime holds for providers configured with `"secret":"MOCK_PROVIDER_KEY"`.
pub const MOCK_PROVIDER_KEY: &str = "sk-e2e-secret-value-9f8e7d";

/// Admin token the test runtimes are started with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh persist folder, on tmpfs where available (disk fsyncs make every write slow).
pub fn temp_dir(tag: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "edge-gateway-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A running `wrangler dev`.
pub struct Runtime {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its port.
    pub port: u16,
    persist: PathBuf,
    vars: Vec<(String, String)>,
    log: PathBuf,
    child: Option<(Child, ChildStdin)>,
}

impl Runtime {
    /// Starts a runtime on `persist` with the given `--var` overrides (plus the admin token).
    pub fn start(persist: &Path, vars: &[(&str, String)]) -> Runtime {
        let mut rt = Runtime {
            base: String::new(),
            port: 0,
            persist: persist.to_path_buf(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log: persist.with_extension("log"),
            child: None,
        };
        rt.spawn();
        rt
    }

    fn spawn(&mut self) {
        let root = root();
        let port = free_port();
        let inspector = free_port();
        let wrangler = root.join("node_modules/.bin/wrangler");
        assert!(
            wrangler.exists(),
            "run `make setup` first: {} is missing",
            wrangler.display()
        );
        assert!(
            root.join("build/index.js").exists(),
            "run `make build` first"
        );
        let mut args: Vec<String> = vec![
            wrangler.display().to_string(),
            "dev".into(),
            "--ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--inspector-port".into(),
            inspector.to_string(),
            "--persist-to".into(),
            self.persist.display().to_string(),
            "--show-interactive-dev-session=false".into(),
            "--log-level".into(),
            "warn".into(),
            "--var".into(),
            format!("ADMIN_TOKEN:{ADMIN_TOKEN}"),
        ];
        for (k, v) in &self.vars {
            args.push("--var".into());
            args.push(format!("{k}:{v}"));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open runtime log");
        let log2 = log.try_clone().expect("clone log");
        // The supervisor: run wrangler in the background, wait for stdin to close, kill the group.
        let script = r#""$@" & child=$!; read -r _; kill -TERM -- -$$ 2>/dev/null; kill -TERM "$child" 2>/dev/null; wait"#;
        let bin_path = format!(
            "{}:{}",
            root.join("node_modules/.bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .arg("supervisor")
            .args(&args)
            .current_dir(&root)
            .env("PATH", bin_path)
            .env("EG_PREBUILT", "1")
            .env("WRANGLER_SEND_METRICS", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("spawn wrangler dev");
        let stdin = child.stdin.take().expect("stdin");
        self.port = port;
        self.base = format!("http://127.0.0.1:{port}");
        self.child = Some((child, stdin));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = ureq::get(&format!("{}/health", self.base))
                .timeout(Duration::from_secs(2))
                .call()
            {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some((child, _)) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "wrangler dev exited ({status}) before it was ready:\n{}",
                        self.log_tail()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "runtime not ready within 90 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last 4 KiB of the runtime's log.
    pub fn log_tail(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = bytes.len().saturating_sub(4096);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Stops the runtime and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }

    /// Stops and starts again on the same persist folder (a new port).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Full URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and returns the response whatever its status.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        send(method, &self.url(path), headers, body)
    }

    /// GET.
    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], None)
    }

    /// POST a JSON value.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Resp {
        let b = body.to_string();
        self.send(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(b.as_bytes()),
        )
    }

    /// A request with the admin token.
    pub fn admin(&self, method: &str, path: &str, body: &serde_json::Value) -> Resp {
        let b = body.to_string();
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(
            method,
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(b.as_bytes()),
        )
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers (lower-cased names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text()))
    }

    /// Asserts this is an RFC 9457 problem with `status` and returns its JSON.
    pub fn assert_problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:edge-gateway:problem:")));
        assert!(p["title"].is_string() && p["detail"].is_string());
        assert_eq!(
            p["requestId"].as_str(),
            self.header("x-request-id"),
            "problem carries the request id"
        );
        p
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// Sends a request to an absolute URL and returns the response whatever its status.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut req = agent().request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url} failed: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| {
            resp.header(&n)
                .map(|v| (n.to_ascii_lowercase(), v.to_string()))
        })
        .collect();
    let mut body = Vec::new();
    let _ = resp.into_reader().take(16 << 20).read_to_end(&mut body);
    Resp {
        status,
        headers,
        body,
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `PROVIDERS` variable for the mock upstream at `base` (groups `demo` and `e2e`).
pub fn providers_var(base: &str) -> String {
    serde_json::json!({
        "demo": [
            {"name": "alpha", "url": format!("{base}/alpha"), "weight": 3},
            {"name": "beta", "url": format!("{base}/beta"), "weight": 1},
            {"name": "gamma", "url": format!("{base}/gamma"), "weight": 1}
        ]
    })
    .to_string()
}

/// The models of the OpenAI-compatible suite: each test configures its own groups.
pub const AI_MODELS: &str = r#"{"e2e-chat":[{"group":"ai_chat","model":"chat-upstream"}],"e2e-embed":[{"group":"ai_embed"}],"e2e-fallback":[{"group":"ai_down","model":"down-model"},{"group":"ai_up","model":"fallback-model"}],"e2e-tokens":[{"group":"ai_tok"}],"e2e-keys":[{"group":"ai_keys"}],"e2e-spend":[{"group":"ai_spend"}],"e2e-sdk":[{"group":"ai_sdk","model":"sdk-upstream"}],"e2e-metrics":[{"group":"ai_metrics"}]}"#;

/// `--var` overrides used by the suites: short alarm intervals, small caches, test policies.
pub fn test_vars(upstream: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PROVIDERS", providers_var(upstream)),
        ("RATE_LIMIT_GC_INTERVAL_MS", "1000".into()),
        ("CACHE_SWEEP_INTERVAL_MS", "1000".into()),
        ("PROVIDER_PROBE_INTERVAL_MS", "1000".into()),
        ("EXPERIMENT_ANALYSIS_INTERVAL_MS", "1000".into()),
        ("ROLLUP_INTERVAL_MS", "1000".into()),
        ("MAX_BODY_BYTES", "65536".into()),
        ("MOCK_PROVIDER_KEY", MOCK_PROVIDER_KEY.into()),
        (
            "RATE_LIMIT_POLICIES",
            r#"{"default":{"capacity":100000,"refill":100000,"period_ms":60000},"tight":{"capacity":5,"refill":1,"period_ms":3600000},"fast":{"capacity":2,"refill":10,"period_ms":1000}}"#.into(),
        ),
        ("AI_MODELS", AI_MODELS.into()),
        (
            "EXPERIMENTS",
            r#"{"title-search-ttl":{"primary":"cache_hit","guardrails":["latency_ms","error"],"target":{"group":"demo","path_prefix":"/title"},"variants":[{"name":"control","weight":50,"params":{"cache_ttl_s":86400}},{"name":"treatment","weight":50,"params":{"cache_ttl_s":172800}}]}}"#.into(),
        ),
    ]
}

/// Parses a `RateLimit` / `RateLimit-Policy` field value as an RFC 9651 structured-field List
/// (panics when it does not parse) and returns, per list member, its name and integer params.
pub fn parse_ratelimit_field(
    value: &str,
) -> Vec<(String, std::collections::BTreeMap<String, i64>)> {
    let list: sfv::List = sfv::Parser::new(value)
        .parse_list()
        .unwrap_or_else(|e| panic!("{value:?} is not a structured-field list: {e}"));
    list.into_iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let name = item
                    .bare_item
                    .as_string()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| panic!("{value:?}: member is not a string"));
                let params = item
                    .params
                    .iter()
                    .map(|(k, v)| {
                        let n = v.as_integer().unwrap_or_else(|| {
                            panic!("{value:?}: param {} not an integer", k.as_str())
                        });
                        (k.as_str().to_string(), i64::from(n))
                    })
                    .collect();
                (name, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("{value:?}: unexpected inner list"),
        })
        .collect()
}

/// A local webhook receiver on 127.0.0.1: records every POSTed JSON body. The first
/// `fail_first` requests are answered 503 (to exercise retries), the rest 200.
pub struct Webhook {
    /// Its URL.
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    attempts: std::sync::Arc<AtomicU32>,
}

impl Webhook {
    /// Starts the receiver on a free port.
    pub fn start(fail_first: u32) -> Webhook {
        use std::io::Write;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook receiver");
        let url = format!(
            "http://127.0.0.1:{}/hook",
            listener.local_addr().expect("local addr").port()
        );
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let attempts = std::sync::Arc::new(AtomicU32::new(0));
        let (rx, at) = (received.clone(), attempts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then exactly Content-Length bytes of body.
                let (head_end, length) = loop {
                    let Ok(n) = s.read(&mut chunk) else {
                        break (None, 0);
                    };
                    if n == 0 {
                        break (None, 0);
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (Some(i + 4), length);
                    }
                };
                let Some(start) = head_end else { continue };
                while buf.len() < start + length {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let n = at.fetch_add(1, Ordering::SeqCst);
                let status = if n < fail_first {
                    "503 Service Unavailable"
                } else {
                    if let Ok(v) =
                        serde_json::from_slice(&buf[start..(start + length).min(buf.len())])
                    {
                        rx.lock().expect("webhook lock").push(v);
                    }
                    "200 OK"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Webhook {
            url,
            received,
            attempts,
        }
    }

    /// The bodies accepted so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("webhook lock").clone()
    }

    /// Requests seen so far, including those answered 503.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }
}

/// Validates a `/metrics` JSON answer against `docs/metrics.schema.json`; panics listing every
/// violation.
pub fn assert_metrics_schema(doc: &serde_json::Value) {
    let text = std::fs::read_to_string(root().join("docs/metrics.schema.json"))
        .expect("read docs/metrics.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "schema violations: {errors:#?}\n{doc}");
}
