//! Unit tests of the LRU/TTL cache and of `Cache-Control` parsing.

use super::*;

fn t(ms: i64) -> UnixMillis {
    UnixMillis(ms)
}

fn ttl(ms: u64) -> PutOptions {
    PutOptions {
        ttl_ms: ms,
        ..PutOptions::default()
    }
}

#[test]
fn evicts_least_recently_used_first() {
    let mut c = LruTtlCache::new(2, 1 << 20);
    c.put("a".into(), 1, 1, ttl(1000), t(0)).unwrap();
    c.put("b".into(), 2, 1, ttl(1000), t(0)).unwrap();
    assert!(matches!(
        c.get("a", t(1), false),
        Lookup::Fresh { value: 1, .. }
    ));
    let removed = c.put("c".into(), 3, 1, ttl(1000), t(2)).unwrap();
    assert_eq!(
        removed,
        vec![Removed {
            key: "b".into(),
            cause: EvictionCause::Capacity
        }]
    );
    assert_eq!(c.keys_lru_first(), vec!["a", "c"]);
}

#[test]
fn byte_cap_holds_and_oversize_entries_are_refused() {
    let cap = 3 * LruTtlCache::<()>::weight_of("k0", 10, &[]);
    let mut c = LruTtlCache::new(100, cap);
    for i in 0..10 {
        c.put(format!("k{i}"), (), 10, ttl(1000), t(0)).unwrap();
        assert!(c.bytes() <= cap);
    }
    assert_eq!(c.len(), 3);
    assert_eq!(c.counters().evicted_bytes, 7);
    assert!(c.put("big".into(), (), cap, ttl(1000), t(0)).is_err());
    assert_eq!(c.len(), 3, "a refused put evicts nothing");
}

#[test]
fn expires_at_ttl_and_alarm_sweeps() {
    let mut c = LruTtlCache::new(10, 1 << 20);
    c.put("a".into(), 1, 1, ttl(100), t(0)).unwrap();
    c.put("b".into(), 2, 1, ttl(200), t(0)).unwrap();
    assert_eq!(c.next_deadline(), Some(t(100)));
    assert!(matches!(
        c.get("a", t(99), false),
        Lookup::Fresh {
            age_ms: 99,
            ttl_left_ms: 1,
            ..
        }
    ));
    assert_eq!(c.get("a", t(100), false), Lookup::Expired);
    let swept = c.on_alarm(t(200));
    assert_eq!(
        swept,
        vec![Removed {
            key: "b".into(),
            cause: EvictionCause::Expired
        }]
    );
    assert!(c.is_empty());
    assert_eq!(c.bytes(), 0);
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn stale_windows_serve_stale_then_only_on_error_then_nothing() {
    let mut c = LruTtlCache::new(10, 1 << 20);
    let opts = PutOptions {
        ttl_ms: 100,
        stale_while_revalidate_ms: 50,
        stale_if_error_ms: 500,
        ..PutOptions::default()
    };
    c.put("a".into(), 7, 1, opts, t(0)).unwrap();
    assert!(matches!(
        c.get("a", t(120), false),
        Lookup::Stale {
            value: 7,
            age_ms: 120,
            ..
        }
    ));
    assert_eq!(
        c.get("a", t(200), false),
        Lookup::Expired,
        "past SWR, origin fine: unusable"
    );
    assert!(matches!(
        c.get("a", t(200), true),
        Lookup::StaleIfError { value: 7, .. }
    ));
    assert_eq!(c.next_deadline(), Some(t(600)));
    assert!(c.on_alarm(t(599)).is_empty());
    assert_eq!(c.on_alarm(t(600)).len(), 1);
    assert_eq!(c.counters().stale_hits, 2);
}

#[test]
fn purge_by_tag_removes_exactly_the_tagged_entries() {
    let mut c = LruTtlCache::new(10, 1 << 20);
    let tagged = |tags: &[&str]| PutOptions {
        ttl_ms: 1000,
        tags: tags.iter().map(|s| s.to_string()).collect(),
        ..PutOptions::default()
    };
    c.put("a".into(), 1, 1, tagged(&["x"]), t(0)).unwrap();
    c.put("b".into(), 2, 1, tagged(&["x", "y"]), t(0)).unwrap();
    c.put("c".into(), 3, 1, tagged(&["y"]), t(0)).unwrap();
    c.put("d".into(), 4, 1, tagged(&[]), t(0)).unwrap();
    let mut purged: Vec<String> = c
        .purge_tags(&["x".into()])
        .into_iter()
        .map(|r| r.key)
        .collect();
    purged.sort();
    assert_eq!(purged, vec!["a", "b"]);
    assert_eq!(c.keys_lru_first(), vec!["c", "d"]);
    assert_eq!(c.purge_tags(&["x".into()]).len(), 0);
    assert_eq!(c.purge_tags(&["y".into(), "nope".into()]).len(), 1);
}

#[test]
fn replacing_a_key_keeps_one_entry() {
    let mut c = LruTtlCache::new(10, 1 << 20);
    c.put("a".into(), 1, 5, ttl(100), t(0)).unwrap();
    let r = c.put("a".into(), 2, 7, ttl(100), t(1)).unwrap();
    assert_eq!(r[0].cause, EvictionCause::Replaced);
    assert_eq!(c.len(), 1);
    assert_eq!(c.bytes(), LruTtlCache::<u8>::weight_of("a", 7, &[]));
}

#[test]
fn max_age_is_read_and_validated() {
    assert_eq!(parse_max_age("public, max-age=60").unwrap(), Some(60));
    assert_eq!(parse_max_age("MAX-AGE=\"5\"").unwrap(), Some(5));
    assert_eq!(parse_max_age("no-cache").unwrap(), None);
    assert!(parse_max_age("max-age=0").is_err());
    assert!(parse_max_age("max-age=-1").is_err());
    assert!(parse_max_age("max-age=abc").is_err());
    assert!(parse_max_age("max-age=99999999999999999999").is_err());
}
