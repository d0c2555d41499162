//! The core rate-limit decision against `governor` (GCRA, the reference Rust rate limiter), in
//! the same run: one key, and 1 000 keys. Both use a fake clock advanced by 1 µs per decision,
//! and a quota large enough that every decision admits (the common case on the hot path).
//! `make bench` reports the ratios in docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway_core::rate_limit::{self, TokenBucketPolicy};
use gateway_core::UnixMillis;
use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter};

const RATE: u32 = 1_000_000_000;
const KEYS: u32 = 1_000;

fn policy() -> TokenBucketPolicy {
    TokenBucketPolicy {
        capacity: u64::from(RATE),
        refill: u64::from(RATE),
        period_ms: 1000,
    }
}

fn single_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit_single_key");
    let p = policy();
    g.bench_function("gateway_core", |b| {
        let mut tat = None;
        let mut now_us = 1_700_000_000_000_000i64;
        b.iter(|| {
            now_us += 1;
            let (d, new) = rate_limit::take(&p, tat, 1, UnixMillis(now_us / 1000))
                .unwrap_or_else(|_| unreachable!());
            if new.is_some() {
                tat = new;
            }
            black_box(d.allowed)
        })
    });
    g.bench_function("governor", |b| {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::direct_with_clock(
            Quota::per_second(NonZeroU32::new(RATE).unwrap_or(NonZeroU32::MIN)),
            clock.clone(),
        );
        b.iter(|| {
            clock.advance(Duration::from_micros(1));
            black_box(lim.check().is_ok())
        })
    });
    g.finish();
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit_keyed_1000");
    let p = policy();
    g.bench_function("gateway_core", |b| {
        let mut tats: HashMap<u32, i64> = HashMap::new();
        let mut now_us = 1_700_000_000_000_000i64;
        let mut k = 0u32;
        b.iter(|| {
            now_us += 1;
            k = (k + 7919) % KEYS;
            let tat = tats.get(&k).copied();
            let (d, new) = rate_limit::take(&p, tat, 1, UnixMillis(now_us / 1000))
                .unwrap_or_else(|_| unreachable!());
            if let Some(t) = new {
                tats.insert(k, t);
            }
            black_box(d.allowed)
        })
    });
    g.bench_function("governor", |b| {
        let clock = FakeRelativeClock::default();
        let lim = RateLimiter::dashmap_with_clock(
            Quota::per_second(NonZeroU32::new(RATE).unwrap_or(NonZeroU32::MIN)),
            clock.clone(),
        );
        let mut k = 0u32;
        b.iter(|| {
            clock.advance(Duration::from_micros(1));
            k = (k + 7919) % KEYS;
            black_box(lim.check_key(&k).is_ok())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = single_key, keyed
}
criterion_main!(benches);
