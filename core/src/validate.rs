//! Validation of names and keys that come from URLs and bodies.

use crate::GatewayError;

/// Longest accepted key (rate-limit key, cache key, experiment unit), in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest accepted name (policy, namespace, group, experiment), in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A name: 1..=64 bytes of `[A-Za-z0-9_.-]`. Used for policies, namespaces, provider groups,
/// experiments and provider names.
pub fn name<'a>(what: &'static str, s: &'a str) -> Result<&'a str, GatewayError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(GatewayError::bad_request(
            "invalid-name",
            format!("{what} must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(GatewayError::bad_request(
            "invalid-name",
            format!("{what} may contain only letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(s)
}

/// A key: 1..=512 bytes of printable text without control characters (after URL decoding).
pub fn key<'a>(what: &'static str, s: &'a str) -> Result<&'a str, GatewayError> {
    if s.is_empty() || s.len() > MAX_KEY_LEN {
        return Err(GatewayError::bad_request(
            "invalid-key",
            format!("{what} must be 1 to {MAX_KEY_LEN} bytes"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(GatewayError::bad_request(
            "invalid-key",
            format!("{what} must not contain control characters"),
        ));
    }
    Ok(s)
}

/// Percent-decodes one URL path segment. Invalid escapes and non-UTF-8 results are errors.
pub fn percent_decode(segment: &str) -> Result<String, GatewayError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    GatewayError::bad_request("invalid-path", "malformed percent-escape in path")
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| GatewayError::bad_request("invalid-path", "path is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_safe_ascii_only() {
        assert!(name("policy", "default").is_ok());
        assert!(name("policy", "tier-1.free_plan").is_ok());
        assert!(name("policy", "").is_err());
        assert!(name("policy", "a b").is_err());
        assert!(name("policy", "ü").is_err());
        assert!(name("policy", &"x".repeat(65)).is_err());
    }

    #[test]
    fn keys_reject_control_characters_and_overlong_input() {
        assert!(key("key", "user:42/ünïcode ok").is_ok());
        assert!(key("key", "a\u{0}b").is_err());
        assert!(key("key", "line\nbreak").is_err());
        assert!(key("key", &"k".repeat(513)).is_err());
        assert!(key("key", &"k".repeat(512)).is_ok());
    }

    #[test]
    fn percent_decoding_handles_utf8_and_rejects_garbage() {
        assert_eq!(percent_decode("a%20b%C3%BC").unwrap(), "a bü");
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%FF").is_err());
    }
}

/// The query parameters of a full URL or a path (`a=1&b=x%20y`), decoded (`+` is a space).
/// A parameter whose escapes do not decode is an error; a parameter without `=` has an empty value.
pub fn query_pairs(url: &str) -> Result<Vec<(String, String)>, GatewayError> {
    let Some((_, query)) = url.split_once('?') else {
        return Ok(Vec::new());
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_decode(&s.replace('+', " ")).map_err(|_| {
                    GatewayError::bad_request("invalid-query", "malformed percent-escape in query")
                })
            };
            Ok((dec(k)?, dec(v)?))
        })
        .collect()
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn parses_and_decodes_query_pairs() {
        let q = query_pairs("https://x/metrics?period=24h&format=json&x=a+b%21&flag#frag").unwrap();
        assert_eq!(
            q,
            vec![
                ("period".into(), "24h".into()),
                ("format".into(), "json".into()),
                ("x".into(), "a b!".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert!(query_pairs("/p").unwrap().is_empty());
        assert!(query_pairs("/p?a=%zz").is_err());
    }
}
