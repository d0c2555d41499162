//! The LRU + TTL cache against a simple reference model (a list in recency order), on random
//! get / put / delete / advance-time / sweep sequences. Caps must hold after every step.

use gateway_core::cache::{EvictionCause, Lookup, LruTtlCache, PutOptions};
use gateway_core::UnixMillis;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Put(u8, u64, u64),
    Delete(u8),
    Advance(i64),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12).prop_map(Op::Get),
        4 => (0u8..12, 0u64..300, 1u64..2_000).prop_map(|(k, len, ttl)| Op::Put(k, len, ttl)),
        1 => (0u8..12).prop_map(Op::Delete),
        2 => (0i64..1_500).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

/// Reference: entries in recency order (least recent first): (key, value, weight, expires_at).
struct Model {
    entries: Vec<(String, u64, u64, i64)>,
    max_entries: usize,
    max_bytes: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.2).sum()
    }
    fn pos(&self, k: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.0 == k)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cache_agrees_with_the_reference_model(max_entries in 1usize..8, max_kib in 1u64..3, ops in prop::collection::vec(op(), 1..300)) {
        let max_bytes = max_kib * 1024 / 2;
        let mut cache = LruTtlCache::new(max_entries, max_bytes);
        let mut model = Model { entries: Vec::new(), max_entries, max_bytes };
        let mut now = 0i64;
        for op in ops {
            match op {
                Op::Get(k) => {
                    let key = format!("k{k}");
                    let got = cache.get(&key, UnixMillis(now), false);
                    match model.pos(&key) {
                        None => prop_assert_eq!(got, Lookup::Miss),
                        Some(i) if model.entries[i].3 <= now => {
                            prop_assert_eq!(got, Lookup::Expired);
                            model.entries.remove(i);
                        }
                        Some(i) => {
                            let e = model.entries.remove(i);
                            match got {
                                Lookup::Fresh { value, .. } => prop_assert_eq!(*value, e.1),
                                other => prop_assert!(false, "expected hit, got {:?}", other),
                            }
                            model.entries.push(e);
                        }
                    }
                }
                Op::Put(k, len, ttl) => {
                    let key = format!("k{k}");
                    let weight = LruTtlCache::<u64>::weight_of(&key, len, &[]);
                    let opts = PutOptions { ttl_ms: ttl, ..PutOptions::default() };
                    let result = cache.put(key.clone(), len, len, opts, UnixMillis(now));
                    if weight > model.max_bytes {
                        prop_assert!(result.is_err());
                        continue;
                    }
                    let removed = result.unwrap();
                    let mut expected = Vec::new();
                    if let Some(i) = model.pos(&key) {
                        model.entries.remove(i);
                        expected.push((key.clone(), EvictionCause::Replaced));
                    }
                    while model.entries.len() >= model.max_entries || model.bytes() + weight > model.max_bytes {
                        let cause = if model.entries.len() >= model.max_entries { EvictionCause::Capacity } else { EvictionCause::Bytes };
                        let e = model.entries.remove(0);
                        expected.push((e.0, cause));
                    }
                    model.entries.push((key, len, weight, now + ttl as i64));
                    let got: Vec<_> = removed.into_iter().map(|r| (r.key, r.cause)).collect();
                    prop_assert_eq!(got, expected);
                }
                Op::Delete(k) => {
                    let key = format!("k{k}");
                    let existed = model.pos(&key).map(|i| model.entries.remove(i)).is_some();
                    prop_assert_eq!(cache.delete(&key), existed);
                }
                Op::Advance(dt) => now += dt,
                Op::Sweep => {
                    let mut swept: Vec<String> = cache.on_alarm(UnixMillis(now)).into_iter().map(|r| r.key).collect();
                    let mut expected: Vec<String> = model.entries.iter().filter(|e| e.3 <= now).map(|e| e.0.clone()).collect();
                    model.entries.retain(|e| e.3 > now);
                    swept.sort();
                    expected.sort();
                    prop_assert_eq!(swept, expected);
                }
            }
            prop_assert!(cache.len() <= max_entries, "entry cap");
            prop_assert!(cache.bytes() <= max_bytes, "byte cap");
            prop_assert_eq!(cache.len(), model.entries.len());
            prop_assert_eq!(cache.bytes(), model.bytes());
            let order: Vec<&str> = model.entries.iter().map(|e| e.0.as_str()).collect();
            prop_assert_eq!(cache.keys_lru_first(), order);
        }
    }
}
