//! The proxy as a sans-IO plan: every decision of `ANY /v1/proxy/{group}/{path}`, with no I/O.
//!
//! The worker's route only executes the steps this module returns:
//!
//! 1. [`cache_key`] names the request's cache entry; the rate limit, the cache lookup and the
//!    cohort run concurrently, and [`start`] turns their answers into [`Start`]: deny, serve a
//!    fresh hit, serve a stale entry, or
//!    forward (keeping a stale copy to fall back on). Within stale-while-revalidate, the one
//!    request holding the cache's fill lease refreshes the entry while the others get the stale
//!    copy, so an expired hot key costs one upstream call, not a stampede.
//! 2. One `PickRanked` hop to the group's `ProviderHealthDO` returns the ranked candidates (each
//!    reserved); a [`Plan`] walks them: [`Plan::first_step`], then [`Plan::on_head`] for each
//!    upstream answer head, returning [`Step::Forward`] (the next candidate), [`Step::Deliver`]
//!    (pass the body through, buffered or streamed), [`Step::Fail`] (a problem) or
//!    [`Step::Stale`] (the stale-if-error copy).
//! 3. [`Plan::settle`] turns what the body did ([`meter::Metered`]) into the [`Settlement`]: the
//!    outcome of every attempt, the unused candidates to release, the cost, and the cache fill.
//!
//! Failover rules: only before the first byte reaches the client; only for idempotent methods
//! or opted-in requests ([`may_retry`]); on 5xx, 429, timeouts and connection errors; at most
//! `max_attempts` providers. A buffered body that fails while being read has reached nobody
//! yet, so it fails over too; a streamed body that fails mid-way ends the client's stream
//! truncated and counts as a connection failure of its provider.

pub mod judge;
pub mod meter;

pub use judge::{judge, may_retry, parse_retry_after, Attempt};
pub use meter::{End, Meter, Metered, Usage};

use crate::balancer::{ErrorClass, Outcome, Pick};
use crate::cache::policy::{storable, Storable};
use crate::config::Config;
use crate::observe::{CacheOutcome, Record};
use crate::protocol::cache::{Cached, Found, PutSpec};
use crate::GatewayError;

/// Most providers tried for one request.
pub const MAX_ATTEMPTS: usize = 3;
/// Longest cache key; longer requests are not cached.
pub const MAX_KEY: usize = 1024;
/// Request headers forwarded upstream (never the client's own credentials).
pub const FORWARD: &[&str] = &["content-type", "accept", "accept-language", "user-agent"];
/// Response headers passed back to the client.
pub const PASS_BACK: &[&str] = &[
    "content-type",
    "cache-control",
    "retry-after",
    "etag",
    "last-modified",
];

/// The proxy cache key of a request: the caller, method, normalised path and query (every
/// parameter unless the group has an allow-list) and, for POST, the body's hash; `None` when
/// the method is never cached or the key would exceed [`MAX_KEY`].
pub fn cache_key(
    caller: &str,
    group: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    allowed_query: Option<&[String]>,
    body: &[u8],
) -> Option<String> {
    crate::cache::policy::cache_key(
        caller,
        method,
        &format!("/{path}"),
        query,
        allowed_query,
        body,
    )
    .map(|k| format!("proxy/{group}/{k}"))
    .filter(|k| k.len() <= MAX_KEY)
}

/// What the first stage decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The caller's rate limit denied the request.
    Deny,
    /// A fresh cached answer.
    Hit(Cached),
    /// A stale answer within its stale-while-revalidate window while another request holds
    /// the fill lease (and is refreshing it): serve it.
    Stale(Cached),
    /// Go upstream; `stale_if_error` is served if every provider fails.
    Forward {
        /// A stale-if-error copy.
        stale_if_error: Option<Cached>,
    },
}

