//! RateLimiterDO through the front worker.

use std::time::Duration;

use gateway_e2e::eventually;

use crate::{shared, unique};

#[test]
fn admits_exactly_capacity_then_denies_with_headers_and_retry_after() {
    let rt = &shared().rt;
    let key = unique("rl-exact");
    // Policy "tight": capacity 5, one token per hour, so no refill during the test.
    for i in 0..5 {
        let r = rt.send("POST", &format!("/v1/ratelimit/tight/{key}"), &[], None);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["remaining"], 4 - i);
        assert_eq!(r.header("ratelimit-policy"), Some("\"tight\";q=5;w=18000"));
        assert_eq!(
            r.header("ratelimit").unwrap(),
            format!("\"tight\";r={};t={}", 4 - i, 3600 * (i + 1))
        );
    }
    for _ in 0..3 {
        let r = rt.send("POST", &format!("/v1/ratelimit/tight/{key}"), &[], None);
        let p = r.assert_problem(429);
        assert_eq!(p["allowed"], false);
        assert_eq!(p["remaining"], 0);
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert_eq!(retry, 3600);
        assert_eq!(
            r.header("ratelimit"),
            Some("\"tight\";r=0;t=3600"),
            "t equals Retry-After on a denial"
        );
    }
}

#[test]
fn peek_does_not_consume_and_cost_is_honoured() {
    let rt = &shared().rt;
    let key = unique("rl-peek");
    let path = format!("/v1/ratelimit/tight/{key}");
    assert_eq!(
        rt.get(&path).json()["remaining"],
        5,
        "peek of a full bucket"
    );
    assert_eq!(
        rt.get(&path).json()["remaining"],
        5,
        "peeking twice consumed nothing"
    );
    let p = rt.get(&format!("{path}?cost=6"));
    p.assert_problem(400);
    let r = rt.post_json(&path, &serde_json::json!({"cost": 3}));
    assert_eq!(r.json()["remaining"], 2);
    let r = rt.post_json(&path, &serde_json::json!({"cost": 3}));
    r.assert_problem(429);
    let p = rt.get(&format!("{path}?cost=3"));
    assert_eq!(p.status, 429, "a peek that would be denied answers 429 too");
    assert_eq!(p.json()["remaining"], 2);
    // The denied request of cost 3 changed nothing: 2 tokens are still there.
    assert_eq!(
        rt.post_json(&path, &serde_json::json!({"cost": 2})).status,
        200
    );
}

#[test]
fn cost_above_capacity_is_400_and_does_not_lock_the_key() {
    let rt = &shared().rt;
    let path = format!("/v1/ratelimit/tight/{}", unique("rl-cost"));
    rt.post_json(&path, &serde_json::json!({"cost": 6}))
        .assert_problem(400);
    assert_eq!(
        rt.post_json(&path, &serde_json::json!({"cost": 5})).status,
        200
    );
}

#[test]
fn reset_needs_admin_and_refills_the_bucket() {
    let rt = &shared().rt;
    let path = format!("/v1/ratelimit/tight/{}", unique("rl-reset"));
    assert_eq!(
        rt.post_json(&path, &serde_json::json!({"cost": 5})).status,
        200
    );
    rt.send("DELETE", &path, &[], None).assert_problem(401);
    rt.send(
        "DELETE",
        &path,
        &[("Authorization", "Bearer wrong-token-wrong-token")],
        None,
    )
    .assert_problem(403);
    let r = rt.admin("DELETE", &path, &serde_json::json!(null));
    assert_eq!(r.json()["reset"], true);
    assert_eq!(
        rt.post_json(&path, &serde_json::json!({"cost": 5})).status,
        200
    );
}

#[test]
fn unknown_policy_is_404() {
    shared()
        .rt
        .send("POST", "/v1/ratelimit/no-such-policy/k", &[], None)
        .assert_problem(404);
}

