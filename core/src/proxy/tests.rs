//! Every branch of the plan, on simulated upstream answers.

use super::*;

fn pick(name: &str, per_request: u64) -> Pick {
    Pick {
        name: name.into(),
        url: format!("http://upstream/{name}"),
        panic: false,
        timeout_ms: 1000,
        secret: None,
        prices: (per_request, 0, 1000),
    }
}

fn settings() -> Settings {
    Settings {
        group: "g".into(),
        max_attempts: MAX_ATTEMPTS,
        cacheable: true,
        default_ttl_s: 60,
        negative_ttl_s: 10,
        max_buffer_bytes: 1024,
    }
}

fn plan(method: &str, opted_in: bool, n: usize) -> Plan {
    let picks = ["a", "b", "c", "d"][..n]
        .iter()
        .map(|p| pick(p, 10))
        .collect();
    Plan::new(settings(), method, opted_in, picks, None, None)
}

fn answer(status: u16, headers: &[(&str, &str)]) -> Head {
    Head::Response {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn cached(negative: bool) -> Cached {
    Cached {
        value: b"old".to_vec(),
        content_type: Some("text/plain".into()),
        age_ms: 5000,
        ttl_left_ms: 0,
        negative,
    }
}

fn completed(body: &[u8], usage: Option<Usage>) -> Metered {
    Metered {
        end: End::Completed,
        bytes: body.len() as u64,
        usage,
        body: Some(body.to_vec()),
    }
}

fn failure_status(step: Step) -> (u16, Option<String>) {
    match step {
        Step::Fail(f) => (f.error.status(), f.retry_after),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn the_first_stage_denies_serves_hits_and_stale_and_forwards_misses() {
    assert_eq!(start(false, Some(Found::Hit(cached(false)))), Start::Deny);
    assert_eq!(
        start(true, Some(Found::Hit(cached(false)))),
        Start::Hit(cached(false))
    );
    let stale = |if_error, lease| Found::Stale {
        cached: cached(false),
        if_error,
        lease,
    };
    assert_eq!(
        start(true, Some(stale(false, Some(7)))),
        Start::Forward {
            stale_if_error: Some(cached(false))
        },
        "the lease holder refreshes, falling back on the stale copy"
    );
    assert_eq!(
        start(true, Some(stale(false, None))),
        Start::Stale(cached(false)),
        "another request holds the lease and refreshes it"
    );
    assert_eq!(
        start(true, Some(stale(true, None))),
        Start::Forward {
            stale_if_error: Some(cached(false))
        }
    );
    let miss = Found::Miss {
        expired: false,
        lease: None,
        waited: false,
    };
    assert_eq!(
        start(true, Some(miss)),
        Start::Forward {
            stale_if_error: None
        }
    );
    assert_eq!(
        start(true, None),
        Start::Forward {
            stale_if_error: None
        },
        "a cache hop that failed is a miss"
    );
    assert_eq!(
        (cached_status(&cached(false)), cached_status(&cached(true))),
        (200, 404)
    );
}

#[test]
fn the_cache_key_keeps_the_query_and_the_group() {
    let q = |v: &str| vec![("page".to_string(), v.to_string())];
    let k = |g: &str, v: &str| cache_key("c", g, "GET", "items", &q(v), None, b"");
    assert_ne!(k("g", "1"), k("g", "2"));
    assert_ne!(k("g", "1"), k("h", "1"));
    assert!(k("g", "1").is_some_and(|k| k.starts_with("proxy/g/")));
    assert_eq!(cache_key("c", "g", "DELETE", "x", &[], None, b""), None);
    let long = "x".repeat(MAX_KEY);
    assert_eq!(cache_key("c", "g", "GET", &long, &[], None, b""), None);
}

#[test]
fn a_good_answer_is_delivered_buffered_and_filled() {
    let mut p = plan("GET", false, 3);
    assert_eq!(p.first_step(), Step::Forward(0));
    let step = p.on_head(
        answer(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "40"),
                ("set-cookie-not", "x"),
                ("x-internal", "secret"),
            ],
        ),
        12,
    );
    let Step::Deliver(d) = step else {
        panic!("{step:?}")
    };
    assert_eq!(
        (d.candidate, d.status, d.body, d.collect),
        (0, 200, Body::Buffer, 1024)
    );
    assert_eq!(
        d.headers,
        vec![("content-type".to_string(), "application/json".to_string())],
        "only PASS_BACK headers"
    );
    let body = br#"{"usage":{"prompt_tokens":3,"completion_tokens":500}}"#;
    let s = p.settle(Some(completed(
        body,
        Some(Usage {
            input_tokens: 3,
            output_tokens: 500,
        }),
    )));
    assert_eq!(s.attempts, 1);
    assert_eq!(
        s.released,
        vec![("b".to_string(), false), ("c".to_string(), false)]
    );
    let (name, o) = &s.outcomes[0];
    assert_eq!(
        (name.as_str(), o.ok, o.latency_ms, o.output_tokens),
        ("a", true, 12, 500)
    );
    assert_eq!(
        s.cost_micro_usd,
        10 + 500,
        "10 per request + 500 tokens at 1000/1k"
    );
    let fill = s
        .fill
        .expect("a 200 without caching headers is stored for the default TTL");
    assert_eq!(fill.value, body.to_vec());
    assert_eq!(fill.spec.ttl_ms, 60_000);
    assert_eq!(fill.spec.tags, vec!["proxy-g".to_string()]);
    assert_eq!(fill.content_type.as_deref(), Some("application/json"));
}

#[test]
fn event_streams_and_unknown_or_large_lengths_stream() {
    for headers in [
        vec![
            ("content-type", "text/event-stream"),
            ("content-length", "10"),
        ],
        vec![("content-type", "application/json")],
        vec![
            ("content-type", "application/json"),
            ("content-length", "4096"),
        ],
    ] {
        let mut p = plan("GET", false, 1);
        p.first_step();
        match p.on_head(answer(200, &headers), 1) {
            Step::Deliver(d) => assert_eq!(d.body, Body::Stream, "{headers:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_5xx_fails_over_and_the_next_answer_is_delivered() {
    let mut p = plan("GET", false, 3);
    p.first_step();
    assert_eq!(p.on_head(answer(503, &[]), 5), Step::Forward(1));
    assert!(matches!(p.on_head(answer(200, &[]), 6), Step::Deliver(d) if d.candidate == 1));
    assert_eq!(p.attempted(), vec!["a".to_string(), "b".to_string()]);
    let s = p.settle(Some(completed(b"ok", None)));
    assert_eq!(s.attempts, 2);
    assert_eq!(s.outcomes[0].1.error, Some(ErrorClass::ServerError));
    assert!(s.outcomes[1].1.ok);
    assert_eq!(s.released, vec![("c".to_string(), false)]);
    assert_eq!(
        s.cost_micro_usd, 20,
        "both attempts pay the per-request price"
    );
    assert_eq!(s.last.map(|(n, _)| n), Some("b".to_string()));
}

#[test]
fn timeouts_everywhere_are_a_504_and_mixed_failures_a_502() {
    let mut p = plan("GET", false, 3);
    p.first_step();
    assert_eq!(p.on_head(Head::Timeout, 1000), Step::Forward(1));
    assert_eq!(p.on_head(Head::Timeout, 1000), Step::Forward(2));
    assert_eq!(failure_status(p.on_head(Head::Timeout, 1000)), (504, None));
    let s = p.settle(None);
    assert!(s
        .outcomes
        .iter()
        .all(|(_, o)| o.error == Some(ErrorClass::Timeout)));
    assert!(s.fill.is_none() && s.released.is_empty());

    let mut p = plan("GET", false, 2);
    p.first_step();
    p.on_head(Head::Timeout, 1000);
    let step = p.on_head(Head::ConnectionError, 3);
    assert_eq!(failure_status(step.clone()), (502, None));
    let Step::Fail(f) = step else { unreachable!() };
    assert!(f.error.to_string().contains("no provider could be reached"));

    let mut p = plan("GET", false, 2);
    p.first_step();
    p.on_head(Head::ConnectionError, 3);
    let Step::Fail(f) = p.on_head(answer(500, &[]), 3) else {
        panic!()
    };
    assert!(
        f.error.to_string().contains("the last answered 500"),
        "{}",
        f.error
    );
}

#[test]
fn a_429_fails_over_and_when_everyone_limits_the_client_gets_503_with_retry_after() {
    let mut p = plan("GET", false, 2);
    p.first_step();
    assert_eq!(
        p.on_head(answer(429, &[("retry-after", "30")]), 2),
        Step::Forward(1)
    );
    assert_eq!(
        failure_status(p.on_head(answer(429, &[("retry-after", "7")]), 2)),
        (503, Some("7".to_string()))
    );
    let s = p.settle(None);
    assert_eq!(
        s.outcomes[0].1.retry_after_ms,
        Some(30_000),
        "cools provider a down"
    );
    assert_eq!(s.outcomes[0].1.error, None, "a 429 is not a failure");
}

#[test]
fn post_is_not_retried_unless_opted_in() {
    let mut p = plan("POST", false, 3);
    p.first_step();
    assert_eq!(failure_status(p.on_head(answer(500, &[]), 1)).0, 502);
    assert_eq!(
        p.settle(None).released.len(),
        2,
        "unused candidates are released"
    );

    let mut p = plan("POST", true, 3);
    p.first_step();
    assert_eq!(p.on_head(answer(500, &[]), 1), Step::Forward(1));
}

#[test]
fn at_most_max_attempts_providers_are_tried() {
    let mut p = plan("GET", false, 4);
    p.first_step();
    p.on_head(answer(502, &[]), 1);
    p.on_head(answer(502, &[]), 1);
    assert_eq!(failure_status(p.on_head(answer(502, &[]), 1)).0, 502);
    let s = p.settle(None);
    assert_eq!(
        (s.attempts, s.released.clone()),
        (3, vec![("d".to_string(), false)])
    );
}

#[test]
fn a_spent_budget_everywhere_is_a_503_with_the_time_until_it_resets() {
    let mut p = Plan::new(settings(), "GET", false, vec![], Some(90_500), None);
    assert_eq!(
        failure_status(p.first_step()),
        (503, Some("91".to_string()))
    );
    let s = p.settle(None);
    assert_eq!((s.attempts, s.cost_micro_usd), (0, 0));
}

#[test]
fn a_stale_if_error_copy_is_served_when_every_provider_fails() {
    let picks = vec![pick("a", 0)];
    let mut p = Plan::new(settings(), "GET", false, picks, None, Some(cached(false)));
    p.first_step();
    assert_eq!(p.on_head(answer(503, &[]), 1), Step::Stale(cached(false)));
}

#[test]
fn a_buffered_body_that_fails_while_read_fails_over() {
    let mut p = plan("GET", false, 2);
    p.first_step();
    p.on_head(answer(200, &[("content-length", "5")]), 1);
    assert_eq!(p.on_body_failed(true), Step::Forward(1));
    p.on_head(answer(200, &[("content-length", "5")]), 1);
    let s = p.settle(Some(completed(b"hello", None)));
    assert_eq!(s.outcomes[0].1.error, Some(ErrorClass::Timeout));
    assert!(s.outcomes[1].1.ok);
}

#[test]
fn a_stream_is_settled_by_how_it_ended() {
    let run = |end: End| {
        let mut p = plan("GET", false, 2);
        p.first_step();
        p.on_head(answer(200, &[("content-type", "text/event-stream")]), 4);
        p.settle(Some(Metered {
            end,
            bytes: 3,
            usage: Some(Usage {
                input_tokens: 1,
                output_tokens: 2,
            }),
            body: (end == End::Completed).then(|| b"abc".to_vec()),
        }))
    };
    let done = run(End::Completed);
    assert!(done.outcomes[0].1.ok && done.fill.is_some());
    assert_eq!(done.outcomes[0].1.output_tokens, 2);
    let dropped = run(End::UpstreamFailed);
    assert_eq!(dropped.outcomes[0].1.error, Some(ErrorClass::Connection));
    assert!(dropped.fill.is_none() && !dropped.outcomes[0].1.ok);
    assert_eq!(
        run(End::IdleTimeout).outcomes[0].1.error,
        Some(ErrorClass::Timeout)
    );
    let gone = run(End::ClientGone);
    assert!(
        gone.outcomes[0].1.ok,
        "a client that leaves is not the provider's failure"
    );
    assert!(gone.fill.is_none());
}

#[test]
fn only_storable_answers_within_the_cap_are_filled() {
    let fill_of = |status: u16, headers: &[(&str, &str)], body: &[u8], cacheable: bool| {
        let picks = vec![pick("a", 0)];
        let s = Settings {
            cacheable,
            ..settings()
        };
        let mut p = Plan::new(s, "GET", false, picks, None, None);
        p.first_step();
        let collect = match p.on_head(answer(status, headers), 1) {
            Step::Deliver(d) => d.collect,
            other => panic!("{other:?}"),
        };
        (collect, p.settle(Some(completed(body, None))).fill)
    };
    assert!(fill_of(200, &[], b"x", true).1.is_some());
    assert_eq!(fill_of(200, &[], b"x", false), (0, None), "no cache key");
    assert_eq!(
        fill_of(200, &[("cache-control", "no-store")], b"x", true),
        (0, None)
    );
    assert!(
        fill_of(200, &[], &[0; 2048], true).1.is_none(),
        "over the cap"
    );
    let negative = fill_of(404, &[], b"nope", true)
        .1
        .expect("404 is negative-cached");
    assert!(negative.spec.negative && negative.spec.ttl_ms == 10_000);
    assert_eq!(fill_of(400, &[], b"bad", true).1, None);
}

#[test]
fn the_record_and_cohort_values_carry_the_settlement() {
    let mut p = plan("GET", false, 2);
    p.first_step();
    p.on_head(answer(503, &[]), 5);
    p.on_head(answer(200, &[]), 7);
    let s = p.settle(Some(completed(b"{}", None)));
    let r = s.record(
        "g",
        record(crate::UnixMillis(1), "g", "x", 200, CacheOutcome::Miss, 9),
    );
    assert_eq!(
        (
            r.upstream_calls,
            r.provider.as_deref(),
            r.provider_latency_ms,
            r.provider_error
        ),
        (2, Some("g/b"), 7, false)
    );
    assert_eq!(
        (r.cost_micro_usd, r.key.as_str(), r.latency_ms),
        (20, "g/x", 9)
    );
    let v = cohort_values(&Record { status: 502, ..r });
    assert_eq!(
        v,
        vec![
            ("cache_hit".to_string(), 0.0),
            ("latency_ms".to_string(), 9.0),
            ("error".to_string(), 1.0),
            ("cost_usd".to_string(), 20.0 / 1e6)
        ]
    );
    let hit = record(crate::UnixMillis(1), "g", "x", 200, CacheOutcome::Stale, 1);
    assert_eq!(
        cohort_values(&hit)[0].1,
        1.0,
        "a stale serve is a cache hit"
    );
}

#[test]
fn a_delivery_whose_end_is_lost_still_settles_its_reservation() {
    let mut p = plan("GET", false, 2);
    p.first_step();
    p.on_head(answer(200, &[("content-type", "text/event-stream")]), 3);
    let s = p.settle(None);
    assert_eq!(
        s.outcomes.len(),
        1,
        "reported, so its in-flight reservation ends"
    );
    assert!(s.outcomes[0].1.ok && s.fill.is_none());
    assert_eq!(s.released, vec![("b".to_string(), false)]);
}
