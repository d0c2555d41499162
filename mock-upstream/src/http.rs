//! The HTTP/1.1 layer: reading requests (head, `Content-Length` or chunked bodies,
//! `Expect: 100-continue`), writing responses, and closing after an error answer.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Largest request head (request line + headers), bytes; 431 beyond.
const MAX_HEAD: usize = 16 * 1024;
/// Most request headers; 431 beyond.
const MAX_HEADERS: usize = 64;
/// Largest request body, bytes; 413 beyond.
const MAX_BODY: usize = 8 << 20;

pub(crate) struct Request {
    pub(crate) method: String,
    /// The request target in origin form (`/alpha/v1/x?q=1`).
    pub(crate) target: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) close: bool,
    /// HTTP/1.1 (chunked responses allowed) rather than HTTP/1.0.
    pub(crate) http11: bool,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

pub(crate) enum ReadError {
    /// The peer went away (or idled out) between requests: close quietly.
    Closed,
    /// Answer with this status and message, then close.
    Bad(u16, String),
}

fn bad(status: u16, msg: &str) -> ReadError {
    ReadError::Bad(status, msg.to_string())
}

/// Closes after an error answer without resetting the connection over unread input (which could
/// discard the answer before the client reads it): half-close, then drain briefly.
pub(crate) fn linger_close(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream) {
    let _ = writer.shutdown(Shutdown::Write);
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 1 << 20 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// Reads the request head up to and including the blank line.
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, ReadError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let budget = (MAX_HEAD + 1 - head.len()) as u64;
        let n = reader
            .by_ref()
            .take(budget)
            .read_until(b'\n', &mut line)
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(if head.is_empty() {
                ReadError::Closed
            } else {
                bad(400, "truncated request head")
            });
        }
        if head.len() + line.len() > MAX_HEAD {
            return Err(bad(431, "request head too large"));
        }
        if !line.ends_with(b"\n") {
            return Err(bad(400, "truncated request head"));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue; // blank lines before a request line are tolerated
            }
            head.extend_from_slice(&line);
            return Ok(head);
        }
        head.extend_from_slice(&line);
    }
}

pub(crate) fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Result<Request, ReadError> {
    let head = read_head(reader)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(bad(431, "too many request headers")),
        _ => return Err(bad(400, "malformed request")),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(bad(400, "malformed request line"));
    };
    let method = method.to_string();
    let target = origin_form(target).to_string();
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let values = |name: &'static str| header_values(&headers, name);
    let tokens = |name: &'static str| -> Vec<String> {
        values(name)
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let connection = tokens("connection");
    let mut close = if version == 0 {
        !connection.iter().any(|t| t == "keep-alive")
    } else {
        connection.iter().any(|t| t == "close")
    };

    // Body framing (RFC 9112 section 6): Transfer-Encoding wins over Content-Length.
    let codings = tokens("transfer-encoding");
    let body = if !codings.is_empty() {
        if codings.last().map(String::as_str) != Some("chunked") {
            return Err(bad(
                400,
                "Transfer-Encoding must end with chunked (or send Content-Length)",
            ));
        }
        if values("content-length").next().is_some() {
            close = true; // both framings: honour chunked, then don't trust the stream further
        }
        continue_if_expected(&headers, writer)?;
        read_chunked(reader)?
    } else {
        let mut len: Option<u64> = None;
        for v in values("content-length") {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(400, "bad Content-Length"));
            }
            let n = v.parse::<u64>().unwrap_or(u64::MAX);
            if len.is_some_and(|l| l != n) {
                return Err(bad(400, "conflicting Content-Length headers"));
            }
            len = Some(n);
        }
        let len = len.unwrap_or(0);
        if len > MAX_BODY as u64 {
            return Err(bad(413, "request body too large"));
        }
        if len > 0 {
            continue_if_expected(&headers, writer)?;
        }
        let mut body = Vec::with_capacity((len as usize).min(64 * 1024));
        let got = reader
            .by_ref()
            .take(len)
            .read_to_end(&mut body)
            .map_err(|_| bad(400, "truncated request body"))?;
        if (got as u64) < len {
            return Err(bad(400, "truncated request body"));
        }
        body
    };
    Ok(Request {
        method,
        target,
        headers,
        body,
        close,
        http11: version == 1,
    })
}

fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Sends `100 Continue` when the client waits for it before sending its body.
fn continue_if_expected(
    headers: &[(String, String)],
    writer: &mut TcpStream,
) -> Result<(), ReadError> {
    let expects = headers
        .iter()
        .any(|(k, v)| k == "expect" && v.eq_ignore_ascii_case("100-continue"));
    if expects {
        writer
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| ReadError::Closed)?;
    }
    Ok(())
}

/// One line of a chunked body without its line ending; `limit` bytes at most.
fn read_chunk_line(reader: &mut BufReader<TcpStream>, limit: usize) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(limit as u64 + 2)
        .read_until(b'\n', &mut line)
        .map_err(|_| bad(400, "truncated chunked body"))?;
    if line.pop() != Some(b'\n') {
        return Err(bad(400, "truncated chunked body or overlong chunk line"));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_chunk_line(reader, 1024)?;
        let size_field = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_field).unwrap_or("").trim();
        if size_text.is_empty()
            || size_text.len() > 15
            || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad(400, "bad chunk size"));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad(400, "bad chunk size"))?;
        if size == 0 {
            // Trailer fields (ignored) up to the blank line.
            let mut trailers = 0usize;
            loop {
                let t = read_chunk_line(reader, MAX_HEAD)?;
                if t.is_empty() {
                    return Ok(body);
                }
                trailers += t.len();
                if trailers > MAX_HEAD {
                    return Err(bad(431, "chunked trailers too large"));
                }
            }
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(bad(413, "request body too large"));
        }
        let got = reader
            .by_ref()
            .take(size as u64)
            .read_to_end(&mut body)
            .map_err(|_| bad(400, "truncated chunked body"))?;
        if got < size {
            return Err(bad(400, "truncated chunked body"));
        }
        if !read_chunk_line(reader, 0)?.is_empty() {
            return Err(bad(400, "chunk data longer than its size"));
        }
    }
}

/// `http://host/x?y` -> `/x?y`; origin-form targets unchanged.
fn origin_form(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        if target.len() > scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let rest = &target[scheme.len()..];
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
    }
    target
}

pub(crate) fn write_response(
    stream: &mut TcpStream,
    resp: &Response,
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let status = resp.status;
    // 1xx, 204 and 304 have no body (and 1xx/204 no Content-Length) by definition.
    let no_body = status < 200 || status == 204 || status == 304;
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !(status < 200 || status == 204) {
        let len = if no_body { 0 } else { resp.body.len() };
        out.push_str(&format!("Content-Length: {len}\r\n"));
    }
    let has_type = resp
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !no_body && !has_type {
        out.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    // One write: head and body in separate segments would meet Nagle + delayed ACK (40 ms).
    let mut bytes = out.into_bytes();
    if !no_body && !head_only {
        bytes.extend_from_slice(&resp.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

pub(crate) fn json_response(status: u16, v: &Value) -> Response {
    Response {
        status,
        headers: vec![],
        body: v.to_string().into_bytes(),
    }
}

pub(crate) fn error_response(status: u16, msg: &str) -> Response {
    json_response(
        status,
        &json!({ "error": { "message": msg, "status": status } }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(origin_form("/a/b?c"), "/a/b?c");
        assert_eq!(origin_form("http://h:1/a/b?c"), "/a/b?c");
        assert_eq!(origin_form("HTTPS://h"), "/");
    }
}
