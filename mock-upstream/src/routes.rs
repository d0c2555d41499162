//! Routing: from a parsed request to an [`Answer`] (health, the control API, provider calls).

use serde_json::json;

use crate::control::{control, provider_body};
use crate::http::{error_response, json_response, Request, Response};
use crate::provider::{health_probe, provider_call, Stream};
use crate::server::Shared;

pub(crate) enum Answer {
    Respond(Response),
    /// Close the connection without writing anything.
    Drop,
    /// Stream server-sent events, then count how the stream ended.
    Stream(Stream),
}

/// `[a-z0-9_-]{1,32}`.
fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn is_provider(s: &str) -> bool {
    valid_name(s) && s != "__control"
}

pub(crate) fn handle(req: &Request, shared: &Shared) -> Answer {
    let path = req.target.split(['?', '#']).next().unwrap_or("/");
    let segs: Vec<&str> = match path.strip_prefix('/') {
        Some(p) => p.split('/').collect(),
        None => vec![],
    };
    let method = req.method.as_str();
    match segs.as_slice() {
        ["health"] => Answer::Respond(json_response(200, &json!({ "ok": true }))),
        ["__control"] if method == "GET" => {
            let map = shared.providers();
            let mut out = b"{\"providers\":[".to_vec();
            for (i, (name, p)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&provider_body(name, p));
            }
            out.extend_from_slice(b"]}");
            Answer::Respond(Response {
                status: 200,
                headers: vec![],
                body: out,
            })
        }
        ["__control"] => not_allowed("GET"),
        ["__control", "reset"] if method == "POST" => {
            shared.providers().clear();
            Answer::Respond(json_response(200, &json!({ "reset": true })))
        }
        ["__control", name] if valid_name(name) => control(req, name, shared),
        [name, "health"] if is_provider(name) => health_probe(req, name, shared),
        [name, _, ..] if is_provider(name) => provider_call(req, name, shared),
        _ => Answer::Respond(error_response(404, &format!("nothing at {path}"))),
    }
}

pub(crate) fn not_allowed(allow: &str) -> Answer {
    let mut resp = error_response(405, &format!("method not allowed; use {allow}"));
    resp.headers.push(("Allow".to_string(), allow.to_string()));
    Answer::Respond(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_follow_the_pattern() {
        assert!(valid_name("alpha") && valid_name("a-b_9") && valid_name(&"a".repeat(32)));
        assert!(!valid_name("") && !valid_name("Alpha") && !valid_name(&"a".repeat(33)));
        assert!(!valid_name("a.b") && !valid_name("a b"));
        assert!(!is_provider("__control"));
    }
}
