//! Observability routes on the shared runtime: shapes and bad input only. Exact counts, alerts,
//! restarts and the dashboard run on runtimes of their own (`tests/observability/`), because
//! every proxied request of the other tests here is counted too.

use serde_json::json;

use crate::shared;

#[test]
fn metrics_answers_the_documented_shape_for_every_period() {
    let rt = &shared().rt;
    for period in ["1h", "24h", "7d"] {
        let v = rt.get(&format!("/metrics?period={period}")).json();
        gateway_e2e::assert_metrics_schema(&v);
        assert_eq!(v["period"], period);
        for k in [
            "timestamp",
            "hitRates",
            "latency",
            "volume",
            "costs",
            "providers",
            "health",
            "topKeys",
        ] {
            assert!(!v[k].is_null(), "{k} missing in {v}");
        }
        for k in ["cache", "stale", "upstream", "combined"] {
            assert!(v["hitRates"][k].is_number(), "hitRates.{k}");
        }
        for k in [
            "totalRequests",
            "cacheHits",
            "staleHits",
            "upstreamCalls",
            "rateLimited",
            "errors",
        ] {
            assert!(v["volume"][k].is_u64(), "volume.{k}");
        }
        assert!(
            ["healthy", "degraded", "critical"].contains(&v["health"]["status"].as_str().unwrap())
        );
    }
    let series = rt.get("/v1/metrics/series?period=1h").json();
    assert!(series["points"].is_array());
    assert!(series["stepSeconds"].as_u64().unwrap() >= 1);
    let alerts = rt.get("/v1/alerts").json();
    assert!(alerts["active"].is_array() && alerts["history"].is_array());
    assert_eq!(
        alerts["rules"].as_array().unwrap().len(),
        6,
        "the default rules"
    );
    let report = rt.get("/v1/reports/daily").json();
    assert!(report["recommendations"].is_array());
    let page = rt.get("/dashboard");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
}

#[test]
fn bad_metrics_queries_and_events_are_4xx() {
    let rt = &shared().rt;
    rt.get("/metrics?period=2h").assert_problem(400);
    rt.get("/metrics?format=xml").assert_problem(400);
    rt.get("/v1/metrics/series?period=1y").assert_problem(400);
    rt.post_json("/v1/events", &json!({"events": []}))
        .assert_problem(400);
    rt.post_json(
        "/v1/events",
        &json!({"events": [{"status": 99, "latency_ms": 1}]}),
    )
    .assert_problem(400);
    rt.post_json(
        "/v1/events",
        &json!({"events": [{"status": 200, "latency_ms": 1, "key": "a\u{7}"}]}),
    )
    .assert_problem(400);
    rt.send("POST", "/v1/rollup/run", &[], None)
        .assert_problem(401);
}
