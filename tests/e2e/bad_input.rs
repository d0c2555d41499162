//! Bad input to every route gets a 4xx problem+json, never a 5xx, and loses nothing.

use gateway_e2e::ADMIN_TOKEN;
use serde_json::json;

use crate::{shared, unique};

struct Case {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    admin: bool,
    want: u16,
}

fn case(method: &'static str, path: &str, body: &str, admin: bool, want: u16) -> Case {
    Case {
        method,
        path: path.to_string(),
        body: body.as_bytes().to_vec(),
        admin,
        want,
    }
}

#[test]
fn every_route_answers_bad_input_with_a_4xx_problem() {
    let rt = &shared().rt;
    let big = vec![b'x'; 70_000];
    let cases = vec![
        // malformed JSON / wrong types / unknown fields / out of range
        case("POST", "/v1/ratelimit/default/k", "{", false, 400),
        case(
            "POST",
            "/v1/ratelimit/default/k",
            r#"{"cost":"one"}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/ratelimit/default/k",
            r#"{"cost":-1}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/ratelimit/default/k",
            r#"{"cost":1e400}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/ratelimit/default/k",
            r#"{"cost":99999999999999999999999}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/ratelimit/default/k",
            r#"{"cost":0}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/ratelimit/default/k",
            r#"{"cost":1,"extra":true}"#,
            false,
            400,
        ),
        case("GET", "/v1/ratelimit/default/k?cost=abc", "", false, 400),
        case("POST", "/v1/ratelimit/bad%20policy/k", "", false, 400),
        case("POST", "/v1/ratelimit/default/%00", "", false, 400),
        case(
            "POST",
            &format!("/v1/ratelimit/default/{}", "k".repeat(600)),
            "",
            false,
            400,
        ),
        case("PUT", "/v1/cache/ns/k", "", false, 201), // empty value is a valid value
        case("PUT", "/v1/cache/n%zzs/k", "v", false, 400),
        case("GET", "/v1/cache/ns/a%0Ab", "", false, 400),
        case(
            "POST",
            "/v1/providers/demo/report",
            r#"{"provider":"alpha"}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/providers/demo/report",
            r#"{"provider":"alpha","ok":"yes","latency_ms":1}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/providers/demo/report",
            r#"{"provider":"no-such","ok":true,"latency_ms":1}"#,
            false,
            404,
        ),
        case(
            "POST",
            "/v1/providers/demo/report",
            r#"{"provider":"alpha","ok":true,"latency_ms":-5}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/experiments/title-search-ttl/assign",
            "[]",
            false,
            400,
        ),
        case(
            "POST",
            "/v1/experiments/title-search-ttl/assign",
            r#"{"unit":""}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/experiments/title-search-ttl/assign",
            "{\"unit\":\"a\\u0007b\"}",
            false,
            400,
        ),
        case(
            "POST",
            "/v1/experiments/title-search-ttl/events",
            r#"{"unit":"u","success":1}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/experiments/title-search-ttl/events",
            r#"{"unit":"u"}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/experiments/title-search-ttl/events",
            r#"{"unit":"u","metrics":{"cache_hit":"yes"}}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/experiments/title-search-ttl/events",
            r#"{"unit":"u","metrics":{"cache_hit":2}}"#,
            false,
            400,
        ),
        case(
            "PUT",
            "/v1/experiments/e1",
            r#"{"variants":"nope"}"#,
            true,
            400,
        ),
        case(
            "PUT",
            "/v1/experiments/e1",
            r#"{"primary":"conversions","variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}"#,
            true,
            400,
        ),
        case(
            "PUT",
            "/v1/experiments/e1",
            r#"{"coverage":1.5,"variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}"#,
            true,
            400,
        ),
        case(
            "PUT",
            "/v1/experiments/e1",
            r#"{"variants":[{"name":"a","weight":1,"params":{"cache_ttl_s":-1}},{"name":"b","weight":1}]}"#,
            true,
            400,
        ),
        case(
            "PUT",
            "/v1/experiments/e1",
            r#"{"target":{"group":"g","path_prefix":"nope"},"variants":[{"name":"a","weight":1},{"name":"b","weight":1}]}"#,
            true,
            400,
        ),
        case(
            "PUT",
            "/v1/experiments/e1",
            r#"{"variants":[{"name":"a","weight":-1},{"name":"b","weight":1}]}"#,
            true,
            400,
        ),
        case("POST", "/v1/events", r#"{"events":[]}"#, false, 400),
        case(
            "POST",
            "/v1/events",
            r#"{"events":[{"status":99,"latency_ms":1}]}"#,
            false,
            400,
        ),
        case(
            "POST",
            "/v1/events",
            r#"{"events":[{"status":200,"latency_ms":1,"cache":"warm"}]}"#,
            false,
            400,
        ),
        case("POST", "/v1/events", "not json at all", false, 400),
        case("GET", "/metrics?period=2h", "", false, 400),
        case("GET", "/metrics?format=xml", "", false, 400),
        case("GET", "/v1/stats/cache/99", "", false, 404),
        case("GET", "/v1/stats/cache/-1", "", false, 400),
        case("GET", "/v1/stats/nothing/1", "", false, 404),
        // admin token missing / wrong
        case(
            "PUT",
            "/v1/providers/demo",
            r#"{"providers":[]}"#,
            false,
            401,
        ),
        case("DELETE", "/v1/ratelimit/default/k", "", false, 401),
        // oversize bodies (MAX_BODY_BYTES is 65536 in the test runtime; rate-limit bodies 4096)
        Case {
            method: "PUT",
            path: "/v1/cache/ns/big".into(),
            body: big.clone(),
            admin: false,
            want: 413,
        },
        Case {
            method: "POST",
            path: "/v1/events".into(),
            body: big.clone(),
            admin: false,
            want: 413,
        },
        Case {
            method: "POST",
            path: "/v1/ratelimit/default/k".into(),
            body: big[..5000].to_vec(),
            admin: false,
            want: 413,
        },
        Case {
            method: "PUT",
            path: "/v1/providers/demo".into(),
            body: big,
            admin: true,
            want: 413,
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut headers = vec![("Content-Type", "application/json")];
        if c.admin {
            headers.push(("Authorization", auth.as_str()));
        }
        let r = rt.send(c.method, &c.path, &headers, Some(&c.body));
        if r.status != c.want {
            failures.push(format!(
                "{} {} -> {} (want {}): {}",
                c.method,
                c.path,
                r.status,
                c.want,
                r.text()
            ));
            continue;
        }
        if c.want >= 400 {
            r.assert_problem(c.want);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn wrong_admin_token_is_403_and_short_tokens_never_match() {
    let rt = &shared().rt;
    let body = json!({"providers": [{"name": "a", "url": "http://127.0.0.1:1/a"}]}).to_string();
    for token in [
        "Bearer wrong",
        "Bearer ",
        "Basic abc",
        &format!("Bearer {}", &ADMIN_TOKEN[..10]),
    ] {
        let r = rt.send(
            "PUT",
            "/v1/providers/demo",
            &[("Authorization", token)],
            Some(body.as_bytes()),
        );
        assert!(r.status == 401 || r.status == 403, "{token}: {}", r.status);
        r.assert_problem(r.status);
    }
}

#[test]
fn a_bad_request_loses_no_acknowledged_state() {
    let rt = &shared().rt;
    let path = format!("/v1/ratelimit/tight/{}", unique("bad-keeps"));
    assert_eq!(rt.post_json(&path, &json!({"cost": 2})).status, 200);
    rt.send("POST", &path, &[], Some(b"{garbage"))
        .assert_problem(400);
    // Raised inside the rate-limiter object: its own slug crosses the hop, not `invalid-request`.
    let p = rt.post_json(&path, &json!({"cost": 9})).assert_problem(400);
    assert_eq!(p["type"], "urn:edge-gateway:problem:invalid-cost", "{p}");
    assert_eq!(rt.get(&path).json()["remaining"], 3);
    let cpath = format!("/v1/cache/ns/{}", unique("bad-keeps"));
    assert_eq!(rt.send("PUT", &cpath, &[], Some(b"kept")).status, 201);
    rt.send(
        "PUT",
        &cpath,
        &[("Cache-Control", "max-age=0")],
        Some(b"overwrite?"),
    )
    .assert_problem(400);
    rt.send("PUT", &cpath, &[], Some(&vec![b'x'; 70_000]))
        .assert_problem(413);
    assert_eq!(rt.get(&cpath).body, b"kept");
}
