//! Sliding-window limiting as a weighted two-window counter.
//!
//! Time is cut into fixed windows of `window_ms`. The state is the start of the current window and
//! the counts of the current and previous window. The estimated count in the sliding window
//! ending now is `prev * (1 - f) + curr`, where `f` is the elapsed fraction of the current window;
//! a request of `cost` is admitted iff `estimate + cost <= limit`.
//!
//! **Error bound.** The estimate assumes the previous window's requests were spread evenly.
//! - Every fixed window admits at most `limit` (since `curr <= estimate`), so any sliding window
//!   of length `window_ms` (which overlaps at most two fixed windows) admits at most `2 * limit`
//!   in the adversarial worst case (all of the previous window's requests at its very end).
//! - For traffic spread evenly over the previous window the estimate is exact.
//!
//! Use the token bucket (GCRA) when an exact bound over every interval matters; use this for the
//! familiar "N per minute" semantics with smooth window edges. Counts are integers (exact);
//! only the weighting is fractional, computed in integer arithmetic on milliseconds.

use serde::{Deserialize, Serialize};

use super::Decision;
use crate::{GatewayError, UnixMillis};

/// A sliding-window policy: at most `limit` per `window_ms` (estimated, see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindowPolicy {
    /// Requests (cost units) per window.
    pub limit: u64,
    /// Window length in milliseconds.
    pub window_ms: u64,
}

impl SlidingWindowPolicy {
    /// Validates: limit 1..=1e9, window 1 ms ..= 30 days.
    pub fn validated(self) -> Result<Self, GatewayError> {
        if !(1..=super::MAX_TOKENS).contains(&self.limit) {
            return Err(GatewayError::bad_request(
                "invalid-policy",
                "limit must be 1..=1000000000",
            ));
        }
        if !(1..=super::MAX_PERIOD_MS).contains(&self.window_ms) {
            return Err(GatewayError::bad_request(
                "invalid-policy",
                format!("window_ms must be 1..={}", super::MAX_PERIOD_MS),
            ));
        }
        Ok(self)
    }
}

/// Persisted state of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// Start of the current fixed window (ms since the epoch, a multiple of `window_ms`).
    pub start: i64,
    /// Cost admitted in the previous window.
    pub prev: u64,
    /// Cost admitted in the current window.
    pub curr: u64,
}

impl WindowState {
    /// The state rolled forward to the window containing `now`.
    fn at(self, p: &SlidingWindowPolicy, now: i64) -> WindowState {
        let w = p.window_ms as i64;
        let start = now - now.rem_euclid(w);
        if start == self.start {
            self
        } else if start == self.start + w {
            WindowState {
                start,
                prev: self.curr,
                curr: 0,
            }
        } else {
            WindowState {
                start,
                prev: 0,
                curr: 0,
            }
        }
    }

    /// Whether the state no longer affects any decision at `now` (it can be deleted).
    pub fn is_idle(&self, p: &SlidingWindowPolicy, now: UnixMillis) -> bool {
        let s = self.at(p, now.0);
        s.prev == 0 && s.curr == 0
    }

    /// From when the state is idle whatever it holds (stored with the row, so the collector can
    /// delete by one comparison): two windows after its start, when both its counts have rolled
    /// out of the estimate.
    pub fn idle_at(&self, p: &SlidingWindowPolicy) -> UnixMillis {
        let w = i64::try_from(p.window_ms).unwrap_or(i64::MAX);
        UnixMillis(self.start.saturating_add(w.saturating_mul(2)))
    }
}

/// `prev * (w - elapsed) / w`, rounded up (so the estimate never under-counts by rounding).
fn weighted_prev(prev: u64, w: i64, elapsed: i64) -> u64 {
    let num = u128::from(prev) * u128::try_from(w - elapsed).unwrap_or(0);
    u64::try_from(num.div_ceil(u128::try_from(w).unwrap_or(1))).unwrap_or(u64::MAX)
}

/// Milliseconds from `now` until `cost` more would fit, for a state already rolled to `now`.
fn wait_ms(p: &SlidingWindowPolicy, s: WindowState, cost: u64, now: i64) -> u64 {
    let w = p.window_ms as i64;
    let elapsed = now - s.start;
    if s.curr + cost <= p.limit {
        // Wait inside this window until prev's weight has decayed enough:
        // need ceil(prev * (w - e) / w) <= limit - curr - cost.
        let room = p.limit - s.curr - cost;
        if s.prev == 0 {
            return 0;
        }
        // Smallest e with prev*(w-e) <= room*w  =>  e >= w - room*w/prev.
        let e = w - ((u128::from(room) * w as u128) / u128::from(s.prev)) as i64;
        return u64::try_from(e.max(elapsed) - elapsed).unwrap_or(0);
    }
    // Not in this window: in the next one prev becomes curr.
    let next_start = s.start + w;
    let until_next = next_start - now;
    if cost > p.limit {
        return u64::MAX;
    }
    let room = p.limit - cost;
    if s.curr == 0 {
        return u64::try_from(until_next).unwrap_or(0);
    }
    let e = w - ((u128::from(room) * w as u128) / u128::from(s.curr)) as i64;
    u64::try_from(until_next + e.max(0)).unwrap_or(u64::MAX)
}

