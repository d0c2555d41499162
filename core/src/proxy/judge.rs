//! How one upstream attempt is judged: the outcome reported for the provider and whether the
//! request may move on to another provider.

use crate::balancer::{ErrorClass, Outcome};

/// What one upstream attempt produced, up to its response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A response with this status (and its `Retry-After` in ms, if any).
    Response {
        /// HTTP status.
        status: u16,
        /// Parsed `Retry-After`.
        retry_after_ms: Option<u64>,
    },
    /// No response head within the provider's timeout.
    Timeout,
    /// The connection failed or was dropped.
    ConnectionError,
}

/// Judges an attempt: the outcome to report for the provider, and whether the request may move
/// on to another provider. 2xx-4xx (but 429) are the provider working; 429 cools it down for its
/// `Retry-After` (1 s when absent) and is not a failure; 5xx, timeouts and connection errors are
/// failures of their class (counted per provider as `server_errors`, `timeouts`,
/// `connection_errors`).
pub fn judge(attempt: Attempt, latency_ms: u32) -> (Outcome, bool) {
    let failed = |error| Outcome {
        ok: false,
        latency_ms,
        error: Some(error),
        ..Outcome::default()
    };
    match attempt {
        Attempt::Response {
            status: 429,
            retry_after_ms,
        } => (
            Outcome {
                ok: false,
                latency_ms,
                retry_after_ms: Some(retry_after_ms.unwrap_or(1000)),
                ..Outcome::default()
            },
            true,
        ),
        Attempt::Response { status, .. } if status >= 500 => {
            (failed(ErrorClass::ServerError), true)
        }
        Attempt::Response { .. } => (
            Outcome {
                ok: true,
                latency_ms,
                ..Outcome::default()
            },
            false,
        ),
        Attempt::Timeout => (failed(ErrorClass::Timeout), true),
        Attempt::ConnectionError => (failed(ErrorClass::Connection), true),
    }
}

/// `Retry-After` in delta-seconds as milliseconds (capped at one day). HTTP-dates are not used
/// by the providers we front and give `None`.
pub fn parse_retry_after(value: &str) -> Option<u64> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.min(86_400) * 1000)
}

/// Whether a request may be retried on another provider: idempotent methods, or any request the
/// client marks with `X-Gateway-Retry: true`.
pub fn may_retry(method: &str, opted_in: bool) -> bool {
    opted_in
        || matches!(
            method.to_ascii_uppercase().as_str(),
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(status: u16) -> Attempt {
        Attempt::Response {
            status,
            retry_after_ms: None,
        }
    }

    #[test]
    fn a_working_provider_is_ok_and_final() {
        let (o, retry) = judge(r(200), 5);
        assert_eq!(
            (o.ok, o.latency_ms, o.error, o.retry_after_ms, retry),
            (true, 5, None, None, false)
        );
        assert!(judge(r(404), 5).0.ok, "a 404 is the provider working");
    }

    #[test]
    fn every_failure_carries_its_class() {
        // The per-class counters in `/v1/providers` are driven by `error`: a `None` here is the
        // bug where they never moved.
        assert_eq!(
            judge(r(503), 5),
            (
                Outcome {
                    ok: false,
                    latency_ms: 5,
                    error: Some(ErrorClass::ServerError),
                    ..Outcome::default()
                },
                true
            )
        );
        assert_eq!(
            judge(Attempt::Timeout, 7).0.error,
            Some(ErrorClass::Timeout)
        );
        assert_eq!(
            judge(Attempt::ConnectionError, 7).0.error,
            Some(ErrorClass::Connection)
        );
        assert!(judge(Attempt::Timeout, 5).1 && judge(Attempt::ConnectionError, 5).1);
    }

    #[test]
    fn a_429_cools_down_without_failing() {
        let (o, retry) = judge(
            Attempt::Response {
                status: 429,
                retry_after_ms: Some(7000),
            },
            5,
        );
        assert_eq!((o.retry_after_ms, o.error, retry), (Some(7000), None, true));
        assert_eq!(judge(r(429), 5).0.retry_after_ms, Some(1000));
    }

    #[test]
    fn retry_after_and_idempotence() {
        assert_eq!(parse_retry_after(" 30 "), Some(30_000));
        assert_eq!(parse_retry_after("999999999"), Some(86_400_000));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert!(may_retry("get", false) && !may_retry("POST", false) && may_retry("POST", true));
    }
}
