//! The internal worker <-> Durable Object protocol.
//!
//! A message is one version byte ([`VERSION`]) followed by a postcard body. postcard is compact
//! and fast but not self-describing, so compatibility follows two rules (docs/ARCHITECTURE.md):
//! new enum variants and new struct fields are only ever **appended**, and decoding ignores
//! trailing bytes, so an older reader accepts a newer writer's message whose additions it does
//! not know. A version byte it does not know is refused with a clear error instead of misread.
//! Types that cross the hop must never use `#[serde(skip_serializing_if)]` (or `flatten`,
//! untagged enums): without field names, a skipped field shifts every later one.
//!
//! Every reply is a `Result<T, WireError>`: the object's error crosses the hop as data (slug,
//! status, detail and structured data, see [`WireError`]), is read with [`decode_reply`] and
//! turned back into the same [`GatewayError`] in the worker, mapped to HTTP in one place.
//! `core/tests/protocol_golden.rs` pins the bytes of every message: a change there breaks a
//! mixed-version rollout unless it only appends.

pub mod aggregator;
pub mod cache;
pub mod experiment;
pub mod providers;
pub mod ratelimit;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::alarm::AlarmStats;
use crate::GatewayError;

/// Protocol version written as the first byte of every message.
pub const VERSION: u8 = 1;

/// Encodes a message: version byte + postcard.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, GatewayError> {
    let mut out = vec![VERSION];
    let body = postcard::to_allocvec(msg)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a message, tolerating trailing bytes (fields appended by a newer writer).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    match bytes.split_first() {
        Some((&VERSION, body)) => Ok(postcard::take_from_bytes(body)?.0),
        Some((v, _)) => Err(GatewayError::Internal(format!(
            "internal protocol version {v} is not supported (this build speaks {VERSION})"
        ))),
        None => Err(GatewayError::Internal("empty internal message".into())),
    }
}

/// An error crossing the worker <-> object hop: enough to rebuild, in the worker, exactly the
/// [`GatewayError`] the object raised (same problem slug, same HTTP status, same detail, same
/// structured data), so it is mapped to HTTP in one place as if it had been raised in the worker.
///
/// # Wire layout
///
/// Inside a reply it follows the `Result::Err` tag (varint `1`). postcard, field by field:
///
/// | field    | encoding               | since               |
/// |----------|------------------------|---------------------|
/// | `status` | `u16`, varint          | first layout        |
/// | `kind`   | string (len + UTF-8)   | first layout        |
/// | `detail` | string (len + UTF-8)   | first layout        |
/// | `extra`  | [`WireExtra`], tag + fields | appended (second layout) |
///
/// `extra` was **appended**, nothing was reordered, so in a mixed-version rollout:
/// - an older worker reading a newer object's error reads the first three fields and ignores the
///   trailing `extra` (an error is the last thing in a reply, and [`decode`] tolerates trailing
///   bytes);
/// - a newer worker reading an older object's error (no `extra`) decodes it with
///   [`decode_reply`], which falls back to the first layout and sets `extra` to
///   [`WireExtra::None`]; slug and status still come through. The same fallback keeps an error
///   whose `extra` variant is newer than the reader (slug, status and detail survive; only the
///   structured data is lost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// HTTP status ([`GatewayError::status`]).
    pub status: u16,
    /// The problem slug ([`GatewayError::slug`]), e.g. `invalid-cost` or `rate-limited`.
    pub kind: String,
    /// Human detail (the error's `Display`).
    pub detail: String,
    /// Structured data of the kinds that carry some (appended; see the type's docs).
    pub extra: WireExtra,
}

/// Structured data an error carries besides its detail text. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireExtra {
    /// Nothing beyond status, slug and detail.
    None,
    /// `payload-too-large` (413): the limit in bytes.
    PayloadTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// `method-not-allowed` (405): the method used and the `Allow` header value.
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// Comma-separated allowed methods.
        allowed: String,
    },
}

/// The first layout of [`WireError`] (before `extra`), read from objects that predate it.
#[derive(Deserialize)]
struct WireErrorV1 {
    status: u16,
    kind: String,
    detail: String,
}

impl From<&GatewayError> for WireError {
    fn from(e: &GatewayError) -> Self {
        let extra = match e {
            GatewayError::PayloadTooLarge { limit } => WireExtra::PayloadTooLarge {
                limit: u64::try_from(*limit).unwrap_or(u64::MAX),
            },
            GatewayError::MethodNotAllowed { method, allowed } => WireExtra::MethodNotAllowed {
                method: method.clone(),
                allowed: allowed.to_string(),
            },
            _ => WireExtra::None,
        };
        WireError {
            status: e.status(),
            kind: e.slug().to_string(),
            detail: e.to_string(),
            extra,
        }
    }
}

impl From<GatewayError> for WireError {
    fn from(e: GatewayError) -> Self {
        WireError::from(&e)
    }
}

