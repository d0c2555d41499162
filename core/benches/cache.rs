//! `LruTtlCache` against the `lru` crate in the same run: get (hit) and put (with eviction), and
//! the hit ratio both reach on a Zipf(1.0) trace (printed as `hit_ratio ...` lines for
//! `make bench`). Both use `String` keys, as the cache shard does.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway_core::cache::{Lookup, LruTtlCache, PutOptions};
use gateway_core::UnixMillis;
use lru::LruCache;

const CAP: usize = 10_000;

fn opts() -> PutOptions {
    PutOptions {
        ttl_ms: 3_600_000,
        ..PutOptions::default()
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("titles/key-{i}")).collect()
}

fn get_hit(c: &mut Criterion) {
    let ks = keys(CAP);
    let mut g = c.benchmark_group("cache_get_hit");
    g.bench_function("gateway_core", |b| {
        let mut cache = LruTtlCache::new(CAP, u64::MAX);
        for k in &ks {
            let _ = cache.put(k.clone(), 1u64, 8, opts(), UnixMillis(0));
        }
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % CAP;
            black_box(matches!(
                cache.get(&ks[i], UnixMillis(1), false),
                Lookup::Fresh { .. }
            ))
        })
    });
    g.bench_function("lru", |b| {
        let mut cache = LruCache::new(NonZeroUsize::new(CAP).unwrap_or(NonZeroUsize::MIN));
        for k in &ks {
            cache.put(k.clone(), 1u64);
        }
        let mut i = 0;
        b.iter(|| {
            i = (i + 7919) % CAP;
            black_box(cache.get(&ks[i]).is_some())
        })
    });
    g.finish();
}

fn put_evicting(c: &mut Criterion) {
    let ks = keys(CAP * 2);
    let mut g = c.benchmark_group("cache_put_evicting");
    g.bench_function("gateway_core", |b| {
        let mut cache = LruTtlCache::new(CAP, u64::MAX);
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ks.len();
            black_box(
                cache
                    .put(ks[i].clone(), 1u64, 8, opts(), UnixMillis(0))
                    .map(|r| r.len())
                    .unwrap_or(0),
            )
        })
    });
    g.bench_function("lru", |b| {
        let mut cache = LruCache::new(NonZeroUsize::new(CAP).unwrap_or(NonZeroUsize::MIN));
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ks.len();
            black_box(cache.push(ks[i].clone(), 1u64).is_some())
        })
    });
    g.finish();
}

/// A Zipf(s = 1.0) sampler over `n` ranks with a fixed xorshift seed (reproducible trace).
fn zipf_trace(n: usize, len: usize) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for r in 1..=n {
        acc += 1.0 / r as f64;
        cdf.push(acc);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * acc;
            cdf.partition_point(|&c| c < u)
        })
        .collect()
}

fn hit_ratio(_: &mut Criterion) {
    let universe = 100_000;
    let trace = zipf_trace(universe, 500_000);
    let ks = keys(universe);
    for cap in [1_000usize, 10_000] {
        let mut ours = LruTtlCache::new(cap, u64::MAX);
        let mut theirs = LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN));
        let (mut h1, mut h2) = (0u64, 0u64);
        for &r in &trace {
            let k = &ks[r];
            if matches!(ours.get(k, UnixMillis(1), false), Lookup::Fresh { .. }) {
                h1 += 1;
            } else {
                let _ = ours.put(k.clone(), (), 0, opts(), UnixMillis(1));
            }
            if theirs.get(k).is_some() {
                h2 += 1;
            } else {
                theirs.put(k.clone(), ());
            }
        }
        let n = trace.len() as f64;
        println!(
            "hit_ratio zipf1.0 universe={universe} capacity={cap} requests={} gateway_core={:.4} lru={:.4}",
            trace.len(),
            h1 as f64 / n,
            h2 as f64 / n
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = get_hit, put_evicting, hit_ratio
}
criterion_main!(benches);
