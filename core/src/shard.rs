//! Stable shard routing: a key -> the name of the Durable Object that owns it.
//!
//! The hash is **64-bit FNV-1a** over the key's UTF-8 bytes (offset basis `0xcbf29ce484222325`,
//! prime `0x100000001b3`), reduced with `hash % shard_count`. FNV-1a is tiny, has no seed (so it is
//! the same in every isolate, version and language), and is good enough for spreading keys that
//! are not chosen by an adversary to collide. The Durable Object name is
//! `"{kind}:{shard}"`, e.g. `cache:7`.
//!
//! Changing this function (or a shard count in production) moves keys to other objects, which
//! silently drops their state; `tests::shard_assignment_is_pinned` exists so that can never
//! happen by accident.

/// 64-bit FNV-1a over `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The shard index in `0..shard_count` that owns `key`. A shard count of 0 is treated as 1.
pub fn shard_index(key: &str, shard_count: u32) -> u32 {
    let n = u64::from(shard_count.max(1));
    (fnv1a64(key.as_bytes()) % n) as u32
}

/// The Durable Object name for `key` among `shard_count` shards of `kind`.
pub fn shard_name(kind: &str, key: &str, shard_count: u32) -> String {
    format!("{kind}:{}", shard_index(key, shard_count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_test_vectors() {
        // Vectors from the FNV reference (draft-eastlake-fnv, "test vectors").
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shard_assignment_is_pinned() {
        // If this test fails, shard assignment changed: every deployed key would move to another
        // Durable Object. Do not update these values without a data migration. The expected values
        // were computed by an independent Python implementation of FNV-1a, not by this code.
        let pinned = [
            ("user:42", 16, 2),
            ("tenant-a/title-search", 16, 9),
            ("", 16, 5),
            ("a", 8, 4),
            ("foobar", 64, 40),
        ];
        for (key, n, expected) in pinned {
            assert_eq!(shard_index(key, n), expected, "key {key:?} of {n}");
        }
        assert_eq!(shard_name("cache", "user:42", 16), "cache:2");
    }

    #[test]
    fn zero_shards_means_one() {
        assert_eq!(shard_index("anything", 0), 0);
    }

    #[test]
    fn spreads_keys_roughly_evenly() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[shard_index(&format!("key-{i}"), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven shard counts {counts:?}");
        }
    }
}
