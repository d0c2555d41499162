//! The proxy path end to end: rate limit, cache, balancing, failover, against the mock upstream.

use std::time::Duration;

use gateway_e2e::{eventually, send};
use serde_json::{json, Value};

use crate::{shared, unique};

/// A fresh group of fresh mock providers; returns (group, provider names).
pub(crate) fn group(providers: &[(&str, u32)], extra: Value) -> (String, Vec<String>) {
    let g = unique("pg").replace('-', "_");
    let names = configure(&g, providers, "", extra);
    (g, names)
}

/// Configures `group` with fresh mock providers (`(prefix, weight)`, URL
/// `{mock}/{name}{suffix}`, `extra` fields on each); returns their names.
pub(crate) fn configure(
    group: &str,
    providers: &[(&str, u32)],
    suffix: &str,
    extra: Value,
) -> Vec<String> {
    let s = shared();
    let names: Vec<String> = providers
        .iter()
        .map(|(n, _)| format!("{n}_{}", unique("").replace('-', "")))
        .collect();
    let list: Vec<Value> = providers
        .iter()
        .zip(&names)
        .map(|((_, w), name)| {
            let url = format!("{}/{name}{suffix}", s.upstream.url());
            let mut p = json!({"name": name, "url": url, "weight": w});
            if let (Some(obj), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    obj.insert(k.clone(), v.clone());
                }
            }
            p
        })
        .collect();
    let r = s.rt.admin(
        "PUT",
        &format!("/v1/providers/{group}"),
        &json!({ "providers": list }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    names
}

pub(crate) fn control(name: &str, body: Value) {
    let url = format!("{}/__control/{name}", shared().upstream.url());
    let r = send("PUT", &url, &[], Some(body.to_string().as_bytes()));
    assert_eq!(r.status, 200, "{}", r.text());
}

pub(crate) fn mock_counters(name: &str) -> Value {
    let url = format!("{}/__control/{name}", shared().upstream.url());
    send("GET", &url, &[], None).json()["counters"].clone()
}

#[test]
fn serves_from_a_provider_then_from_cache_with_all_headers() {
    let rt = &shared().rt;
    let (g, names) = group(&[("solo", 1)], json!({}));
    let path = format!("/v1/proxy/{g}/v1/models/{}", unique("m"));
    let r = rt.get(&path);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-provider"), Some(names[0].as_str()));
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert!(r.header("ratelimit").is_some() && r.header("ratelimit-policy").is_some());
    assert!(r.header("x-request-id").is_some());
    assert_eq!(r.json()["provider"], names[0].as_str());
    assert!(r.json()["path"]
        .as_str()
        .unwrap()
        .starts_with("/v1/models/"));
    let hit = eventually(
        Duration::from_secs(10),
        "the cache fill (off the response path)",
        || {
            let r = rt.get(&path);
            (r.header("x-cache") == Some("HIT")).then_some(r)
        },
    );
    assert_eq!(hit.status, 200);
    assert_eq!(hit.json()["provider"], names[0].as_str());
    assert_eq!(
        mock_counters(&names[0])["requests"],
        1,
        "the hit did not reach the provider"
    );
}

#[test]
fn failing_provider_is_hidden_by_failover_and_ejected_within_bounded_requests() {
    let rt = &shared().rt;
    let (g, names) = group(&[("bad", 1), ("good", 1)], json!({}));
    control(&names[0], json!({"failure_rate": 1.0, "status": 500}));
    for i in 0..20 {
        let r = rt.get(&format!("/v1/proxy/{g}/item/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-provider"), Some(names[1].as_str()));
    }
    let bad = mock_counters(&names[0]);
    let reached = bad["requests"].as_u64().unwrap();
    println!(
        "a provider failing every call was tried {reached} times over 20 requests before ejection"
    );
    assert!(
        reached <= 8,
        "ejected after 5 consecutive failures (+ in-flight reports): {reached}"
    );
    let status = rt.get(&format!("/v1/providers/{g}")).json();
    assert_eq!(status["providers"][0]["healthy"], false);
}

#[test]
fn dropped_connections_and_timeouts_fail_over() {
    let rt = &shared().rt;
    let (g, names) = group(
        &[("dropper", 1), ("sleeper", 1), ("good", 1)],
        json!({"timeout_ms": 400}),
    );
    control(
        &names[0],
        json!({"failure_rate": 1.0, "drop_connection": true}),
    );
    control(&names[1], json!({"latency_ms": 2000}));
    for i in 0..6 {
        let r = rt.get(&format!("/v1/proxy/{g}/x/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-provider"), Some(names[2].as_str()));
    }
}

#[test]
fn a_429_cools_the_provider_down_for_its_retry_after() {
    let rt = &shared().rt;
    let (g, names) = group(&[("limited", 1), ("spare", 1)], json!({}));
    control(
        &names[0],
        json!({"failure_rate": 1.0, "status": 429, "retry_after_s": 30}),
    );
    for i in 0..8 {
        let r = rt.get(&format!("/v1/proxy/{g}/r/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let limited = eventually(Duration::from_secs(10), "the 429 to be recorded", || {
        let v = rt.get(&format!("/v1/providers/{g}")).json();
        v["providers"][0]["health"]["cooldown_until"]
            .is_number()
            .then_some(v)
    });
    assert_eq!(limited["providers"][0]["healthy"], false);
    assert_eq!(
        limited["providers"][0]["health"]["failures"], 0,
        "a 429 is not a failure"
    );
    assert!(
        mock_counters(&names[0])["requests"].as_u64().unwrap() <= 2,
        "honoured Retry-After"
    );
}

#[test]
fn every_provider_down_is_a_502_problem_naming_the_attempts() {
    let rt = &shared().rt;
    let (g, names) = group(&[("down1", 1), ("down2", 1)], json!({}));
    for n in &names {
        control(n, json!({"failure_rate": 1.0, "status": 503}));
    }
    let r = rt.get(&format!("/v1/proxy/{g}/anything"));
    let p = r.assert_problem(502);
    assert_eq!(p["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("x-gateway-attempts"), Some("2"));
}

#[test]
fn post_is_not_retried_unless_the_client_opts_in() {
    let rt = &shared().rt;
    let (g, names) = group(&[("flaky", 1), ("ok", 1)], json!({}));
    control(&names[0], json!({"failure_rate": 1.0, "status": 500}));
    // The first pick of a fresh weighted group is its first provider.
    let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let r = rt.send(
        "POST",
        &format!("/v1/proxy/{g}/v1/chat/completions"),
        &[("Content-Type", "application/json")],
        Some(body),
    );
    r.assert_problem(502);
    let r = rt.send(
        "POST",
        &format!("/v1/proxy/{g}/v1/chat/completions"),
        &[
            ("Content-Type", "application/json"),
            ("X-Gateway-Retry", "true"),
        ],
        Some(b"{\"other\":1}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn weighted_traffic_splits_within_five_percent_over_a_thousand_requests() {
    let s = shared();
    let (g, names) = group(&[("heavy", 3), ("light", 1)], json!({}));
    let base = s.rt.url(&format!("/v1/proxy/{g}/split"));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let base = base.clone();
            std::thread::spawn(move || {
                for i in 0..125 {
                    let r = send("GET", &format!("{base}/{t}/{i}"), &[], None);
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let heavy = mock_counters(&names[0])["requests"].as_u64().unwrap() as f64;
    let light = mock_counters(&names[1])["requests"].as_u64().unwrap() as f64;
    let share = heavy / (heavy + light);
    println!(
        "weights 3:1 over {} requests: heavy share {share:.3}",
        heavy + light
    );
    assert_eq!(heavy + light, 1000.0);
    assert!((share - 0.75).abs() <= 0.05, "share {share}");
}

#[test]
fn credentials_are_sent_upstream_and_never_shown() {
    let rt = &shared().rt;
    let (g, names) = group(&[("keyed", 1)], json!({"secret": "MOCK_PROVIDER_KEY"}));
    let r = rt.get(&format!("/v1/proxy/{g}/v1/models/{}", unique("k")));
    assert_eq!(r.status, 200, "{}", r.text());
    let c = mock_counters(&names[0]);
    assert_eq!(c["authorized"], 1);
    assert_eq!(
        c["last_authorization"],
        format!("Bearer {}", gateway_e2e::MOCK_PROVIDER_KEY)
    );
    let key = gateway_e2e::MOCK_PROVIDER_KEY;
    for path in [
        format!("/v1/providers/{g}"),
        "/v1/providers".to_string(),
        format!("/v1/stats/providers/{g}"),
    ] {
        let body = rt.get(&path).text();
        assert!(!body.contains(key), "{path} leaked the key");
    }
    assert!(!r.text().contains(key) && !r.headers.iter().any(|(_, v)| v.contains(key)));
    let status = rt.get(&format!("/v1/providers/{g}")).json();
    assert_eq!(
        status["providers"][0]["spec"]["secret"], "MOCK_PROVIDER_KEY",
        "only the name is shown"
    );
}

#[test]
fn usage_is_costed_and_an_exhausted_budget_takes_a_provider_out_of_rotation() {
    let rt = &shared().rt;
    let s = shared();
    let g = unique("budget").replace('-', "_");
    let pricey = format!("pricey_{}", unique("").replace('-', ""));
    let cheap = format!("cheap_{}", unique("").replace('-', ""));
    let providers = json!({"providers": [
        {"name": pricey, "url": format!("{}/{pricey}", s.upstream.url()), "weight": 1,
         "cost_per_request_micro_usd": 100, "cost_per_1k_output_micro_usd": 1000, "budget_micro_usd": 300},
        {"name": cheap, "url": format!("{}/{cheap}", s.upstream.url()), "weight": 1}
    ]});
    assert_eq!(
        rt.admin("PUT", &format!("/v1/providers/{g}"), &providers)
            .status,
        200
    );
    // Each pricey answer costs 100 + 16 completion tokens x 1000/1k = 116 micro-USD.
    for i in 0..12 {
        assert_eq!(rt.get(&format!("/v1/proxy/{g}/b/{i}")).status, 200);
    }
    let v = eventually(
        Duration::from_secs(10),
        "the budget to be exhausted",
        || {
            let v = rt.get(&format!("/v1/providers/{g}")).json();
            (v["providers"][0]["budget_left_micro_usd"] == 0).then_some(v)
        },
    );
    assert_eq!(v["providers"][0]["healthy"], false);
    // Outcomes are reported off the response path, so one more call may slip in before the
    // third report lands; the accounting must match the calls the provider really served.
    let before = mock_counters(&pricey)["requests"].as_u64().unwrap();
    assert!(
        (3..=4).contains(&before),
        "budget 300 allows 3 calls of 116: {before}"
    );
    assert_eq!(
        v["providers"][0]["health"]["output_tokens"].as_u64(),
        Some(16 * before)
    );
    assert_eq!(
        v["providers"][0]["health"]["cost_micro_usd"].as_u64(),
        Some(116 * before)
    );
    for i in 0..6 {
        let r = rt.get(&format!("/v1/proxy/{g}/after/{i}"));
        assert_eq!(r.header("x-provider"), Some(cheap.as_str()));
    }
    assert_eq!(mock_counters(&pricey)["requests"].as_u64().unwrap(), before);
}

#[test]
fn least_latency_sends_most_traffic_to_the_fastest_provider() {
    let rt = &shared().rt;
    let s = shared();
    let g = unique("ll").replace('-', "_");
    let slow = format!("slow_{}", unique("").replace('-', ""));
    let fast = format!("fast_{}", unique("").replace('-', ""));
    control(&slow, json!({"latency_ms": 150}));
    let providers = json!({"strategy": "least_latency", "providers": [
        {"name": slow, "url": format!("{}/{slow}", s.upstream.url())},
        {"name": fast, "url": format!("{}/{fast}", s.upstream.url())}
    ]});
    assert_eq!(
        rt.admin("PUT", &format!("/v1/providers/{g}"), &providers)
            .status,
        200
    );
    for i in 0..30 {
        assert_eq!(rt.get(&format!("/v1/proxy/{g}/ll/{i}")).status, 200);
    }
    let (f, sl) = (
        mock_counters(&fast)["requests"].as_u64().unwrap(),
        mock_counters(&slow)["requests"].as_u64().unwrap(),
    );
    println!("least_latency over 30 requests: fast {f}, slow {sl}");
    assert!(f >= 25, "fast {f}, slow {sl}");
    assert_eq!(
        rt.get(&format!("/v1/providers/{g}")).json()["strategy"],
        "least_latency"
    );
}

/// The exact bytes the mock streams: `n` content events, the usage event, `[DONE]`.
fn mock_events(n: usize, prompt_tokens: u64) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"mock\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"finish_reason\":null}}]}}\n\n"));
    }
    s.push_str(&format!("data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"mock\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n", prompt_tokens + n as u64));
    s.push_str("data: [DONE]\n\n");
    s
}

/// A streamed POST read as it arrives: (status, headers, bytes, offsets of each read since the
/// request was sent, whether the body ended cleanly).
struct Streamed {
    status: u16,
    cache: Option<String>,
    provider: Option<String>,
    content_type: Option<String>,
    bytes: Vec<u8>,
    first_byte: Duration,
    total: Duration,
    clean: bool,
}

fn stream_post(path: &str, body: &[u8], headers: &[(&str, &str)]) -> Streamed {
    use std::io::Read;
    let url = shared().rt.url(path);
    let mut req = ureq::post(&url).set("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let t0 = std::time::Instant::now();
    let resp = match req.send_bytes(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let h = |n: &str| resp.header(n).map(str::to_string);
    let (status, cache, provider, content_type) = (
        resp.status(),
        h("x-cache"),
        h("x-provider"),
        h("content-type"),
    );
    let mut reader = resp.into_reader();
    let (mut bytes, mut buf, mut first_byte, mut clean) = (Vec::new(), [0u8; 4096], None, true);
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                first_byte.get_or_insert_with(|| t0.elapsed());
                bytes.extend_from_slice(&buf[..n]);
            }
            Err(_) => {
                clean = false;
                break;
            }
        }
    }
    Streamed {
        status,
        cache,
        provider,
        content_type,
        bytes,
        first_byte: first_byte.unwrap_or_default(),
        total: t0.elapsed(),
        clean,
    }
}

#[test]
fn a_streamed_answer_arrives_chunk_by_chunk_is_metered_and_then_served_from_cache() {
    let rt = &shared().rt;
    let (g, names) = group(
        &[("streamer", 1)],
        // $1 per 1 000 tokens each way: the cost shows at /metrics' 4-decimal precision.
        json!({"cost_per_1k_input_micro_usd": 1_000_000, "cost_per_1k_output_micro_usd": 1_000_000}),
    );
    control(
        &names[0],
        json!({"stream": true, "stream_chunks": 10, "stream_delay_ms": 100,
               "headers": {"Cache-Control": "max-age=60"}}),
    );
    let body = format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        unique("hi")
    );
    let prompt_tokens = (body.len() as u64).div_ceil(4).max(1);
    let want = mock_events(10, prompt_tokens);
    let path = format!("/v1/proxy/{g}/v1/chat/completions");
    let first = stream_post(&path, body.as_bytes(), &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.cache.as_deref(), Some("MISS"));
    assert_eq!(first.provider.as_deref(), Some(names[0].as_str()));
    assert!(first
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("text/event-stream")));
    assert!(first.clean);
    assert_eq!(
        String::from_utf8_lossy(&first.bytes),
        want,
        "byte-identical, in order"
    );
    assert!(
        first.total >= Duration::from_millis(900),
        "10 chunks 100 ms apart: {:?}",
        first.total
    );
    eprintln!(
        "streamed: first byte {:?}, total {:?}",
        first.first_byte, first.total
    );
    assert!(
        first.first_byte * 2 < first.total,
        "the first chunk arrives before the stream ends: first byte {:?} of {:?}",
        first.first_byte,
        first.total
    );
    // The usage of the final event is reported and costed once the stream has ended.
    let cost = (prompt_tokens + 10) * 1000;
    let v = eventually(Duration::from_secs(10), "the stream's usage", || {
        let v = rt.get(&format!("/v1/providers/{g}")).json();
        (v["providers"][0]["health"]["requests"] == 1).then_some(v)
    });
    let h = &v["providers"][0]["health"];
    assert_eq!(h["output_tokens"], 10);
    assert_eq!(h["input_tokens"], prompt_tokens);
    assert_eq!(h["cost_micro_usd"], cost);
    let provider = format!("{g}/{}", names[0]);
    eventually(
        Duration::from_secs(15),
        "the stream's cost in /metrics",
        || {
            let m = rt.get("/metrics?period=1h").json();
            let p = m["providers"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == provider.as_str())?
                .clone();
            let usd = p["costUsd"].as_f64()?;
            ((usd - cost as f64 / 1e6).abs() < 1e-9 && p["requests"] == 1).then_some(())
        },
    );
    // The completed stream was cached: the same request is a HIT with the same bytes.
    let again = eventually(Duration::from_secs(5), "the stream to be cached", || {
        let r = stream_post(&path, body.as_bytes(), &[]);
        (r.cache.as_deref() == Some("HIT")).then_some(r)
    });
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(mock_counters(&names[0])["streams_completed"], 1);
}

#[test]
fn a_stream_dropped_mid_way_is_truncated_never_retried_and_counted_against_its_provider() {
    let rt = &shared().rt;
    let (g, names) = group(&[("dropper", 1), ("spare", 1)], json!({}));
    control(
        &names[0],
        json!({"stream": true, "stream_chunks": 10, "stream_delay_ms": 50, "stream_drop_after": 3}),
    );
    let body = br#"{"model":"m","stream":true,"messages":[]}"#;
    // Opted in to retries: failover would be allowed before the first byte, never after.
    let r = stream_post(
        &format!("/v1/proxy/{g}/v1/chat/completions"),
        body,
        &[("X-Gateway-Retry", "true")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.provider.as_deref(), Some(names[0].as_str()));
    let text = String::from_utf8_lossy(&r.bytes).to_string();
    let full = mock_events(10, 1);
    assert!(
        !r.clean || !text.contains("[DONE]"),
        "the client sees a truncated stream: {text}"
    );
    let three: String = full.split_inclusive("\n\n").take(3).collect();
    assert_eq!(text, three, "exactly the 3 events sent before the drop");
    assert_eq!(
        mock_counters(&names[1])["requests"],
        0,
        "no retry after the first byte"
    );
    let v = eventually(Duration::from_secs(10), "the failure to be counted", || {
        let v = rt.get(&format!("/v1/providers/{g}")).json();
        (v["providers"][0]["health"]["failures"] == 1).then_some(v)
    });
    assert_eq!(v["providers"][0]["health"]["connection_errors"], 1);
    assert_eq!(v["providers"][0]["health"]["successes"], 0);
}

#[test]
fn the_query_string_is_part_of_the_cache_key() {
    let rt = &shared().rt;
    let (g, _) = group(&[("pages", 1)], json!({}));
    let path = format!("/v1/proxy/{g}/items");
    assert_eq!(
        rt.get(&format!("{path}?page=1")).header("x-cache"),
        Some("MISS")
    );
    let hit = eventually(Duration::from_secs(5), "page 1 to be cached", || {
        let r = rt.get(&format!("{path}?page=1"));
        (r.header("x-cache") == Some("HIT")).then_some(r)
    });
    assert_eq!(hit.status, 200);
    assert_eq!(
        rt.get(&format!("{path}?page=2")).header("x-cache"),
        Some("MISS"),
        "page 2 is not page 1's entry"
    );
}

#[test]
fn failures_are_counted_by_class() {
    let rt = &shared().rt;
    let (g, names) = group(&[("erring", 1)], json!({}));
    control(&names[0], json!({"failure_rate": 1.0, "status": 500}));
    rt.get(&format!("/v1/proxy/{g}/x")).assert_problem(502);
    let v = eventually(Duration::from_secs(10), "the 5xx to be counted", || {
        let v = rt.get(&format!("/v1/providers/{g}")).json();
        (v["providers"][0]["health"]["failures"] == 1).then_some(v)
    });
    assert_eq!(v["providers"][0]["health"]["server_errors"], 1);
}

#[test]
fn a_client_that_leaves_mid_stream_cancels_the_upstream() {
    use std::io::Read;
    let rt = &shared().rt;
    let (g, names) = group(&[("long", 1)], json!({}));
    // 50 chunks 100 ms apart: 5 s if nobody cancels it.
    control(
        &names[0],
        json!({"stream": true, "stream_chunks": 50, "stream_delay_ms": 100}),
    );
    let url = rt.url(&format!("/v1/proxy/{g}/v1/chat/completions"));
    let t0 = std::time::Instant::now();
    let resp = ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_bytes(br#"{"stream":true}"#)
        .expect("a streamed answer");
    let mut reader = resp.into_reader();
    let mut first = [0u8; 64];
    assert!(reader.read(&mut first).expect("the first chunk") > 0);
    drop(reader); // the client goes away after the first chunk
    eventually(
        Duration::from_secs(4),
        "the upstream stream to be cancelled",
        || (mock_counters(&names[0])["streams_aborted"] == 1).then_some(()),
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "cancelled, not finished"
    );
    assert_eq!(mock_counters(&names[0])["streams_completed"], 0);
    // Leaving is not the provider's failure.
    let v = eventually(Duration::from_secs(10), "the outcome to be settled", || {
        let v = rt.get(&format!("/v1/providers/{g}")).json();
        (v["providers"][0]["health"]["requests"] == 1).then_some(v)
    });
    assert_eq!(v["providers"][0]["health"]["failures"], 0);
    assert_eq!(v["providers"][0]["health"]["in_flight"], 0);
}
