//! Token-bucket rate limiting as GCRA (the generic cell rate algorithm).
//!
//! A bucket of `capacity` tokens refilled at `refill` tokens per `period_ms` is fully described by
//! one integer: its **theoretical arrival time** (TAT), the instant at which the bucket would be
//! full again. With emission interval `T = period / refill` and burst window `B = capacity * T`:
//!
//! - taking `cost` tokens at `now` moves the TAT to `max(tat, now) + cost * T`;
//! - it is allowed iff the new TAT is at most `now + B` (the bucket never goes negative);
//! - remaining tokens are `floor((now + B - new_tat) / T)`; the bucket is full again at the TAT.
//!
//! A denied request changes nothing. A bucket whose TAT is not after `now` is full, so it carries
//! no information and can be deleted without changing any future decision: that is what the idle
//! garbage collection does.
//!
//! Times are microseconds (TATs persist as integers that stay exact through JavaScript numbers);
//! `T` is rounded down to a whole microsecond, so refill is at most 1 µs per token early.

use serde::{Deserialize, Serialize};

use crate::{GatewayError, UnixMillis};

pub mod policy;
pub mod sliding;

/// Largest accepted capacity or refill amount.
pub const MAX_TOKENS: u64 = 1_000_000_000;
/// Longest accepted refill period: 30 days.
pub const MAX_PERIOD_MS: u64 = 30 * 24 * 3_600_000;

/// A token-bucket policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketPolicy {
    /// Bucket size: the largest burst admitted at once.
    pub capacity: u64,
    /// Tokens added per `period_ms`.
    pub refill: u64,
    /// The refill period in milliseconds.
    pub period_ms: u64,
}

impl TokenBucketPolicy {
    /// Validates the numbers: every field in `1..=` its documented maximum.
    pub fn validated(self) -> Result<Self, GatewayError> {
        let bad = |d: String| Err(GatewayError::bad_request("invalid-policy", d));
        if !(1..=MAX_TOKENS).contains(&self.capacity) {
            return bad(format!("capacity must be 1..={MAX_TOKENS}"));
        }
        if !(1..=MAX_TOKENS).contains(&self.refill) {
            return bad(format!("refill must be 1..={MAX_TOKENS}"));
        }
        if !(1..=MAX_PERIOD_MS).contains(&self.period_ms) {
            return bad(format!("period_ms must be 1..={MAX_PERIOD_MS}"));
        }
        Ok(self)
    }

    /// Emission interval `T` in microseconds (at least 1).
    pub fn interval_us(&self) -> i64 {
        let t = (u128::from(self.period_ms) * 1000) / u128::from(self.refill.max(1));
        i64::try_from(t).unwrap_or(i64::MAX).max(1)
    }

    /// Burst window `B = capacity * T` in microseconds.
    pub fn burst_us(&self) -> i64 {
        self.interval_us()
            .saturating_mul(i64::try_from(self.capacity).unwrap_or(i64::MAX))
    }
}

/// The state of one bucket: its theoretical arrival time in microseconds since the epoch.
/// `None` (no stored row) means a full bucket.
pub type Tat = Option<i64>;

/// The outcome of a take or peek. A denial is a value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The policy's capacity.
    pub limit: u64,
    /// Tokens left after this decision.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again (rounded up).
    pub reset_ms: u64,
    /// When denied: milliseconds until the same request would be admitted (rounded up); else 0.
    pub retry_after_ms: u64,
    /// Tokens this request asked for.
    pub cost: u64,
}

fn ceil_ms(us: i64) -> u64 {
    u64::try_from(us.max(0)).unwrap_or(0).div_ceil(1000)
}

fn now_us(now: UnixMillis) -> i64 {
    now.0.saturating_mul(1000)
}

/// Decides whether `cost` tokens can be taken. Returns the decision and, when allowed, the new
/// TAT to persist (`None` when the decision changes nothing, i.e. it was denied).
pub fn take(
    policy: &TokenBucketPolicy,
    tat: Tat,
    cost: u64,
    now: UnixMillis,
) -> Result<(Decision, Option<i64>), GatewayError> {
    if cost == 0 || cost > policy.capacity {
        return Err(GatewayError::bad_request(
            "invalid-cost",
            format!("cost must be 1..={} for this policy", policy.capacity),
        ));
    }
    let t = policy.interval_us();
    let burst = policy.burst_us();
    let now = now_us(now);
    let base = tat.map_or(now, |tat| tat.max(now));
    let cost_i = i64::try_from(cost).unwrap_or(i64::MAX);
    let new_tat = base.saturating_add(t.saturating_mul(cost_i));
    let allow_at = new_tat.saturating_sub(burst);
    if allow_at <= now {
        let remaining = (now + burst - new_tat) / t;
        Ok((
            Decision {
                allowed: true,
                limit: policy.capacity,
                remaining: u64::try_from(remaining).unwrap_or(0).min(policy.capacity),
                reset_ms: ceil_ms(new_tat - now),
                retry_after_ms: 0,
                cost,
            },
            Some(new_tat),
        ))
    } else {
        let remaining = (now + burst - base).max(0) / t;
        Ok((
            Decision {
                allowed: false,
                limit: policy.capacity,
                remaining: u64::try_from(remaining).unwrap_or(0).min(policy.capacity),
                reset_ms: ceil_ms(base - now),
                retry_after_ms: ceil_ms(allow_at - now),
                cost,
            },
            None,
        ))
    }
}

