//! Time as a value. Nothing in this crate reads a clock: callers pass `now` in.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch (UTC). The only notion of time in the core.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// Adds a duration in milliseconds, saturating instead of overflowing.
    pub fn plus_ms(self, ms: i64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`; negative when `earlier` is later.
    pub fn since(self, earlier: UnixMillis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The start of the UTC minute containing this instant.
    pub fn minute_floor(self) -> Self {
        UnixMillis(self.0 - self.0.rem_euclid(60_000))
    }

    /// RFC 3339 with millisecond precision, e.g. `2026-11-22T23:00:00.000Z`.
    /// Instants chrono cannot represent fall back to the epoch rather than panicking.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_millis_in_utc() {
        assert_eq!(
            UnixMillis(1_795_388_400_123).to_rfc3339(),
            "2026-11-22T23:00:00.123Z"
        );
    }

    #[test]
    fn minute_floor_rounds_down_even_before_epoch() {
        assert_eq!(UnixMillis(120_001).minute_floor(), UnixMillis(120_000));
        assert_eq!(UnixMillis(-1).minute_floor(), UnixMillis(-60_000));
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(UnixMillis(i64::MAX).plus_ms(5), UnixMillis(i64::MAX));
        assert_eq!(UnixMillis(10).since(UnixMillis(4)), 6);
    }
}