/// Decides the first stage from the rate-limit decision and the cache lookup.
pub fn start(allowed: bool, cached: Option<Found>) -> Start {
    if !allowed {
        return Start::Deny;
    }
    match cached {
        Some(Found::Hit(c)) => Start::Hit(c),
        // Within stale-while-revalidate: the one request that gets the fill lease refreshes
        // the entry (in the foreground, with the stale copy as its fallback); the others are
        // served the stale copy meanwhile. Within stale-if-error: forward, fall back on it.
        Some(Found::Stale {
            cached,
            if_error: false,
            lease: None,
        }) => Start::Stale(cached),
        Some(Found::Stale { cached, .. }) => Start::Forward {
            stale_if_error: Some(cached),
        },
        _ => Start::Forward {
            stale_if_error: None,
        },
    }
}

/// The status a cached answer is served with.
pub fn cached_status(c: &Cached) -> u16 {
    if c.negative {
        404
    } else {
        200
    }
}

/// The knobs of one request's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The provider group.
    pub group: String,
    /// Most providers tried.
    pub max_attempts: usize,
    /// Whether the answer may be cached (the request has a cache key).
    pub cacheable: bool,
    /// TTL of a fill without caching headers (an experiment arm's `cache_ttl_s` or the default).
    pub default_ttl_s: u64,
    /// TTL of a negative (404/410) fill.
    pub negative_ttl_s: u64,
    /// Largest body that is buffered or cached; larger or unknown-length bodies stream.
    pub max_buffer_bytes: usize,
}

impl Settings {
    /// The settings of one request to `group`: `cacheable` when it has a cache key; an
    /// experiment arm's `cache_ttl_s` replaces the default TTL.
    pub fn new(cfg: &Config, group: &str, cacheable: bool, arm_ttl_s: Option<u64>) -> Settings {
        Settings {
            group: group.to_string(),
            max_attempts: MAX_ATTEMPTS,
            cacheable,
            default_ttl_s: arm_ttl_s.unwrap_or(cfg.cache_default_ttl_s),
            negative_ttl_s: cfg.cache_negative_ttl_s,
            max_buffer_bytes: cfg.proxy_buffer_max_bytes,
        }
    }
}

/// The record of a proxied request before its upstream part ([`Settlement::record`]).
pub fn record(
    at: crate::UnixMillis,
    group: &str,
    path: &str,
    status: u16,
    cache: CacheOutcome,
    latency_ms: u32,
) -> Record {
    Record {
        at,
        status,
        latency_ms,
        cache,
        rate_limited: false,
        upstream_calls: 0,
        key: Record::key_for(group, path),
        provider: None,
        provider_latency_ms: 0,
        provider_error: false,
        cost_micro_usd: 0,
    }
}

/// The outcome values a proxied request reports to its experiment cohort.
pub fn cohort_values(r: &Record) -> Vec<(String, f64)> {
    let hit = matches!(r.cache, CacheOutcome::Hit | CacheOutcome::Stale);
    vec![
        ("cache_hit".to_string(), f64::from(u8::from(hit))),
        ("latency_ms".to_string(), f64::from(r.latency_ms)),
        ("error".to_string(), f64::from(u8::from(r.status >= 500))),
        ("cost_usd".to_string(), r.cost_micro_usd as f64 / 1e6),
    ]
}

/// An upstream answer head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// A status and headers (names lower-case).
    Response {
        /// HTTP status.
        status: u16,
        /// Headers, lower-case names.
        headers: Vec<(String, String)>,
    },
    /// No head within the provider's timeout.
    Timeout,
    /// Refused, reset or dropped before a head.
    ConnectionError,
}

/// How a delivered body reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Read whole (known length within the buffer cap, not an event stream), then answered.
    Buffer,
    /// Piped through chunk by chunk as it arrives.
    Stream,
}

