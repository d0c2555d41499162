//! CacheShardDO through the front worker.

use std::time::{Duration, Instant};

use gateway_e2e::eventually;

use crate::rate_limiter::gateway_core_shard;
use crate::{shared, unique};

#[test]
fn put_then_get_is_a_hit_with_age_and_content_type() {
    let rt = &shared().rt;
    let path = format!("/v1/cache/titles/{}", unique("hit"));
    let r = rt.send(
        "PUT",
        &path,
        &[
            ("Content-Type", "text/plain"),
            ("Cache-Control", "max-age=120"),
        ],
        Some(b"dune"),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["ttl_s"], 120);
    let r = rt.get(&path);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"dune");
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.header("age").unwrap().parse::<u64>().unwrap() <= 1);
    let ttl: u64 = r
        .header("cache-control")
        .unwrap()
        .trim_start_matches("max-age=")
        .parse()
        .unwrap();
    assert!((118..=120).contains(&ttl));
}

#[test]
fn miss_is_404_problem_with_x_cache_miss() {
    let rt = &shared().rt;
    let r = rt.get(&format!("/v1/cache/titles/{}", unique("miss")));
    r.assert_problem(404);
    assert_eq!(r.header("x-cache"), Some("MISS"));
}

#[test]
fn entry_expires_within_a_second_of_its_ttl() {
    let rt = &shared().rt;
    let path = format!("/v1/cache/titles/{}", unique("ttl"));
    let stored = Instant::now();
    assert_eq!(
        rt.send("PUT", &path, &[("Cache-Control", "max-age=1")], Some(b"x"))
            .status,
        201
    );
    assert_eq!(rt.get(&path).status, 200, "fresh right after the put");
    let gone = eventually(Duration::from_secs(5), "entry to expire", || {
        let r = rt.get(&path);
        (r.status == 404).then_some(Instant::now())
    });
    let elapsed = gone.duration_since(stored);
    assert!(
        elapsed >= Duration::from_millis(900),
        "expired too early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(2),
        "expired too late: {elapsed:?}"
    );
}

#[test]
fn delete_removes_and_reports_whether_it_existed() {
    let rt = &shared().rt;
    let path = format!("/v1/cache/titles/{}", unique("del"));
    rt.send("PUT", &path, &[], Some(b"v"));
    assert_eq!(rt.send("DELETE", &path, &[], None).json()["deleted"], true);
    assert_eq!(rt.send("DELETE", &path, &[], None).json()["deleted"], false);
    assert_eq!(rt.get(&path).status, 404);
}

#[test]
fn expiry_sweep_alarm_fires_and_removes_expired_entries() {
    let rt = &shared().rt;
    let key = unique("sweep");
    let path = format!("/v1/cache/sweepns/{key}");
    assert_eq!(
        rt.send(
            "PUT",
            &path,
            &[("Cache-Control", "max-age=1")],
            Some(b"bye")
        )
        .status,
        201
    );
    let shard = gateway_core_shard(&format!("sweepns/{key}"), 16);
    eventually(
        Duration::from_secs(20),
        "the sweep alarm to remove the expired entry",
        || {
            let s = rt.get(&format!("/v1/stats/cache/{shard}")).json();
            (s["object"]["alarm"]["runs"].as_u64().unwrap_or(0) >= 1
                && s["swept"].as_u64().unwrap_or(0) >= 1)
                .then_some(())
        },
    );
}
