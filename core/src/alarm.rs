//! When a Durable Object should wake up next.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;

/// Alarm bookkeeping persisted by every Durable Object (shown in its `stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmStats {
    /// Alarm invocations that completed.
    pub runs: u64,
    /// When the last one completed.
    pub last_run_at: Option<UnixMillis>,
}

/// The next wake-up: the component's own deadline if it has one, but never later than one
/// `interval_ms` from now (periodic work) and never in the past.
pub fn next_alarm(
    now: UnixMillis,
    interval_ms: u64,
    component_deadline: Option<UnixMillis>,
) -> UnixMillis {
    let periodic = now.plus_ms(i64::try_from(interval_ms).unwrap_or(i64::MAX));
    let at = component_deadline.map_or(periodic, |d| d.min(periodic));
    at.max(now.plus_ms(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_of_deadline_and_interval_but_not_in_the_past() {
        let now = UnixMillis(1_000);
        assert_eq!(next_alarm(now, 500, None), UnixMillis(1_500));
        assert_eq!(
            next_alarm(now, 500, Some(UnixMillis(1_200))),
            UnixMillis(1_200)
        );
        assert_eq!(
            next_alarm(now, 500, Some(UnixMillis(9_000))),
            UnixMillis(1_500)
        );
        assert_eq!(
            next_alarm(now, 500, Some(UnixMillis(10))),
            UnixMillis(1_001)
        );
    }
}
