//! The one error type. Variants are classified by what the caller should do; the mapping to an
//! HTTP status and an RFC 9457 problem lives in exactly one place ([`GatewayError::status`] and
//! [`crate::problem::Problem::from_error`]).
//!
//! A rate-limit denial is **not** an error: it is a `Decision` value.

use std::borrow::Cow;

use thiserror::Error;

/// Every way a request can fail.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GatewayError {
    /// The request is malformed (bad JSON, wrong type, out-of-range value): fix the request.
    #[error("{detail}")]
    BadRequest {
        /// Short machine-readable slug, e.g. `invalid-json`. Borrowed when raised here, owned
        /// when rebuilt from an object's [`crate::protocol::WireError`], so any slug an object
        /// raised reaches the client unchanged.
        kind: Cow<'static, str>,
        /// What is wrong, for a human.
        detail: String,
    },
    /// No admin token was presented to an admin route: authenticate.
    #[error("this route needs `Authorization: Bearer <ADMIN_TOKEN>`")]
    Unauthorized,
    /// An admin token was presented but is wrong, or admin access is disabled: do not retry.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing lives at this path, or the named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The path exists but not for this method.
    #[error("method {method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// Comma-separated allowed methods (goes into the `Allow` header).
        allowed: Cow<'static, str>,
    },
    /// The body is larger than the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A rate limit denied the request (used only to render the 429 problem; the decision
    /// itself is a value, not an error).
    #[error("{0}")]
    TooManyRequests(String),
    /// The request conflicts with current state (e.g. a definition that already exists).
    #[error("{0}")]
    Conflict(String),
    /// An upstream or internal hop failed in a way the client may retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Every upstream provider tried failed or answered an error (502).
    #[error("{0}")]
    BadGateway(String),
    /// Every upstream provider tried timed out (504).
    #[error("{0}")]
    GatewayTimeout(String),
    /// Stored state could not be decoded, or the platform failed: a bug or corruption.
    #[error("{0}")]
    Internal(String),
    /// A credential, quota or model route refused the request (401, 403, 404 or 429) for a
    /// reason with its own slug: a revoked or unknown virtual key, a model the key may not use
    /// or nobody serves, a spent budget, a token limit.
    #[error("{detail}")]
    Refused {
        /// 401, 403, 404 or 429.
        status: u16,
        /// The slug, e.g. `key-revoked`, `budget-exceeded`, `token-limit`.
        kind: Cow<'static, str>,
        /// For a human.
        detail: String,
    },
}

impl GatewayError {
    /// Shorthand for a [`GatewayError::BadRequest`].
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        GatewayError::BadRequest {
            kind: Cow::Borrowed(kind),
            detail: detail.into(),
        }
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest { .. } => 400,
            GatewayError::Unauthorized => 401,
            GatewayError::Forbidden(_) => 403,
            GatewayError::NotFound(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::Conflict(_) => 409,
            GatewayError::TooManyRequests(_) => 429,
            GatewayError::PayloadTooLarge { .. } => 413,
            GatewayError::Unavailable(_) => 503,
            GatewayError::BadGateway(_) => 502,
            GatewayError::GatewayTimeout(_) => 504,
            GatewayError::Internal(_) => 500,
            GatewayError::Refused { status, .. } => *status,
        }
    }

    /// The slug used in the problem `type` URI.
    pub fn slug(&self) -> &str {
        match self {
            GatewayError::BadRequest { kind, .. } => kind,
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::NotFound(_) => "not-found",
            GatewayError::MethodNotAllowed { .. } => "method-not-allowed",
            GatewayError::Conflict(_) => "conflict",
            GatewayError::TooManyRequests(_) => "rate-limited",
            GatewayError::PayloadTooLarge { .. } => "payload-too-large",
            GatewayError::Unavailable(_) => "unavailable",
            GatewayError::BadGateway(_) => "bad-gateway",
            GatewayError::GatewayTimeout(_) => "gateway-timeout",
            GatewayError::Internal(_) => "internal",
            GatewayError::Refused { kind, .. } => kind,
        }
    }

    /// A short human title, constant per kind of problem.
    pub fn title(&self) -> &'static str {
        match self {
            GatewayError::BadRequest { .. } => "Bad request",
            GatewayError::Unauthorized => "Unauthorized",
            GatewayError::Forbidden(_) => "Forbidden",
            GatewayError::NotFound(_) => "Not found",
            GatewayError::MethodNotAllowed { .. } => "Method not allowed",
            GatewayError::Conflict(_) => "Conflict",
            GatewayError::TooManyRequests(_) => "Too many requests",
            GatewayError::PayloadTooLarge { .. } => "Payload too large",
            GatewayError::Unavailable(_) => "Service unavailable",
            GatewayError::BadGateway(_) => "Bad gateway",
            GatewayError::GatewayTimeout(_) => "Gateway timeout",
            GatewayError::Internal(_) => "Internal error",
            GatewayError::Refused { status: 401, .. } => "Unauthorized",
            GatewayError::Refused { status: 403, .. } => "Forbidden",
            GatewayError::Refused { status: 404, .. } => "Not found",
            GatewayError::Refused { .. } => "Too many requests",
        }
    }
}

impl From<postcard::Error> for GatewayError {
    fn from(e: postcard::Error) -> Self {
        GatewayError::Internal(format!("internal message could not be decoded: {e}"))
    }
}
