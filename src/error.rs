//! The worker's error type and the one place errors become HTTP responses.

use gateway_core::problem::{Problem, PROBLEM_CONTENT_TYPE};
use gateway_core::GatewayError;
use worker::{Headers, Response};

/// A request-path error: a core [`GatewayError`], with conversions from platform errors.
/// (A newtype because neither `GatewayError` nor `worker::Error` is local to this crate.)
#[derive(Debug)]
pub struct AppError(pub GatewayError);

impl From<GatewayError> for AppError {
    fn from(e: GatewayError) -> Self {
        AppError(e)
    }
}

impl From<worker::Error> for AppError {
    fn from(e: worker::Error) -> Self {
        // Platform failures (a Durable Object hop that broke, storage errors) are retryable from
        // the client's point of view; the detail goes to the log, not to the client.
        worker::console_error!("platform error: {e}");
        AppError(GatewayError::Unavailable(
            "a backend hop failed; retry later".into(),
        ))
    }
}

/// Result of a route handler.
pub type AppResult<T> = Result<T, AppError>;

/// Builds the RFC 9457 problem+json response for `err`. Never fails: if even building the
/// response fails, the platform's plain 500 is the fallback (by returning `Err`).
pub fn problem_response(
    err: &GatewayError,
    request_id: &str,
    path: &str,
) -> worker::Result<Response> {
    problem_with_extra(err, request_id, path, None)
}

/// Like [`problem_response`] with extension members merged into the problem object.
pub fn problem_with_extra(
    err: &GatewayError,
    request_id: &str,
    path: &str,
    extra: Option<serde_json::Map<String, serde_json::Value>>,
) -> worker::Result<Response> {
    let problem = Problem::from_error(err, request_id, Some(path));
    let body = match (extra, serde_json::to_value(&problem)) {
        (Some(extra), Ok(serde_json::Value::Object(mut obj))) => {
            for (k, v) in extra {
                obj.entry(k).or_insert(v);
            }
            serde_json::Value::Object(obj).to_string()
        }
        _ => problem.to_json(),
    };
    let headers = Headers::new();
    headers.set("Content-Type", PROBLEM_CONTENT_TYPE)?;
    headers.set("Cache-Control", "no-store")?;
    if let GatewayError::MethodNotAllowed { allowed, .. } = err {
        headers.set("Allow", allowed)?;
    }
    if matches!(err, GatewayError::Unauthorized) {
        headers.set("WWW-Authenticate", "Bearer realm=\"edge-gateway\"")?;
    }
    Ok(Response::ok(body)?
        .with_status(err.status())
        .with_headers(headers))
}
