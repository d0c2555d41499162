//! `/v1/providers`: live status, configuration (admin), pick and outcome reports.

use futures::future::join_all;
use gateway_core::balancer::{Outcome, ProviderSpec, Strategy};
use gateway_core::config::Config;
use gateway_core::GatewayError;
use serde::Deserialize;
use worker::{Env, Request, Response};

use crate::clients::Providers;
use crate::error::AppResult;
use crate::http::{json, parse_json, read_body};

/// `GET /v1/providers`: every configured group's live state, fetched concurrently.
pub async fn list(env: &Env, cfg: &Config) -> AppResult<Response> {
    let client = Providers::new(env);
    let calls = cfg.providers.keys().map(|g| client.status(g));
    let mut groups = Vec::new();
    for r in join_all(calls).await {
        groups.push(r?);
    }
    json(&serde_json::json!({ "groups": groups }), 200)
}

/// `GET /v1/providers/{group}`.
pub async fn status(env: &Env, group: &str) -> AppResult<Response> {
    json(&Providers::new(env).status(group).await?, 200)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigureBody {
    providers: Vec<ProviderSpec>,
    #[serde(default)]
    strategy: Strategy,
}

/// `PUT /v1/providers/{group}` (admin): replaces the group's providers.
pub async fn configure(
    mut req: Request,
    env: &Env,
    cfg: &Config,
    group: &str,
) -> AppResult<Response> {
    let body: ConfigureBody = parse_json(&read_body(&mut req, cfg.max_body_bytes).await?)?;
    gateway_core::balancer::validate_group(&body.providers)?;
    let providers = Providers::new(env)
        .configure(group, body.providers, body.strategy)
        .await?;
    json(
        &serde_json::json!({ "group": group, "providers": providers }),
        200,
    )
}

/// `POST /v1/providers/{group}/pick`.
pub async fn pick(env: &Env, group: &str) -> AppResult<Response> {
    json(&Providers::new(env).pick(group).await?, 200)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportBody {
    provider: String,
    ok: bool,
    latency_ms: u32,
    #[serde(default)]
    retry_after_ms: Option<u64>,
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

/// `POST /v1/providers/{group}/report`: `{"provider":"a","ok":true,"latency_ms":12}`.
pub async fn report(mut req: Request, env: &Env, cfg: &Config, group: &str) -> AppResult<Response> {
    let body: ReportBody = parse_json(&read_body(&mut req, cfg.max_body_bytes.min(4096)).await?)?;
    gateway_core::validate::name("provider", &body.provider)?;
    if body.latency_ms > 600_000 {
        return Err(GatewayError::bad_request(
            "invalid-report",
            "latency_ms must be at most 600000",
        )
        .into());
    }
    let outcome = Outcome {
        ok: body.ok,
        latency_ms: body.latency_ms,
        retry_after_ms: body.retry_after_ms,
        input_tokens: body.input_tokens,
        output_tokens: body.output_tokens,
        error: None,
    };
    Providers::new(env)
        .report(group, body.provider, outcome)
        .await?;
    json(&serde_json::json!({ "recorded": true }), 200)
}
