//! Cache caps and LRU order, on a runtime of its own with ONE small cache shard (20 entries,
//! 8 KiB), so no other test's entries share it.

use gateway_e2e::{mock_upstream, temp_dir, test_vars, Runtime};

#[test]
fn lru_evicts_first_and_caps_hold_after_ten_times_the_capacity() {
    let upstream = mock_upstream::start("127.0.0.1:0").expect("mock upstream");
    let mut vars = test_vars(&upstream.url());
    vars.push(("CACHE_SHARDS", "1".into()));
    vars.push(("CACHE_MAX_ENTRIES", "20".into()));
    vars.push(("CACHE_MAX_BYTES", "8192".into()));
    vars.push(("CACHE_SWEEP_INTERVAL_MS", "60000".into()));
    let dir = temp_dir("caps");
    let rt = Runtime::start(&dir, &vars);

    // Least recently used goes first.
    for i in 0..20 {
        assert_eq!(
            rt.send("PUT", &format!("/v1/cache/lru/k{i}"), &[], Some(b"v"))
                .status,
            201
        );
    }
    assert_eq!(
        rt.get("/v1/cache/lru/k0").status,
        200,
        "touch k0: now most recent"
    );
    let r = rt.send("PUT", "/v1/cache/lru/k20", &[], Some(b"v"));
    assert_eq!(r.json()["evicted"], 1);
    assert_eq!(
        rt.get("/v1/cache/lru/k1").status,
        404,
        "k1 was least recently used"
    );
    assert_eq!(rt.get("/v1/cache/lru/k0").status, 200, "k0 survived");

    // 10x the entry capacity in mixed sizes (up to ~1.5 KiB): both caps hold after every write.
    let mut max_entries = 0;
    let mut max_bytes = 0;
    for i in 0..200usize {
        let size = [10, 300, 1500, 64, 900][i % 5];
        let r = rt.send(
            "PUT",
            &format!("/v1/cache/caps/{i}"),
            &[],
            Some(&vec![b'x'; size]),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let s = rt.get("/v1/stats/cache/0").json();
        max_entries = max_entries.max(s["entries"].as_u64().unwrap());
        max_bytes = max_bytes.max(s["bytes"].as_u64().unwrap());
    }
    println!("after 200 writes: max entries seen {max_entries} (cap 20), max bytes seen {max_bytes} (cap 8192)");
    assert!(max_entries <= 20);
    assert!(max_bytes <= 8192);
    // An entry bigger than the whole shard is refused, and evicts nothing.
    let before = rt.get("/v1/stats/cache/0").json()["entries"].clone();
    rt.send("PUT", "/v1/cache/caps/huge", &[], Some(&vec![b'x'; 9000]))
        .assert_problem(413);
    assert_eq!(rt.get("/v1/stats/cache/0").json()["entries"], before);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
