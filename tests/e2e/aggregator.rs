//! AggregatorDO through the front worker: ingest, /metrics, the sealing alarm.

use std::time::Duration;

use gateway_e2e::eventually;
use serde_json::json;

use crate::shared;

#[test]
fn ingested_events_show_up_exactly_in_metrics_and_the_alarm_seals_windows() {
    // The only test in this binary that ingests events, so the deltas are exact.
    let rt = &shared().rt;
    let before = rt.get("/metrics").json();
    let mut events = Vec::new();
    for i in 0..40 {
        let cache = ["hit", "hit", "miss", "stale"][i % 4];
        events.push(json!({"status": if i % 10 == 0 { 502 } else { 200 }, "latency_ms": 10 + i, "cache": cache}));
    }
    let r = rt.post_json("/v1/events", &json!({ "events": events }));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["accepted"], 40);
    let after = rt.get("/metrics?period=1h").json();
    let delta =
        |f: &str| after["volume"][f].as_u64().unwrap() - before["volume"][f].as_u64().unwrap();
    assert_eq!(delta("totalRequests"), 40);
    assert_eq!(delta("cacheHits"), 20);
    assert_eq!(delta("cacheMisses"), 10);
    assert_eq!(delta("staleHits"), 10);
    assert_eq!(delta("errors"), 4);
    assert_eq!(after["period"], "1h");
    let prom = rt.get("/metrics?format=prometheus");
    assert!(prom
        .text()
        .contains("# TYPE gateway_requests_total counter"));
    // Every shard that holds a window gets an alarm; at least one has run and recorded it.
    eventually(
        Duration::from_secs(90),
        "an aggregator alarm to run",
        || {
            (0..4).find_map(|i| {
                let s = rt.get(&format!("/v1/stats/aggregator/{i}")).json();
                (s["events"].as_u64().unwrap_or(0) > 0
                    && s["object"]["alarm"]["runs"].as_u64().unwrap_or(0) >= 1)
                    .then_some(())
            })
        },
    );
}
