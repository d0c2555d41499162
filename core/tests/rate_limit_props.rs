//! Property tests of the token bucket against its invariants, on random operation sequences.

use gateway_core::rate_limit::{peek, take, TokenBucketPolicy};
use gateway_core::UnixMillis;
use proptest::prelude::*;

fn policy() -> impl Strategy<Value = TokenBucketPolicy> {
    (1u64..50, 1u64..20, 1u64..5_000).prop_map(|(capacity, refill, period_ms)| TokenBucketPolicy {
        capacity,
        refill,
        period_ms,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Tokens never exceed capacity or go negative; a denied request changes nothing; admitted
    /// tokens over any window never exceed capacity + refill over that window.
    #[test]
    fn bucket_invariants_hold(p in policy(), ops in prop::collection::vec((0i64..2_000, 1u64..60), 1..200)) {
        let mut now = 1_700_000_000_000i64;
        let start = now;
        let mut tat = None;
        let mut admitted = 0u64;
        for (dt, cost) in ops {
            now += dt;
            let t = UnixMillis(now);
            let before = peek(&p, tat, 1, t).unwrap();
            prop_assert!(before.remaining <= p.capacity);
            match take(&p, tat, cost, t) {
                Err(e) => {
                    prop_assert!(cost > p.capacity);
                    prop_assert_eq!(e.status(), 400);
                }
                Ok((d, new_tat)) => {
                    prop_assert!(d.remaining <= p.capacity);
                    if d.allowed {
                        prop_assert!(before.remaining >= cost, "admitted more than was there");
                        prop_assert_eq!(d.remaining, before.remaining - cost);
                        admitted += cost;
                        tat = new_tat;
                    } else {
                        prop_assert!(new_tat.is_none(), "a denial must not change state");
                        prop_assert!(before.remaining < cost);
                        prop_assert!(d.retry_after_ms > 0);
                        let after = peek(&p, tat, 1, t).unwrap();
                        prop_assert_eq!(after.remaining, before.remaining);
                    }
                }
            }
        }
        // Upper bound on admissions: a full bucket plus everything refilled since the start.
        let elapsed_us = (now - start) as u128 * 1000;
        let refilled = elapsed_us / p.interval_us() as u128;
        prop_assert!(u128::from(admitted) <= u128::from(p.capacity) + refilled);
    }

    /// Waiting exactly the announced Retry-After makes the same request pass.
    #[test]
    fn retry_after_is_sufficient(p in policy(), first_raw in 0u64..1000, cost_raw in 0u64..1000) {
        let first = 1 + first_raw % p.capacity;
        let cost = 1 + cost_raw % p.capacity;
        let t0 = UnixMillis(1_000_000);
        let (_, tat) = take(&p, None, first, t0).unwrap();
        let (d, _) = take(&p, tat, cost, t0).unwrap();
        if !d.allowed {
            let later = t0.plus_ms(d.retry_after_ms as i64);
            prop_assert!(take(&p, tat, cost, later).unwrap().0.allowed);
            // And it is tight: it is rounded up to whole milliseconds, so 1 ms earlier is too early.
            let before = t0.plus_ms(d.retry_after_ms as i64 - 1);
            prop_assert!(!take(&p, tat, cost, before).unwrap().0.allowed);
        }
    }
}
