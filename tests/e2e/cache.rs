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

fn put(path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let r = shared().rt.send("PUT", path, headers, Some(body));
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn purge_by_tag_removes_exactly_the_tagged_entries() {
    let rt = &shared().rt;
    let tag = unique("tag").replace('-', "_");
    let other = unique("other").replace('-', "_");
    let keys: Vec<String> = (0..12)
        .map(|i| format!("/v1/cache/purgens/{}", unique(&format!("p{i}"))))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let tags = if i % 3 == 0 {
            format!("{tag}, {other}")
        } else if i % 3 == 1 {
            tag.clone()
        } else {
            other.clone()
        };
        put(k, &[("Cache-Tag", &tags)], b"v");
    }
    let r = rt.admin(
        "POST",
        "/v1/cache/purge",
        &serde_json::json!({"tags": [tag]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"], 8);
    for (i, k) in keys.iter().enumerate() {
        let want = if i % 3 == 2 { 200 } else { 404 };
        assert_eq!(rt.get(k).status, want, "entry {i}");
    }
    let body = serde_json::json!({"tags": ["x"]}).to_string();
    rt.send("POST", "/v1/cache/purge", &[], Some(body.as_bytes()))
        .assert_problem(401);
    rt.admin("POST", "/v1/cache/purge", &serde_json::json!({"tags": []}))
        .assert_problem(400);
    rt.admin(
        "POST",
        "/v1/cache/purge",
        &serde_json::json!({"tags": ["bad tag"]}),
    )
    .assert_problem(400);
}

#[test]
fn stale_entry_is_served_stale_and_exactly_one_caller_gets_the_refresh_lease() {
    let s = shared();
    let path = format!("/v1/cache/swr/{}", unique("stale"));
    put(
        &path,
        &[("Cache-Control", "max-age=1, stale-while-revalidate=60")],
        b"old",
    );
    std::thread::sleep(Duration::from_millis(1300));
    let url = s.rt.url(&path);
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                gateway_e2e::send("GET", &url, &[("X-Cache-Fill", "lease")], None)
            })
        })
        .collect();
    let resps: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &resps {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache"), Some("STALE"));
        assert_eq!(r.body, b"old");
    }
    let leases = resps
        .iter()
        .filter(|r| r.header("x-cache-lease").is_some())
        .count();
    assert_eq!(leases, 1, "exactly one refill");
    put(&path, &[("Cache-Control", "max-age=60")], b"new");
    let r = s.rt.get(&path);
    assert_eq!(
        (r.header("x-cache"), r.body.as_slice()),
        (Some("HIT"), b"new".as_slice())
    );
}

#[test]
fn concurrent_misses_for_one_key_cause_one_fill() {
    let s = shared();
    let path = format!("/v1/cache/coalesce/{}", unique("miss"));
    let url = s.rt.url(&path);
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = gateway_e2e::send("GET", &url, &[("X-Cache-Fill", "lease")], None);
                if r.header("x-cache-lease").is_some() {
                    // This caller fills (one upstream call), a little later.
                    std::thread::sleep(Duration::from_millis(300));
                    let put = gateway_e2e::send(
                        "PUT",
                        &url,
                        &[("Cache-Control", "max-age=60")],
                        Some(b"filled"),
                    );
                    assert_eq!(put.status, 201);
                    (true, r.status)
                } else {
                    (false, r.status)
                }
            })
        })
        .collect();
    let results: Vec<(bool, u16)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let fills = results.iter().filter(|(filled, _)| *filled).count();
    assert_eq!(fills, 1, "one fill for ten concurrent misses: {results:?}");
    for (filled, status) in results {
        if !filled {
            assert_eq!(status, 200, "waiters got the filled value");
        }
    }
}

#[test]
fn negative_entries_and_stale_if_error() {
    let rt = &shared().rt;
    let neg = format!("/v1/cache/neg/{}", unique("nf"));
    put(
        &neg,
        &[("X-Cache-Negative", "1"), ("Cache-Control", "max-age=60")],
        b"",
    );
    let r = rt.get(&neg);
    r.assert_problem(404);
    assert_eq!(
        (r.header("x-cache"), r.header("x-cache-negative")),
        (Some("HIT"), Some("1"))
    );
    let sie = format!("/v1/cache/sie/{}", unique("sie"));
    put(
        &sie,
        &[("Cache-Control", "max-age=1, stale-if-error=300")],
        b"backup",
    );
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        rt.get(&sie).header("x-cache"),
        Some("EXPIRED"),
        "origin fine: not served"
    );
    let r = rt.get(&format!("{sie}?stale-if-error=1"));
    assert_eq!(
        (r.status, r.header("x-cache"), r.body.as_slice()),
        (200, Some("STALE"), b"backup".as_slice())
    );
}
