//! The front worker: health, request ids, the error envelope, routing errors.

use crate::shared;

// That `/health` touches no Durable Object is not asserted: nothing exposes how many requests an
// object received. The `/v1/stats` counters count what objects did (takes, hits, records), so a
// read-only hop (a "deep" check calling `Stats`) moves none of them, and the tests running in
// parallel move them anyway. It holds by construction (`routes::health`).
#[test]
fn health_answers_ok_with_the_time_and_a_request_id() {
    let r = shared().rt.get("/health");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(r.header("x-request-id").is_some_and(|id| id.len() >= 16));
}

#[test]
fn request_id_is_echoed_when_sane_and_replaced_when_not() {
    let rt = &shared().rt;
    let r = rt.send("GET", "/health", &[("X-Request-Id", "client-id-123")], None);
    assert_eq!(r.header("x-request-id"), Some("client-id-123"));
    let r = rt.send(
        "GET",
        "/health",
        &[("X-Request-Id", "bad id with spaces")],
        None,
    );
    assert_ne!(r.header("x-request-id"), Some("bad id with spaces"));
    // Every response has one, errors included, and the problem quotes it.
    let r = rt.send("GET", "/nope", &[("X-Request-Id", "trace-me")], None);
    assert_eq!(r.assert_problem(404)["requestId"], "trace-me");
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405_with_allow() {
    let rt = &shared().rt;
    rt.get("/v2/unknown").assert_problem(404);
    let r = rt.send("PATCH", "/v1/cache/ns/key", &[], None);
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT, DELETE"));
}