/// Pass an upstream answer to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The candidate that answered.
    pub candidate: usize,
    /// Its status.
    pub status: u16,
    /// The headers passed back ([`PASS_BACK`]).
    pub headers: Vec<(String, String)>,
    /// Buffered or streamed.
    pub body: Body,
    /// The body's content type (for the meter).
    pub content_type: Option<String>,
    /// How much of the body to copy for the cache fill (0: it is not stored).
    pub collect: usize,
}

/// Answer with a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The error (502, 503 or 504).
    pub error: GatewayError,
    /// A `Retry-After` for the client.
    pub retry_after: Option<String>,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Forward the request to candidate `i`.
    Forward(usize),
    /// Pass this answer to the client.
    Deliver(Delivery),
    /// Answer with this problem.
    Fail(Failure),
    /// Every provider failed: serve this stale-if-error copy.
    Stale(Cached),
}

/// A cache fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    /// The body.
    pub value: Vec<u8>,
    /// Its content type.
    pub content_type: Option<String>,
    /// TTLs and tags.
    pub spec: PutSpec,
}

/// What a finished request leaves behind, all of it off the response path.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// Every attempt's outcome, in order (for `Settle`).
    pub outcomes: Vec<(String, Outcome)>,
    /// Candidates reserved but never tried, with their `panic` flag (for `Settle`).
    pub released: Vec<(String, bool)>,
    /// Estimated cost of all attempts, micro-USD.
    pub cost_micro_usd: u64,
    /// The cache fill, if the answer is storable and its body complete within the cap.
    pub fill: Option<Fill>,
    /// The provider and outcome of the last attempt (for the request's record).
    pub last: Option<(String, Outcome)>,
    /// Providers tried.
    pub attempts: usize,
}

impl Settlement {
    /// `r` with the upstream part of the request's record: calls made, the last provider
    /// (`group/name`), its latency and error, and the cost.
    pub fn record(&self, group: &str, r: Record) -> Record {
        let last = self.last.as_ref();
        Record {
            upstream_calls: u8::try_from(self.attempts).unwrap_or(u8::MAX),
            provider: last.map(|(p, _)| format!("{group}/{p}")),
            provider_latency_ms: last.map_or(0, |(_, o)| o.latency_ms),
            provider_error: last.is_some_and(|(_, o)| !o.ok),
            cost_micro_usd: self.cost_micro_usd,
            ..r
        }
    }
}

#[derive(Debug, Clone)]
struct Tried {
    candidate: usize,
    outcome: Outcome,
    status: Option<u16>,
    retry_after: Option<String>,
}

#[derive(Debug, Clone)]
struct Delivering {
    candidate: usize,
    outcome: Outcome,
    content_type: Option<String>,
    storable: Option<Storable>,
}

