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

mod control;
mod http;
mod provider;
mod routes;
mod server;
mod sse;

pub use provider::{Behaviour, Counters};
pub use server::{start, start_with_limit, Server, MAX_CONNECTIONS};
