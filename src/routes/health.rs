//! `GET /health`: liveness without touching any Durable Object (the benchmark baseline).

use gateway_core::config::Config;
use serde::Serialize;
use worker::Response;

use crate::error::AppResult;
use crate::http::json;

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    version: &'static str,
    environment: &'a str,
    timestamp: String,
}

/// Answers 200 with the version and the time.
pub fn health(cfg: &Config) -> AppResult<Response> {
    json(
        &Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            environment: &cfg.environment,
            timestamp: super::now().to_rfc3339(),
        },
        200,
    )
}