/// One request's walk over its ranked candidates. See the module docs.
#[derive(Debug, Clone)]
pub struct Plan {
    settings: Settings,
    retry_allowed: bool,
    candidates: Vec<Pick>,
    budget_retry_after_ms: Option<u64>,
    stale: Option<Cached>,
    tried: Vec<Tried>,
    current: Option<usize>,
    delivering: Option<Delivering>,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Plan {
    /// A plan over `candidates` (ranked, from `PickRanked`). `budget_retry_after_ms` is set when
    /// the group has no candidate because every budget is spent; `stale_if_error` is the copy
    /// to fall back on.
    pub fn new(
        settings: Settings,
        method: &str,
        opted_in: bool,
        candidates: Vec<Pick>,
        budget_retry_after_ms: Option<u64>,
        stale_if_error: Option<Cached>,
    ) -> Plan {
        Plan {
            settings,
            retry_allowed: may_retry(method, opted_in),
            candidates,
            budget_retry_after_ms,
            stale: stale_if_error,
            tried: Vec::new(),
            current: None,
            delivering: None,
        }
    }

    /// Candidate `i`.
    pub fn candidate(&self, i: usize) -> Option<&Pick> {
        self.candidates.get(i)
    }

    /// Names of the providers tried so far.
    pub fn attempted(&self) -> Vec<String> {
        let delivered = self.delivering.as_ref().map(|d| d.candidate);
        self.tried
            .iter()
            .map(|t| t.candidate)
            .chain(delivered)
            .filter_map(|i| self.candidates.get(i).map(|p| p.name.clone()))
            .collect()
    }

    /// The first step: forward to the best candidate, or fail when there is none.
    pub fn first_step(&mut self) -> Step {
        if self.candidates.is_empty() {
            return self.fail();
        }
        self.current = Some(0);
        Step::Forward(0)
    }

    /// The current candidate answered (or not) after `latency_ms`.
    pub fn on_head(&mut self, head: Head, latency_ms: u32) -> Step {
        let Some(candidate) = self.current.take() else {
            return self.fail();
        };
        let (attempt, status, retry_after) = match &head {
            Head::Response { status, headers } => {
                let raw = header(headers, "retry-after");
                (
                    Attempt::Response {
                        status: *status,
                        retry_after_ms: raw.and_then(parse_retry_after),
                    },
                    Some(*status),
                    raw.map(str::to_string),
                )
            }
            Head::Timeout => (Attempt::Timeout, None, None),
            Head::ConnectionError => (Attempt::ConnectionError, None, None),
        };
        let (outcome, retryable) = judge(attempt, latency_ms);
        if let (false, Head::Response { status, headers }) = (retryable, &head) {
            return self.deliver(candidate, outcome, *status, headers);
        }
        self.tried.push(Tried {
            candidate,
            outcome,
            status,
            retry_after,
        });
        self.next_or_fail()
    }

    /// A buffered body failed (or timed out) while being read: nothing reached the client, so
    /// the attempt counts as a failure of its class and the request fails over.
    pub fn on_body_failed(&mut self, timed_out: bool) -> Step {
        let Some(d) = self.delivering.take() else {
            return self.fail();
        };
        self.tried.push(Tried {
            candidate: d.candidate,
            outcome: Outcome {
                ok: false,
                error: Some(if timed_out {
                    ErrorClass::Timeout
                } else {
                    ErrorClass::Connection
                }),
                ..d.outcome
            },
            status: None,
            retry_after: None,
        });
        self.next_or_fail()
    }

    fn deliver(
        &mut self,
        candidate: usize,
        outcome: Outcome,
        status: u16,
        headers: &[(String, String)],
    ) -> Step {
        let s = &self.settings;
        let storable = if s.cacheable {
            storable(status, headers, s.default_ttl_s, s.negative_ttl_s)
        } else {
            None
        };
        let content_type = header(headers, "content-type").map(str::to_string);
        let length = header(headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let body = match length {
            Some(n)
                if n <= s.max_buffer_bytes as u64
                    && !meter::is_event_stream(content_type.as_deref()) =>
            {
                Body::Buffer
            }
            _ => Body::Stream,
        };
        let collect = if storable.is_some() {
            s.max_buffer_bytes
        } else {
            0
        };
        self.delivering = Some(Delivering {
            candidate,
            outcome,
            content_type: content_type.clone(),
            storable,
        });
        Step::Deliver(Delivery {
            candidate,
            status,
            headers: headers
                .iter()
                .filter(|(k, _)| PASS_BACK.contains(&k.as_str()))
                .cloned()
                .collect(),
            body,
            content_type,
            collect,
        })
    }

    fn next_or_fail(&mut self) -> Step {
        let next = self.tried.len();
        if self.retry_allowed && next < self.candidates.len() && next < self.settings.max_attempts {
            self.current = Some(next);
            Step::Forward(next)
        } else {
            self.fail()
        }
    }

    fn fail(&mut self) -> Step {
        if let Some(c) = self.stale.take() {
            return Step::Stale(c);
        }
        let n = self.tried.len();
        let last = self.tried.last();
        let (error, retry_after) = if self.candidates.is_empty() {
            match self.budget_retry_after_ms {
                Some(ms) => (
                    GatewayError::Unavailable(
                        "every provider of the group has spent its budget".into(),
                    ),
                    Some(ms.div_ceil(1000).max(1).to_string()),
                ),
                None => (
                    GatewayError::BadGateway("the group has no provider".into()),
                    None,
                ),
            }
        } else if n > 0
            && self
                .tried
                .iter()
                .all(|t| t.outcome.error == Some(ErrorClass::Timeout))
        {
            (
                GatewayError::GatewayTimeout(format!(
                    "every provider tried timed out ({n} attempts)"
                )),
                None,
            )
        } else {
            match last.and_then(|t| t.status) {
                Some(429) => (
                    GatewayError::Unavailable(format!(
                        "providers are rate limiting ({n} attempts)"
                    )),
                    last.and_then(|t| t.retry_after.clone()),
                ),
                Some(status) => (
                    GatewayError::BadGateway(format!(
                        "providers failed; the last answered {status} ({n} attempts)"
                    )),
                    None,
                ),
                None => (
                    GatewayError::BadGateway(format!(
                        "no provider could be reached ({n} attempts)"
                    )),
                    None,
                ),
            }
        };
        Step::Fail(Failure { error, retry_after })
    }

    /// Settles the request once its body ended (`None` when nothing was delivered).
    pub fn settle(self, body: Option<Metered>) -> Settlement {
        let mut attempts: Vec<(usize, Outcome)> = self
            .tried
            .iter()
            .map(|t| (t.candidate, t.outcome))
            .collect();
        let mut fill = None;
        // A delivered body whose end was never reported is counted as a client that left.
        let body = body.or_else(|| {
            self.delivering.as_ref().map(|_| Metered {
                end: End::ClientGone,
                bytes: 0,
                usage: None,
                body: None,
            })
        });
        if let (Some(d), Some(m)) = (&self.delivering, body) {
            let mut o = d.outcome;
            match m.end {
                End::Completed | End::ClientGone => {}
                End::UpstreamFailed => {
                    o.ok = false;
                    o.error = Some(ErrorClass::Connection);
                }
                End::IdleTimeout => {
                    o.ok = false;
                    o.error = Some(ErrorClass::Timeout);
                }
            }
            if let Some(u) = m.usage.filter(|_| o.ok) {
                o.input_tokens = u.input_tokens;
                o.output_tokens = u.output_tokens;
            }
            if let (Some(s), Some(value)) = (d.storable, m.body) {
                if m.end == End::Completed && value.len() <= self.settings.max_buffer_bytes {
                    let tag = format!("proxy-{}", self.settings.group);
                    fill = Some(Fill {
                        value,
                        content_type: d.content_type.clone(),
                        spec: PutSpec {
                            ttl_ms: s.ttl_s * 1000,
                            stale_while_revalidate_ms: s.stale_while_revalidate_s * 1000,
                            stale_if_error_ms: s.stale_if_error_s * 1000,
                            negative: s.negative,
                            tags: Some(tag).filter(|t| t.len() <= 64).into_iter().collect(),
                        },
                    });
                }
            }
            attempts.push((d.candidate, o));
        }
        let used = |i: usize| attempts.iter().any(|(c, _)| *c == i);
        let released = (0..self.candidates.len())
            .filter(|&i| !used(i))
            .map(|i| (self.candidates[i].name.clone(), self.candidates[i].panic))
            .collect();
        let cost_micro_usd = attempts
            .iter()
            .map(|(i, o)| self.candidates[*i].cost_of(o))
            .sum();
        let outcomes: Vec<(String, Outcome)> = attempts
            .iter()
            .map(|(i, o)| (self.candidates[*i].name.clone(), *o))
            .collect();
        Settlement {
            last: outcomes.last().cloned(),
            attempts: outcomes.len(),
            outcomes,
            released,
            cost_micro_usd,
            fill,
        }
    }
}

#[cfg(test)]
mod tests;