#[test]
fn gc_alarm_removes_buckets_that_are_full_again() {
    let rt = &shared().rt;
    // Policy "fast" refills 10 tokens/s, so a bucket is full again ~200 ms after use. Find the
    // shard of a fresh key via the stats of every shard: simplest is to use a key and poll the
    // shard its name hashes to.
    let key = unique("rl-gc");
    assert_eq!(
        rt.send("POST", &format!("/v1/ratelimit/fast/{key}"), &[], None)
            .status,
        200
    );
    let shard = gateway_core_shard(&format!("fast/{key}"), 32);
    let stats = eventually(
        Duration::from_secs(20),
        "the GC alarm to run and collect",
        || {
            let s = rt.get(&format!("/v1/stats/ratelimit/{shard}")).json();
            (s["collected"].as_u64().unwrap_or(0) >= 1
                && s["object"]["alarm"]["runs"].as_u64().unwrap_or(0) >= 1)
                .then_some(s)
        },
    );
    assert!(stats["allowed"].as_u64().unwrap() >= 1);
}

/// The shard function, re-implemented here from its documentation (64-bit FNV-1a mod n), so the
/// test also checks the documented contract.
pub fn gateway_core_shard(key: &str, n: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h % n
}

use gateway_e2e::parse_ratelimit_field;
use serde_json::json;

fn put_policy(name: &str, body: serde_json::Value) {
    let r = shared()
        .rt
        .admin("PUT", &format!("/v1/policies/{name}"), &body);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn headers_parse_as_structured_fields_and_agree_with_the_body() {
    let rt = &shared().rt;
    let path = format!("/v1/ratelimit/tight/{}", unique("rl-sf"));
    for i in 0..7 {
        let r = rt.send("POST", &path, &[], None);
        let body = r.json();
        let policy = parse_ratelimit_field(r.header("ratelimit-policy").unwrap());
        let limit = parse_ratelimit_field(r.header("ratelimit").unwrap());
        assert_eq!(policy[0].0, "tight");
        assert_eq!(policy[0].1["q"], body["limit"].as_i64().unwrap());
        assert_eq!(limit[0].0, "tight");
        assert_eq!(limit[0].1["r"], body["remaining"].as_i64().unwrap());
        let t = limit[0].1["t"];
        if r.status == 200 {
            assert_eq!(
                t,
                (body["reset_ms"].as_i64().unwrap() + 999) / 1000,
                "request {i}"
            );
        } else {
            assert_eq!(r.status, 429);
            let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!(retry >= t, "Retry-After {retry} < announced reset {t}");
            assert_eq!(
                retry,
                (body["retry_after_ms"].as_i64().unwrap() + 999) / 1000
            );
        }
    }
}

#[test]
fn sixty_four_concurrent_clients_never_over_admit() {
    let s = shared();
    let name = unique("conc").replace('-', "_");
    const CAPACITY: usize = 20;
    put_policy(
        &name,
        json!({"capacity": CAPACITY, "refill": 1, "period_ms": 3_600_000}),
    );
    let key = unique("hot-key");
    let path = format!("/v1/ratelimit/{name}/{key}");
    let url = s.rt.url(&path);
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| gateway_e2e::send("POST", &url, &[], None).status)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    let denied = statuses.iter().filter(|&&s| s == 429).count();
    let over_admissions = admitted.saturating_sub(CAPACITY);
    println!("64 clients x 3 requests on one key, capacity {CAPACITY}: admitted {admitted}, denied {denied}, over-admissions {over_admissions}");
    assert_eq!(
        admitted + denied,
        192,
        "every request got 200 or 429: {statuses:?}"
    );
    assert_eq!(over_admissions, 0);
    assert_eq!(
        admitted, CAPACITY,
        "and none of the capacity was lost either"
    );
}

#[test]
fn shadow_mode_never_denies_but_counts_would_be_denials() {
    let rt = &shared().rt;
    let name = unique("shadow").replace('-', "_");
    put_policy(
        &name,
        json!({"capacity": 2, "refill": 1, "period_ms": 3_600_000, "shadow": true}),
    );
    let key = unique("sh");
    let mut shadow_denied = 0;
    for _ in 0..5 {
        let r = rt.send("POST", &format!("/v1/ratelimit/{name}/{key}"), &[], None);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["shadow"], true);
        if v["shadow_denied"] == true {
            shadow_denied += 1;
        }
    }
    assert_eq!(shadow_denied, 3);
    let shard = gateway_core_shard(&format!("{name}/{key}"), 32);
    let stats = rt.get(&format!("/v1/stats/ratelimit/{shard}")).json();
    let counters = stats["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (
            counters["allowed"].as_u64(),
            counters["shadow_denied"].as_u64(),
            counters["denied"].as_u64()
        ),
        (Some(2), Some(3), Some(0))
    );
}

