//! The proxy path's cache policy: what key a request is cached under, and whether (and for how
//! long) a response may be cached.
//!
//! **Key**: `{tenant}|{METHOD}|{normalised path}|{allow-listed query, sorted}` plus, for `POST`
//! (idempotent provider calls such as chat completions with the same body), `|sha256(body)`.
//! SHA-256 rather than a fast hash because a collision would serve one request's answer to another.
//! Other methods are never cached.
//!
//! **Response**: never cached with `Set-Cookie`, `Cache-Control: private`, `no-store` or
//! `no-cache`; 2xx (200, 203) are cached for `s-maxage`, else `max-age`, else the route's default
//! TTL; 404 and 410 become negative entries for the negative TTL; everything else is not cached.

use sha2::{Digest, Sha256};

use super::MAX_TTL_S;

/// Parsed `Cache-Control` directives that matter here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage` (wins over `max-age` for a shared cache).
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate`.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error`.
    pub stale_if_error: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
}

/// Parses a `Cache-Control` value leniently (as a cache must: unknown directives are ignored,
/// malformed numbers ignore that directive, values are capped at one year).
pub fn parse_cache_control(value: &str) -> CacheControl {
    let mut cc = CacheControl::default();
    for directive in value.split(',') {
        let directive = directive.trim();
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (directive, None),
        };
        let num = arg
            .and_then(|a| a.parse::<u64>().ok())
            .map(|v| v.min(MAX_TTL_S));
        match name.to_ascii_lowercase().as_str() {
            "max-age" => cc.max_age = num,
            "s-maxage" => cc.s_maxage = num,
            "stale-while-revalidate" => cc.stale_while_revalidate = num,
            "stale-if-error" => cc.stale_if_error = num,
            "no-store" => cc.no_store = true,
            "no-cache" => cc.no_cache = true,
            "private" => cc.private = true,
            _ => {}
        }
    }
    cc
}

/// Collapses repeated slashes, drops `.` segments, resolves `..`, drops a trailing slash.
pub fn normalise_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// Escapes the characters that separate a key's parts, so `a=1%262` and `a=1&2` differ.
fn escape_part(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '&' => out.push_str("%26"),
            '=' => out.push_str("%3D"),
            '|' => out.push_str("%7C"),
            c => out.push(c),
        }
    }
}

/// The cache key of a request, or `None` when the method is never cached.
///
/// The query is part of the key: every parameter (`allowed_query: None`), or only the named
/// ones (an allow-list, for APIs whose other parameters do not change the answer, e.g. tracking
/// tags). Parameters are sorted, so `?b=2&a=1` and `?a=1&b=2` share an entry; a repeated
/// parameter keeps all its values.
pub fn cache_key(
    tenant: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    allowed_query: Option<&[String]>,
    body: &[u8],
) -> Option<String> {
    let method = method.to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "HEAD" | "POST") {
        return None;
    }
    let mut params: Vec<String> = query
        .iter()
        .filter(|(k, _)| allowed_query.is_none_or(|allowed| allowed.iter().any(|a| a == k)))
        .map(|(k, v)| {
            let mut p = String::with_capacity(k.len() + v.len() + 1);
            escape_part(k, &mut p);
            p.push('=');
            escape_part(v, &mut p);
            p
        })
        .collect();
    params.sort();
    // HEAD shares GET's entry.
    let method = if method == "HEAD" {
        "GET"
    } else {
        method.as_str()
    };
    let mut key = format!(
        "{tenant}|{method}|{}|{}",
        normalise_path(path),
        params.join("&")
    );
    if method == "POST" {
        let digest = Sha256::digest(body);
        key.push('|');
        for b in digest {
            key.push_str(&format!("{b:02x}"));
        }
    }
    Some(key)
}

/// How a response may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storable {
    /// Fresh time.
    pub ttl_s: u64,
    /// Stale-while-revalidate window.
    pub stale_while_revalidate_s: u64,
    /// Stale-if-error window.
    pub stale_if_error_s: u64,
    /// A negative entry (404/410).
    pub negative: bool,
}

