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
    let shard = gateway_core_shard(&format!("fast/{key}"), 64);
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