impl WireError {
    /// Back to the [`GatewayError`] the object raised, on the worker side.
    ///
    /// The slug decides the variant (every 400 is a `BadRequest` carrying the slug as its kind);
    /// structured data comes from `extra`. A slug this build does not know (a newer object's)
    /// becomes the variant with the same status where one carries a detail, else `Internal`.
    pub fn into_error(self) -> GatewayError {
        let WireError {
            status,
            kind,
            detail,
            extra,
        } = self;
        if status == 400 {
            return GatewayError::BadRequest {
                kind: kind.into(),
                detail,
            };
        }
        match (kind.as_str(), extra) {
            ("unauthorized", _) => GatewayError::Unauthorized,
            ("forbidden", _) => GatewayError::Forbidden(detail),
            ("not-found", _) => GatewayError::NotFound(detail),
            ("method-not-allowed", WireExtra::MethodNotAllowed { method, allowed }) => {
                GatewayError::MethodNotAllowed {
                    method,
                    allowed: allowed.into(),
                }
            }
            ("method-not-allowed", _) => GatewayError::MethodNotAllowed {
                method: String::new(),
                allowed: "".into(),
            },
            ("payload-too-large", WireExtra::PayloadTooLarge { limit }) => {
                GatewayError::PayloadTooLarge {
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                }
            }
            // Only an object that predates `extra` sends a 413 without its limit: the detail
            // text ("... the limit of N bytes") is all it has.
            ("payload-too-large", _) => GatewayError::PayloadTooLarge {
                limit: detail
                    .split_whitespace()
                    .find_map(|w| w.parse().ok())
                    .unwrap_or(0),
            },
            ("conflict", _) => GatewayError::Conflict(detail),
            ("rate-limited", _) => GatewayError::TooManyRequests(detail),
            ("unavailable", _) => GatewayError::Unavailable(detail),
            ("bad-gateway", _) => GatewayError::BadGateway(detail),
            ("gateway-timeout", _) => GatewayError::GatewayTimeout(detail),
            ("internal", _) => GatewayError::Internal(detail),
            (_, _) if matches!(status, 401 | 403 | 404 | 429) => GatewayError::Refused {
                status,
                kind: kind.into(),
                detail,
            },
            _ => match status {
                401 => GatewayError::Unauthorized,
                403 => GatewayError::Forbidden(detail),
                404 => GatewayError::NotFound(detail),
                409 => GatewayError::Conflict(detail),
                429 => GatewayError::TooManyRequests(detail),
                502 => GatewayError::BadGateway(detail),
                503 => GatewayError::Unavailable(detail),
                504 => GatewayError::GatewayTimeout(detail),
                _ => GatewayError::Internal(detail),
            },
        }
    }
}

/// Decodes an object's reply. Like [`decode`], plus the fallback for an error in the first
/// [`WireError`] layout (written by an object that predates `WireError::extra`, or carrying an
/// `extra` variant this build does not know): it is read with `extra` = [`WireExtra::None`].
pub fn decode_reply<T: DeserializeOwned>(bytes: &[u8]) -> Result<Reply<T>, GatewayError> {
    match decode::<Reply<T>>(bytes) {
        Ok(reply) => Ok(reply),
        // An error never touches `T`, so `()` reads it whatever the reply type.
        Err(e) => match decode::<Result<(), WireErrorV1>>(bytes) {
            Ok(Err(v1)) => Ok(Err(WireError {
                status: v1.status,
                kind: v1.kind,
                detail: v1.detail,
                extra: WireExtra::None,
            })),
            _ => Err(e),
        },
    }
}

/// A reply from an object.
pub type Reply<T> = Result<T, WireError>;

/// Common part of every object's stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStats {
    /// Alarm bookkeeping.
    pub alarm: AlarmStats,
    /// Schema version applied by the migration runner.
    pub schema_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V1 {
        a: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        a: u32,
        appended: Option<String>,
    }

    #[test]
    fn older_reader_accepts_a_newer_message_with_appended_fields() {
        let bytes = encode(&V2 {
            a: 7,
            appended: Some("new".into()),
        })
        .unwrap();
        assert_eq!(decode::<V1>(&bytes).unwrap(), V1 { a: 7 });
    }

    #[test]
    fn unknown_version_and_garbage_are_errors_not_panics() {
        assert!(decode::<V1>(&[]).is_err());
        assert!(decode::<V1>(&[9, 1]).is_err());
        assert!(decode::<V2>(&[VERSION, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn errors_round_trip_with_their_status() {
        let w = WireError::from(GatewayError::PayloadTooLarge { limit: 4096 });
        let back: WireError = decode(&encode(&w).unwrap()).unwrap();
        assert_eq!(back.clone().into_error().status(), 413);
        assert_eq!(
            back.into_error(),
            GatewayError::PayloadTooLarge { limit: 4096 }
        );
    }
}
