//! End-to-end suite: ONE shared local runtime (wrangler dev + workerd + SQLite Durable Objects)
//! and one mock upstream for every test in this binary, like workers-rs's own suite. Each test
//! uses its own keys, so tests run in parallel. Restart tests live in `tests/restart/`.

mod aggregator;
mod ai;
mod bad_input;
mod cache;
mod experiments;
mod front;
mod providers;
mod proxy;
mod rate_limiter;
mod sdk;

use std::sync::OnceLock;

use gateway_e2e::{temp_dir, test_vars, Runtime};

/// The shared runtime and mock upstream.
pub struct Shared {
    pub rt: Runtime,
    pub upstream: gateway_e2e::mock_upstream::Server,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The shared environment, started on first use.
pub fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let upstream =
            gateway_e2e::mock_upstream::start("127.0.0.1:0").expect("start mock upstream");
        let rt = Runtime::start(&temp_dir("e2e"), &test_vars(&upstream.url()));
        Shared { rt, upstream }
    })
}

/// A key unique to this test run and call site.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