/// Decides a request of `cost` at `now`. Returns the decision and, when admitted, the new state.
pub fn take(
    p: &SlidingWindowPolicy,
    state: Option<WindowState>,
    cost: u64,
    now: UnixMillis,
) -> Result<(Decision, Option<WindowState>), GatewayError> {
    if cost == 0 || cost > p.limit {
        return Err(GatewayError::bad_request(
            "invalid-cost",
            format!("cost must be 1..={} for this policy", p.limit),
        ));
    }
    let w = p.window_ms as i64;
    let s = state.unwrap_or_default().at(p, now.0);
    let elapsed = now.0 - s.start;
    let estimate = weighted_prev(s.prev, w, elapsed).saturating_add(s.curr);
    let reset_ms = u64::try_from(s.start + w - now.0).unwrap_or(0);
    if estimate.saturating_add(cost) <= p.limit {
        let next = WindowState {
            curr: s.curr + cost,
            ..s
        };
        let remaining = p.limit - estimate - cost;
        Ok((
            Decision {
                allowed: true,
                limit: p.limit,
                remaining,
                reset_ms,
                retry_after_ms: 0,
                cost,
            },
            Some(next),
        ))
    } else {
        let retry = wait_ms(p, s, cost, now.0).max(1);
        Ok((
            Decision {
                allowed: false,
                limit: p.limit,
                remaining: p.limit.saturating_sub(estimate),
                reset_ms,
                retry_after_ms: retry,
                cost,
            },
            None,
        ))
    }
}

/// Decides without consuming; `remaining` is what is left now (before `cost`).
pub fn peek(
    p: &SlidingWindowPolicy,
    state: Option<WindowState>,
    cost: u64,
    now: UnixMillis,
) -> Result<Decision, GatewayError> {
    let (d, _) = take(p, state, cost, now)?;
    let s = state.unwrap_or_default().at(p, now.0);
    let estimate = weighted_prev(s.prev, p.window_ms as i64, now.0 - s.start) + s.curr;
    Ok(Decision {
        remaining: p.limit.saturating_sub(estimate),
        ..d
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: SlidingWindowPolicy = SlidingWindowPolicy {
        limit: 10,
        window_ms: 1000,
    };

    #[test]
    fn a_window_is_idle_from_its_stored_idle_time_on() {
        let mut state = None;
        run(&mut state, 1_500, 10);
        let s = state.unwrap();
        assert_eq!(s.start, 1_000);
        assert_eq!(s.idle_at(&P), UnixMillis(3_000));
        // Just before, the previous window's count still weighs in; from then on nothing does.
        assert!(!s.is_idle(&P, UnixMillis(2_999)));
        assert!(s.is_idle(&P, UnixMillis(3_000)));
    }

    fn run(state: &mut Option<WindowState>, at: i64, cost: u64) -> Decision {
        let (d, s) = take(&P, *state, cost, UnixMillis(at)).unwrap();
        if let Some(s) = s {
            *state = Some(s);
        }
        d
    }

    #[test]
    fn admits_limit_per_window_then_denies() {
        let mut s = None;
        for i in 0..10 {
            assert!(run(&mut s, 100, 1).allowed, "request {i}");
        }
        let d = run(&mut s, 100, 1);
        assert!(!d.allowed);
        assert_eq!(d.reset_ms, 900);
    }

    #[test]
    fn previous_window_weighs_in_proportionally() {
        let mut s = None;
        assert!(run(&mut s, 999, 10).allowed);
        // 25% into the next window the previous 10 weigh 7.5 -> 8 (rounded up): 2 fit.
        assert!(run(&mut s, 1250, 2).allowed);
        assert!(!run(&mut s, 1250, 1).allowed);
        // Half-way: previous weighs 5, current has 2: 3 more fit.
        assert!(run(&mut s, 1500, 3).allowed);
        assert!(!run(&mut s, 1500, 1).allowed);
    }

    #[test]
    fn retry_after_is_enough_and_tight() {
        let mut s = None;
        run(&mut s, 0, 10);
        for at in [0, 300, 999, 1000, 1400] {
            let (d, _) = take(&P, s, 4, UnixMillis(at)).unwrap();
            if !d.allowed {
                let ok_at = at + d.retry_after_ms as i64;
                assert!(
                    take(&P, s, 4, UnixMillis(ok_at)).unwrap().0.allowed,
                    "at {at}"
                );
                if d.retry_after_ms > 1 {
                    assert!(
                        !take(&P, s, 4, UnixMillis(ok_at - 1)).unwrap().0.allowed,
                        "at {at} tight"
                    );
                }
            }
        }
    }

    #[test]
    fn state_two_windows_old_is_idle() {
        let mut s = None;
        run(&mut s, 10, 3);
        let st = s.unwrap();
        assert!(!st.is_idle(&P, UnixMillis(1500)));
        assert!(st.is_idle(&P, UnixMillis(2000)));
    }
}