/// Whether a response with `status` and `headers` (lower-case names) may be cached, and how.
pub fn storable(
    status: u16,
    headers: &[(String, String)],
    default_ttl_s: u64,
    negative_ttl_s: u64,
) -> Option<Storable> {
    if headers.iter().any(|(k, _)| k == "set-cookie") {
        return None;
    }
    let cc = headers
        .iter()
        .filter(|(k, _)| k == "cache-control")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let cc = parse_cache_control(&cc);
    if cc.no_store || cc.private || cc.no_cache {
        return None;
    }
    let windows = |ttl_s: u64, negative: bool| Storable {
        ttl_s,
        stale_while_revalidate_s: cc.stale_while_revalidate.unwrap_or(0),
        stale_if_error_s: cc.stale_if_error.unwrap_or(0),
        negative,
    };
    match status {
        200 | 203 => {
            let ttl = cc.s_maxage.or(cc.max_age).unwrap_or(default_ttl_s);
            (ttl > 0).then(|| windows(ttl, false))
        }
        404 | 410 => (negative_ttl_s > 0).then(|| windows(negative_ttl_s, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_normalise_paths_keep_only_allowed_query_and_hash_post_bodies() {
        let q = vec![
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
            ("utm".to_string(), "x".to_string()),
        ];
        let allowed = vec!["a".to_string(), "b".to_string()];
        let k1 = cache_key(
            "t1",
            "GET",
            "/v1//search/./titles/",
            &q,
            Some(&allowed),
            b"",
        )
        .unwrap();
        assert_eq!(k1, "t1|GET|/v1/search/titles|a=1&b=2");
        assert_eq!(
            cache_key("t1", "HEAD", "/v1/search/titles", &q, Some(&allowed), b"").unwrap(),
            k1
        );
        assert_ne!(
            cache_key("t2", "GET", "/v1/search/titles", &q, Some(&allowed), b"").unwrap(),
            k1,
            "tenants never share"
        );
        let p1 = cache_key("t1", "POST", "/v1/chat", &[], None, b"{\"q\":1}").unwrap();
        let p2 = cache_key("t1", "POST", "/v1/chat", &[], None, b"{\"q\":2}").unwrap();
        assert_ne!(p1, p2);
        assert_eq!(
            p1.rsplit('|').next().map(str::len),
            Some(64),
            "sha256 hex of the body"
        );
        assert_eq!(cache_key("t1", "DELETE", "/x", &[], None, b""), None);
        assert_eq!(normalise_path("/a/../../b/"), "/b");
    }

    #[test]
    fn by_default_every_query_parameter_is_part_of_the_key() {
        // The proxy once passed an empty allow-list, so `?page=1` and `?page=2` shared an entry.
        let page = |n: &str| vec![("page".to_string(), n.to_string())];
        let k = |q: &[(String, String)]| cache_key("t", "GET", "/list", q, None, b"").unwrap();
        assert_ne!(k(&page("1")), k(&page("2")));
        assert_ne!(k(&page("1")), k(&[]));
        let ab = vec![
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ];
        let ba = vec![
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ];
        assert_eq!(k(&ab), k(&ba), "order does not matter");
        let amp = vec![("a".to_string(), "1&b=2".to_string())];
        assert_ne!(k(&amp), k(&ab), "separators in values are escaped");
        let only: Vec<String> = vec!["page".into()];
        let tracked = vec![
            ("page".to_string(), "1".to_string()),
            ("utm".to_string(), "x".to_string()),
        ];
        assert_eq!(
            cache_key("t", "GET", "/list", &tracked, Some(&only), b""),
            cache_key("t", "GET", "/list", &page("1"), Some(&only), b""),
            "an allow-list ignores other parameters"
        );
    }

    #[test]
    fn never_caches_cookies_private_no_store_or_errors() {
        assert_eq!(storable(200, &h(&[("set-cookie", "a=b")]), 60, 10), None);
        assert_eq!(
            storable(200, &h(&[("cache-control", "private, max-age=60")]), 60, 10),
            None
        );
        assert_eq!(
            storable(200, &h(&[("cache-control", "no-store")]), 60, 10),
            None
        );
        assert_eq!(storable(500, &h(&[]), 60, 10), None);
        assert_eq!(storable(302, &h(&[]), 60, 10), None);
    }

    #[test]
    fn ttl_comes_from_s_maxage_then_max_age_then_default_and_404_is_negative() {
        let s = storable(
            200,
            &h(&[(
                "cache-control",
                "max-age=30, s-maxage=90, stale-while-revalidate=5, stale-if-error=600",
            )]),
            60,
            10,
        )
        .unwrap();
        assert_eq!(
            (
                s.ttl_s,
                s.stale_while_revalidate_s,
                s.stale_if_error_s,
                s.negative
            ),
            (90, 5, 600, false)
        );
        assert_eq!(
            storable(200, &h(&[("cache-control", "max-age=30")]), 60, 10)
                .unwrap()
                .ttl_s,
            30
        );
        assert_eq!(storable(200, &h(&[]), 60, 10).unwrap().ttl_s, 60);
        assert_eq!(
            storable(200, &h(&[("cache-control", "max-age=0")]), 60, 10),
            None
        );
        let n = storable(404, &h(&[]), 60, 10).unwrap();
        assert!(n.negative);
        assert_eq!(n.ttl_s, 10);
    }
}