/// Decides without consuming: `allowed` says whether `cost` tokens could be taken now,
/// `remaining` is the tokens in the bucket now (before any cost), `reset_ms` the time until it is
/// full, and `retry_after_ms` the wait until `cost` tokens are available.
pub fn peek(
    policy: &TokenBucketPolicy,
    tat: Tat,
    cost: u64,
    now: UnixMillis,
) -> Result<Decision, GatewayError> {
    let (would, _) = take(policy, tat, cost, now)?;
    let now_us = now_us(now);
    let base = tat.map_or(now_us, |tat| tat.max(now_us));
    let remaining = (now_us + policy.burst_us() - base).max(0) / policy.interval_us();
    Ok(Decision {
        remaining: u64::try_from(remaining).unwrap_or(0).min(policy.capacity),
        reset_ms: ceil_ms(base - now_us),
        ..would
    })
}

/// Whether a stored TAT carries no information any more (the bucket is full at `now`).
pub fn is_idle(tat: i64, now: UnixMillis) -> bool {
    tat <= now_us(now)
}

/// The microsecond timestamp below which stored TATs are idle (for a `DELETE ... WHERE`).
pub fn idle_cutoff_us(now: UnixMillis) -> i64 {
    now_us(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: TokenBucketPolicy = TokenBucketPolicy {
        capacity: 5,
        refill: 1,
        period_ms: 1000,
    };

    #[test]
    fn admits_exactly_capacity_then_denies() {
        let now = UnixMillis(1_000_000);
        let mut tat = None;
        for i in 0..5 {
            let (d, new) = take(&P, tat, 1, now).unwrap();
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 4 - i);
            tat = new;
        }
        let (d, new) = take(&P, tat, 1, now).unwrap();
        assert!(!d.allowed);
        assert_eq!(new, None, "a denial changes nothing");
        assert_eq!(d.retry_after_ms, 1000);
        assert_eq!(d.reset_ms, 5000);
    }

    #[test]
    fn refills_one_token_per_interval() {
        let now = UnixMillis(0);
        let (_, tat) = take(&P, None, 5, now).unwrap();
        let (d, _) = take(&P, tat, 1, UnixMillis(999)).unwrap();
        assert!(!d.allowed);
        let (d, _) = take(&P, tat, 1, UnixMillis(1000)).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn cost_above_capacity_is_an_error_not_a_lockout() {
        assert_eq!(take(&P, None, 6, UnixMillis(0)).unwrap_err().status(), 400);
        assert_eq!(take(&P, None, 0, UnixMillis(0)).unwrap_err().status(), 400);
        // The bucket is untouched and still admits a full burst.
        assert!(take(&P, None, 5, UnixMillis(0)).unwrap().0.allowed);
    }

    #[test]
    fn idle_bucket_equals_missing_bucket() {
        let (_, tat) = take(&P, None, 2, UnixMillis(0)).unwrap();
        let tat = tat.unwrap();
        assert!(!is_idle(tat, UnixMillis(1999)));
        assert!(is_idle(tat, UnixMillis(2000)));
        let later = UnixMillis(2000);
        assert_eq!(
            take(&P, Some(tat), 5, later).unwrap().0,
            take(&P, None, 5, later).unwrap().0
        );
    }

    #[test]
    fn peek_reports_current_tokens_and_changes_nothing() {
        let (_, tat) = take(&P, None, 2, UnixMillis(0)).unwrap();
        let d = peek(&P, tat, 1, UnixMillis(0)).unwrap();
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_ms, d.retry_after_ms), (3, 2000, 0));
        let d = peek(&P, tat, 4, UnixMillis(0)).unwrap();
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.retry_after_ms), (3, 1000));
        assert_eq!(peek(&P, None, 1, UnixMillis(0)).unwrap().remaining, 5);
    }

    #[test]
    fn rejects_nonsense_policies() {
        let bad = [
            TokenBucketPolicy { capacity: 0, ..P },
            TokenBucketPolicy { refill: 0, ..P },
            TokenBucketPolicy { period_ms: 0, ..P },
            TokenBucketPolicy {
                capacity: MAX_TOKENS + 1,
                ..P
            },
        ];
        for p in bad {
            assert!(p.validated().is_err(), "{p:?}");
        }
    }
}