#[test]
fn policy_update_applies_to_the_next_request_and_delete_removes_it() {
    let rt = &shared().rt;
    let name = unique("upd").replace('-', "_");
    put_policy(
        &name,
        json!({"capacity": 1, "refill": 1, "period_ms": 3_600_000}),
    );
    // Keys on several shards, so the fan-out to every shard is exercised.
    let keys: Vec<String> = (0..6).map(|i| unique(&format!("upd{i}"))).collect();
    for k in &keys {
        assert_eq!(
            rt.send("POST", &format!("/v1/ratelimit/{name}/{k}"), &[], None)
                .status,
            200
        );
        assert_eq!(
            rt.send("POST", &format!("/v1/ratelimit/{name}/{k}"), &[], None)
                .status,
            429
        );
    }
    put_policy(
        &name,
        json!({"capacity": 3, "refill": 1, "period_ms": 3_600_000}),
    );
    for k in &keys {
        let r = rt.send("POST", &format!("/v1/ratelimit/{name}/{k}"), &[], None);
        assert_eq!(
            r.status,
            200,
            "the raised capacity applies at once: {}",
            r.text()
        );
        assert_eq!(r.json()["limit"], 3);
    }
    let listed = rt.get("/v1/policies").json();
    let entry = listed["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["source"], "admin");
    assert_eq!(entry["policy"]["capacity"], 3);
    assert_eq!(
        rt.admin("DELETE", &format!("/v1/policies/{name}"), &json!(null))
            .status,
        200
    );
    for k in &keys {
        rt.send("POST", &format!("/v1/ratelimit/{name}/{k}"), &[], None)
            .assert_problem(404);
    }
    rt.get(&format!("/v1/policies/{name}")).assert_problem(404);
}

#[test]
fn default_policy_exists_out_of_the_box_and_policy_admin_is_guarded() {
    let rt = &shared().rt;
    let d = rt.get("/v1/policies/default").json();
    assert_eq!(d["source"], "config");
    assert_eq!(d["policy"]["algorithm"], "token_bucket");
    let body = json!({"capacity": 1, "period_ms": 1000}).to_string();
    rt.send("PUT", "/v1/policies/x", &[], Some(body.as_bytes()))
        .assert_problem(401);
    rt.admin(
        "PUT",
        "/v1/policies/x",
        &json!({"capacity": 0, "period_ms": 1000}),
    )
    .assert_problem(400);
    rt.admin(
        "PUT",
        "/v1/policies/x",
        &json!({"algorithm": "leaky", "limit": 1, "window_ms": 1}),
    )
    .assert_problem(400);
    rt.admin(
        "PUT",
        "/v1/policies/x",
        &json!({"capacity": 1, "period_ms": 1000, "limit": 2}),
    )
    .assert_problem(400);
    rt.admin("DELETE", "/v1/policies/never-existed", &json!(null))
        .assert_problem(404);
}

#[test]
fn sliding_window_admits_its_limit_per_window() {
    let rt = &shared().rt;
    let name = unique("sw").replace('-', "_");
    put_policy(
        &name,
        json!({"algorithm": "sliding_window", "limit": 3, "window_ms": 3_600_000}),
    );
    let path = format!("/v1/ratelimit/{name}/{}", unique("swk"));
    for _ in 0..3 {
        assert_eq!(rt.send("POST", &path, &[], None).status, 200);
    }
    let r = rt.send("POST", &path, &[], None);
    r.assert_problem(429);
    assert_eq!(
        parse_ratelimit_field(r.header("ratelimit-policy").unwrap())[0].1["w"],
        3600
    );
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
}
