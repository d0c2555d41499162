//! Fill leases: request coalescing for missing or stale keys.
//!
//! The first caller that finds a key missing (or stale) and asks for a lease gets one for
//! `lease_ms`; it is expected to fetch the value and store it. Until the lease is released (by
//! the store) or lapses, other callers for that key are told to wait for the fill instead of
//! going upstream themselves. A lapsed lease can be taken over, so a crashed holder blocks others
//! for at most `lease_ms`.

use std::collections::HashMap;

use crate::UnixMillis;

/// The answer to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The caller holds the lease (token to release it with) until `until`.
    Granted {
        /// Lease token.
        token: u64,
        /// Expiry.
        until: UnixMillis,
    },
    /// Someone else holds it until `until`: wait for the fill.
    Held {
        /// Expiry of the current lease.
        until: UnixMillis,
    },
}

/// Leases by key.
#[derive(Debug, Default)]
pub struct Leases {
    held: HashMap<String, (u64, UnixMillis)>,
    next_token: u64,
}

impl Leases {
    /// Requests the lease on `key` at `now` for `lease_ms`.
    pub fn acquire(&mut self, key: &str, now: UnixMillis, lease_ms: u64) -> LeaseOutcome {
        if let Some(&(_, until)) = self.held.get(key) {
            if until > now {
                return LeaseOutcome::Held { until };
            }
        }
        self.next_token += 1;
        let until = now.plus_ms(i64::try_from(lease_ms).unwrap_or(i64::MAX));
        self.held.insert(key.to_string(), (self.next_token, until));
        LeaseOutcome::Granted {
            token: self.next_token,
            until,
        }
    }

    /// Releases the lease on `key` (any store of the key does; the token is informative).
    pub fn release(&mut self, key: &str) -> bool {
        self.held.remove(key).is_some()
    }

    /// Whether a live lease exists on `key`.
    pub fn is_held(&self, key: &str, now: UnixMillis) -> bool {
        self.held.get(key).is_some_and(|&(_, until)| until > now)
    }

    /// Drops lapsed leases.
    pub fn prune(&mut self, now: UnixMillis) {
        self.held.retain(|_, &mut (_, until)| until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_lapsed_leases_are_taken_over() {
        let mut l = Leases::default();
        let first = l.acquire("k", UnixMillis(0), 100);
        assert!(matches!(
            first,
            LeaseOutcome::Granted {
                until: UnixMillis(100),
                ..
            }
        ));
        assert_eq!(
            l.acquire("k", UnixMillis(50), 100),
            LeaseOutcome::Held {
                until: UnixMillis(100)
            }
        );
        assert!(matches!(
            l.acquire("other", UnixMillis(50), 100),
            LeaseOutcome::Granted { .. }
        ));
        assert!(matches!(
            l.acquire("k", UnixMillis(100), 100),
            LeaseOutcome::Granted { .. }
        ));
        assert!(l.release("k"));
        assert!(!l.is_held("k", UnixMillis(101)));
    }
}
