//! RFC 9457 problem details: the single error envelope of the public API.

use serde::{Deserialize, Serialize};

use crate::GatewayError;

/// Media type of every error response.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Prefix of every problem `type`; the slug after it is listed in docs/API.md.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:edge-gateway:problem:";

/// An RFC 9457 problem object, plus the request id so a client report can be traced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the kind of problem (`urn:edge-gateway:problem:<slug>`).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short, constant title for the kind of problem.
    pub title: String,
    /// The HTTP status code, repeated in the body.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The `X-Request-Id` of the request.
    #[serde(rename = "requestId")]
    pub request_id: String,
}

impl Problem {
    /// Builds the problem for `err` on request `request_id` at `path`.
    pub fn from_error(err: &GatewayError, request_id: &str, path: Option<&str>) -> Self {
        Problem {
            type_uri: format!("{PROBLEM_TYPE_PREFIX}{}", err.slug()),
            title: err.title().to_string(),
            status: err.status(),
            detail: err.to_string(),
            instance: path.map(str::to_string),
            request_id: request_id.to_string(),
        }
    }

    /// The JSON body. Serialising this struct cannot fail; the fallback keeps that promise
    /// without a panic path.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                "{{\"type\":\"{PROBLEM_TYPE_PREFIX}internal\",\"title\":\"Internal error\",\"status\":{}}}",
                self.status
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_carries_status_type_detail_and_request_id() {
        let err = GatewayError::PayloadTooLarge { limit: 1024 };
        let p = Problem::from_error(&err, "req-1", Some("/v1/cache/a/b"));
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["status"], 413);
        assert_eq!(v["type"], "urn:edge-gateway:problem:payload-too-large");
        assert_eq!(v["requestId"], "req-1");
        assert_eq!(v["instance"], "/v1/cache/a/b");
        assert!(v["detail"].as_str().unwrap().contains("1024"));
    }

    #[test]
    fn every_error_kind_maps_to_a_4xx_or_5xx() {
        let all = [
            GatewayError::bad_request("invalid-json", "x"),
            GatewayError::Unauthorized,
            GatewayError::Forbidden("x".into()),
            GatewayError::NotFound("x".into()),
            GatewayError::MethodNotAllowed {
                method: "GET".into(),
                allowed: "POST".into(),
            },
            GatewayError::PayloadTooLarge { limit: 1 },
            GatewayError::Conflict("x".into()),
            GatewayError::TooManyRequests("x".into()),
            GatewayError::Unavailable("x".into()),
            GatewayError::BadGateway("x".into()),
            GatewayError::GatewayTimeout("x".into()),
            GatewayError::Internal("x".into()),
        ];
        for e in all {
            assert!((400..600).contains(&e.status()), "{e:?}");
        }
    }
}
