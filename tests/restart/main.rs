//! State survives a runtime restart for every Durable Object class: start, write acknowledged
//! state through the front worker, stop the runtime, start it again on the same persist folder,
//! and read it back.

use gateway_e2e::{mock_upstream, temp_dir, test_vars, Runtime};
use serde_json::json;

#[test]
fn acknowledged_state_of_every_durable_object_survives_a_restart() {
    let upstream = mock_upstream::start("127.0.0.1:0").expect("mock upstream");
    let dir = temp_dir("restart");
    let mut rt = Runtime::start(&dir, &test_vars(&upstream.url()));

    // RateLimiterDO: consume 3 of 5 tokens (policy "tight" does not refill during the test).
    assert_eq!(
        rt.post_json("/v1/ratelimit/tight/survivor", &json!({"cost": 3}))
            .status,
        200
    );
    // CacheShardDO: an entry with a long TTL.
    assert_eq!(
        rt.send(
            "PUT",
            "/v1/cache/ns/survivor",
            &[("Cache-Control", "max-age=3600")],
            Some(b"still here")
        )
        .status,
        201
    );
    // ProviderHealthDO: beta fails its probes and five reported calls: it is ejected.
    let ctl = format!("{}/__control/beta", upstream.url());
    assert_eq!(
        gateway_e2e::send(
            "PUT",
            &ctl,
            &[],
            Some(br#"{"failure_rate":1.0,"status":503}"#)
        )
        .status,
        200
    );
    for _ in 0..5 {
        let r = rt.post_json(
            "/v1/providers/demo/report",
            &json!({"provider": "beta", "ok": false, "latency_ms": 7}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // ExperimentDO: a sticky assignment.
    let assigned = rt
        .post_json(
            "/v1/experiments/title-search-ttl/assign",
            &json!({"unit": "survivor"}),
        )
        .json();
    // ExperimentDO: 40 units of a 50/50 experiment, checked after the restart and a weight change.
    let sticky_def = |a: u32, b: u32| json!({"variants": [{"name": "a", "weight": a}, {"name": "b", "weight": b}]});
    assert_eq!(
        rt.admin("PUT", "/v1/experiments/sticky", &sticky_def(50, 50))
            .status,
        201
    );
    let assign = |rt: &Runtime, u: &str| {
        rt.post_json("/v1/experiments/sticky/assign", &json!({ "unit": u }))
            .json()
    };
    let units: Vec<String> = (0..40).map(|i| format!("unit-{i}")).collect();
    let before: Vec<serde_json::Value> = units
        .iter()
        .map(|u| assign(&rt, u)["variant"].clone())
        .collect();
    assert!(before.iter().any(|v| v == "a") && before.iter().any(|v| v == "b"));
    // AggregatorDO: events.
    let r = rt.post_json("/v1/events", &json!({"events": [{"status": 200, "latency_ms": 5, "cache": "hit"}, {"status": 500, "latency_ms": 9}]}));
    assert_eq!(r.status, 202);

    rt.restart();

    assert_eq!(
        rt.get("/v1/ratelimit/tight/survivor").json()["remaining"],
        2,
        "consumed tokens stay consumed"
    );
    let c = rt.get("/v1/cache/ns/survivor");
    assert_eq!(
        (c.status, c.body.as_slice()),
        (200, b"still here".as_slice())
    );
    let p = rt.get("/v1/providers/demo").json();
    let beta = p["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["spec"]["name"] == "beta")
        .unwrap()
        .clone();
    assert_eq!(beta["health"]["requests"], 5, "reported outcomes survive");
    assert!(beta["health"]["failures"].as_u64().unwrap() >= 5);
    assert_eq!(beta["healthy"], false, "the ejection survives the restart");
    assert!(beta["health"]["ejected_until"].is_number());
    let again = rt
        .post_json(
            "/v1/experiments/title-search-ttl/assign",
            &json!({"unit": "survivor"}),
        )
        .json();
    assert_eq!(again["variant"], assigned["variant"]);
    assert_eq!(again["new"], false, "the assignment came from storage");
    let after_restart: Vec<serde_json::Value> = units
        .iter()
        .map(|u| assign(&rt, u)["variant"].clone())
        .collect();
    assert_eq!(after_restart, before, "assignments survive the restart");
    assert_eq!(
        rt.admin("PUT", "/v1/experiments/sticky", &sticky_def(5, 95))
            .status,
        200
    );
    for (u, v) in units.iter().zip(&before) {
        let a = assign(&rt, u);
        assert_eq!(&a["variant"], v, "a weight change moves nobody");
        assert_eq!(a["new"], false);
    }
    let m = rt.get("/metrics").json();
    assert_eq!(m["volume"]["totalRequests"], 2);
    assert_eq!(m["volume"]["errors"], 1);
    rt.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
