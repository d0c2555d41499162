//! The OpenAI-compatible routes and virtual keys end to end: request shapes as the official
//! SDKs send them, streaming, model fallback, revocation, token limits under concurrency, spend.

use std::time::Duration;

use gateway_e2e::eventually;
use serde_json::{json, Value};

use crate::proxy::{configure, control, mock_counters};
use crate::shared;

/// Configures `group` with `n` fresh mock providers speaking OpenAI's API under `/v1`.
fn ai_group(group: &str, n: usize, extra: Value) -> Vec<String> {
    let providers: Vec<(&str, u32)> = (0..n).map(|_| (group, 1)).collect();
    configure(group, &providers, "/v1", extra)
}

/// Issues a key; returns (id, secret).
pub(crate) fn issue(spec: Value) -> (String, String) {
    let r = shared().rt.admin("POST", "/v1/keys", &spec);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let secret = v["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-eg-"), "{secret}");
    (v["id"].as_str().unwrap().to_string(), secret)
}

fn chat(secret: &str, body: &Value) -> gateway_e2e::Resp {
    let auth = format!("Bearer {secret}");
    shared().rt.send(
        "POST",
        "/v1/chat/completions",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

/// The JSON the `openai` Python SDK sends for `client.chat.completions.create(...)`.
fn sdk_body(model: &str, extra: Value) -> Value {
    let mut b = json!({"messages": [{"role": "user", "content": "Say hello"}], "model": model});
    if let (Some(o), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    b
}

#[test]
fn a_chat_completion_is_routed_by_model_answered_and_streamed() {
    let names = ai_group("ai_chat", 2, json!({}));
    let (_, secret) = issue(json!({"name": "chat-test", "models": ["e2e-chat"]}));
    let r = chat(&secret, &sdk_body("e2e-chat", json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    // The upstream got the target's model name (the mock answers with the model it was sent).
    assert_eq!(v["model"], "chat-upstream");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["path"], "/v1/chat/completions");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("hello from"));
    assert_eq!(r.header("x-gateway-model"), Some("chat-upstream"));
    assert_eq!(r.header("x-gateway-group"), Some("ai_chat"));

    // Streamed (the mock streams when told to): event-stream chunks through to [DONE].
    for n in &names {
        control(
            n,
            json!({"stream": true, "stream_chunks": 5, "stream_delay_ms": 10}),
        );
    }
    let r = chat(
        &secret,
        &sdk_body(
            "e2e-chat",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = r.text();
    assert!(
        text.contains("\"object\":\"chat.completion.chunk\""),
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[test]
fn embeddings_and_the_model_list() {
    ai_group("ai_embed", 1, json!({}));
    let (_, secret) = issue(json!({}));
    let auth = format!("Bearer {secret}");
    let r = shared().rt.send(
        "POST",
        "/v1/embeddings",
        &[("Authorization", &auth)],
        Some(br#"{"input":"hello","model":"e2e-embed"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/v1/embeddings");
    let list = shared().rt.get("/v1/models").json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"e2e-chat") && ids.contains(&"e2e-embed"),
        "{ids:?}"
    );
}

#[test]
fn errors_carry_openai_shape_beside_the_problem_fields() {
    let (_, secret) = issue(json!({"models": ["e2e-chat"]}));
    let r = chat(&secret, &sdk_body("no-such-model", json!({})));
    let p = r.assert_problem(404);
    assert_eq!(p["error"]["code"], "model_not_found");
    assert_eq!(p["error"]["type"], "invalid_request_error");
    assert_eq!(p["error"]["param"], "model");
    // No key, a key of the wrong shape, a key never issued.
    let body = sdk_body("e2e-chat", json!({})).to_string();
    let r = shared()
        .rt
        .send("POST", "/v1/chat/completions", &[], Some(body.as_bytes()));
    assert_eq!(
        r.assert_problem(401)["error"]["type"],
        "authentication_error"
    );
    let r = chat("sk-not-ours", &sdk_body("e2e-chat", json!({})));
    assert_eq!(r.assert_problem(401)["error"]["code"], "invalid-api-key");
    let r = chat(
        &format!("sk-eg-{}", "0".repeat(48)),
        &sdk_body("e2e-chat", json!({})),
    );
    assert_eq!(r.assert_problem(401)["error"]["code"], "invalid-api-key");
    // A model the key may not use.
    let r = chat(&secret, &sdk_body("e2e-embed", json!({})));
    assert_eq!(r.assert_problem(403)["error"]["code"], "model-not-allowed");
    // A body the SDK would never send.
    let r = chat(&secret, &json!({"model": "e2e-chat", "stream": "yes"}));
    assert_eq!(
        r.assert_problem(400)["error"]["type"],
        "invalid_request_error"
    );
}

#[test]
fn a_revoked_key_is_refused_on_its_next_request_and_reaches_no_provider() {
    let names = ai_group("ai_keys", 1, json!({}));
    let (id, secret) = issue(json!({"name": "revoke-me", "metadata": {"team": "e2e"}}));
    assert_eq!(chat(&secret, &sdk_body("e2e-keys", json!({}))).status, 200);
    let listed = shared().rt.admin("GET", "/v1/keys", &json!({})).json();
    let mine = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["metadata"]["team"], "e2e");
    assert!(
        mine.get("key").is_none() && mine.get("hash").is_none(),
        "the secret is never listed"
    );
    let r = shared()
        .rt
        .admin("DELETE", &format!("/v1/keys/{id}"), &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["revoked_at"].is_string());
    let before = mock_counters(&names[0])["requests"].as_u64().unwrap();
    // The bound is zero: no cache holds keys, the very next request is refused.
    let r = chat(&secret, &sdk_body("e2e-keys", json!({})));
    assert_eq!(r.assert_problem(401)["error"]["code"], "key-revoked");
    assert_eq!(
        mock_counters(&names[0])["requests"].as_u64().unwrap(),
        before
    );
}

#[test]
fn the_model_falls_back_to_the_next_group_when_the_first_is_down() {
    let down = ai_group("ai_down", 2, json!({}));
    for n in &down {
        control(n, json!({"failure_rate": 1.0, "status": 503}));
    }
    let up = ai_group("ai_up", 1, json!({}));
    let (_, secret) = issue(json!({}));
    let r = chat(&secret, &sdk_body("e2e-fallback", json!({})));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "fallback-model");
    assert_eq!(r.header("x-gateway-group"), Some("ai_up"));
    assert_eq!(r.header("x-gateway-attempts"), Some("3"));
    assert_eq!(mock_counters(&up[0])["requests"], 1);
    // Every group down: a 502 naming every attempt.
    control(&up[0], json!({"failure_rate": 1.0, "status": 500}));
    let r = chat(&secret, &sdk_body("e2e-fallback", json!({})));
    let p = r.assert_problem(502);
    assert_eq!(p["attempts"].as_array().unwrap().len(), 3, "{p}");
    assert_eq!(p["error"]["type"], "api_error");
}

#[test]
fn a_token_limit_holds_under_32_concurrent_clients() {
    let names = ai_group("ai_tok", 2, json!({}));
    for n in &names {
        control(n, json!({"completion_tokens": 10, "latency_ms": 20}));
    }
    // Each request: prompt ceil(len/4) tokens plus max_tokens 10 reserved; the mock reports the
    // same prompt tokens and 10 completion tokens, so the estimate is exact and the limit can
    // only be overshot by an under-estimate (there is none here): admitted tokens <= limit.
    let body = sdk_body("e2e-tokens", json!({"max_tokens": 10}));
    let per_request = (body.to_string().len() as u64).div_ceil(4) + 10;
    let limit = per_request * 20 + per_request / 2;
    let (id, secret) = issue(json!({"tokens_per_day": limit}));
    let results: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| chat(&secret, &body).status)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let ok = results.iter().filter(|s| **s == 200).count() as u64;
    let refused = results.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(ok + refused, 96, "{results:?}");
    assert_eq!(
        ok, 20,
        "exactly the 20 requests that fit are admitted: {results:?}"
    );
    // Settled usage: exactly the tokens of the admitted requests.
    let v = eventually(Duration::from_secs(10), "the settlements", || {
        let k = shared()
            .rt
            .admin("GET", &format!("/v1/keys/{id}"), &json!({}))
            .json();
        (k["usage"]["in_flight"] == 0).then_some(k)
    });
    assert_eq!(v["usage"]["tokens"].as_u64(), Some(ok * per_request));
    assert!(v["usage"]["tokens_day"].as_u64().unwrap() <= limit);
    let r = chat(&secret, &body);
    let p = r.assert_problem(429);
    assert_eq!(p["error"]["code"], "token-limit");
    assert!(r.header("retry-after").is_some());
    assert!(
        r.header("ratelimit-policy")
            .unwrap()
            .contains("\"tokens-day\";q="),
        "{:?}",
        r.header("ratelimit-policy")
    );
}

#[test]
fn spend_per_key_is_the_sum_of_its_request_costs_and_a_budget_stops_it() {
    // 100 per request + 1000 per 1k output tokens x 16 = 116 micro-USD per answer.
    ai_group(
        "ai_spend",
        1,
        json!({"cost_per_request_micro_usd": 100, "cost_per_1k_output_micro_usd": 1000}),
    );
    let (id, secret) = issue(json!({"budget_day_micro_usd": 500}));
    let mut ok = 0u64;
    for _ in 0..8 {
        let r = chat(&secret, &sdk_body("e2e-spend", json!({})));
        if r.status == 200 {
            ok += 1;
        } else {
            assert_eq!(r.assert_problem(429)["error"]["code"], "budget-exceeded");
        }
        // Settlements land off the response path; wait for each so the budget check is exact.
        eventually(Duration::from_secs(10), "the settlement", || {
            let k = shared()
                .rt
                .admin("GET", &format!("/v1/keys/{id}"), &json!({}))
                .json();
            (k["usage"]["in_flight"] == 0).then_some(())
        });
    }
    assert_eq!(
        ok, 5,
        "500 micro-USD buys 5 answers of 116 (the 5th crosses the budget)"
    );
    let k = shared()
        .rt
        .admin("GET", &format!("/v1/keys/{id}"), &json!({}))
        .json();
    assert_eq!(k["usage"]["spent_micro_usd"].as_u64(), Some(116 * ok));
    assert_eq!(k["usage"]["spend_day_micro_usd"].as_u64(), Some(116 * ok));
}

#[test]
fn spend_per_key_and_model_reaches_metrics_and_prometheus_exactly() {
    // 5000 per request + 500 per 1k output tokens x 16 = 5008 micro-USD per answer.
    ai_group(
        "ai_metrics",
        1,
        json!({"cost_per_request_micro_usd": 5000, "cost_per_1k_output_micro_usd": 500}),
    );
    let (id, secret) = issue(json!({"budget_day_micro_usd": 1_000_000}));
    const N: u64 = 4;
    for _ in 0..N {
        let r = chat(&secret, &sdk_body("e2e-metrics", json!({})));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let want = N * 5008;
    let rt = &shared().rt;
    // Forcing root runs between reads: whether a window is merged or still live in its shard,
    // it counts once.
    let (key, model) = eventually(Duration::from_secs(20), "the spend in /metrics", || {
        rt.admin("POST", "/v1/rollup/run", &json!({}));
        let m = rt.get("/metrics?period=1h").json();
        gateway_e2e::assert_metrics_schema(&m);
        let find = |list: &str, field: &str, name: &str| {
            m["spend"][list]
                .as_array()
                .and_then(|a| a.iter().find(|e| e[field] == name).cloned())
        };
        let key = find("keys", "key", &id)?;
        let model = find("models", "model", "e2e-metrics")?;
        (key["cost_micro_usd"].as_u64() == Some(want)
            && model["cost_micro_usd"].as_u64() == Some(want))
        .then_some((key, model))
    });
    assert_eq!(key["requests"].as_u64(), Some(N));
    assert_eq!(
        key["output_tokens"].as_u64(),
        Some(16 * N),
        "the mock's 16 per answer"
    );
    assert!(key["input_tokens"].as_u64().unwrap() >= N, "{key}");
    assert_eq!(key["budget_day_micro_usd"].as_u64(), Some(1_000_000));
    let pct = key["budget_used_day_pct"].as_f64().unwrap();
    assert!((pct - want as f64 * 100.0 / 1e6).abs() < 0.01, "{key}");
    assert_eq!(model["requests"].as_u64(), Some(N));
    assert_eq!(model["output_tokens"].as_u64(), Some(16 * N));
    // Another run merges nothing twice.
    rt.admin("POST", "/v1/rollup/run", &json!({}));
    let again = rt.get("/metrics?period=1h").json();
    let cost = again["spend"]["keys"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["key"] == id.as_str()))
        .map(|e| e["cost_micro_usd"].clone());
    assert_eq!(cost, Some(json!(want)));
    let prom = rt.get("/metrics?format=prometheus").text();
    assert!(
        prom.contains(&format!(
            "edge_gateway_key_spend_micro_usd{{key=\"{id}\",period=\"1h\"}} {want}\n"
        )),
        "{prom}"
    );
    assert!(prom.contains(&format!(
        "edge_gateway_key_tokens{{key=\"{id}\",kind=\"output\",period=\"1h\"}} {}\n",
        16 * N
    )));
    assert!(prom.contains(&format!(
        "edge_gateway_model_spend_micro_usd{{model=\"e2e-metrics\",period=\"1h\"}} {want}\n"
    )));
}
