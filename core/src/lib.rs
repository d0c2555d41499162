//! # gateway-core
//!
//! All of Edge Gateway's logic, free of I/O: no clock, no randomness, no network, no storage.
//! Every time-dependent function takes `now` ([`time::UnixMillis`]); alarm-driven components expose
//! a `next_deadline()` and an `on_alarm(now)`; the Durable Object adapters in the `edge-gateway`
//! crate read the clock once per request, call in here once, persist what changed and answer.
//!
//! ## Layout
//! - [`time`]: the `UnixMillis` newtype and RFC 3339 formatting.
//! - [`shard`]: the stable key -> Durable Object name function (pinned by tests).
//! - [`route`]: the public HTTP surface as a `Route` enum, parsed from method + path.
//! - [`error`] / [`problem`]: one error type, mapped to RFC 9457 problem+json in one place.
//! - [`auth`]: constant-time admin bearer-token check.
//! - [`validate`]: key and name validation for every public input.
//! - [`config`]: typed configuration parsed from wrangler `[vars]`.
//! - [`migrate`]: which numbered SQL migrations a Durable Object still has to apply.
//! - [`protocol`]: the versioned worker <-> Durable Object messages (postcard).
//! - [`rate_limit`], [`cache`], [`balancer`], [`experiment`], [`observe`]: one per Durable Object.
//! - [`sketch`]: the mergeable latency sketch (balancer health and observe aggregates).
//! - [`alarm`]: the shared "when should this object wake up next" rule.

pub mod ai;
pub mod alarm;
pub mod auth;
pub mod balancer;
pub mod cache;
pub mod config;
pub mod error;
pub mod experiment;
pub mod keys;
pub mod migrate;
pub mod observe;
pub mod problem;
pub mod protocol;
pub mod proxy;
pub mod rate_limit;
pub mod route;
pub mod shard;
pub mod sketch;
pub mod time;
pub mod validate;
pub mod views;

pub use error::GatewayError;
pub use time::UnixMillis;
