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
//! Every reply is a `Result<T, WireError>`: the object's error crosses the hop as data and is
//! turned back into a [`GatewayError`] in the worker, mapped to HTTP in one place.

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

/// An error crossing the worker <-> object hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// HTTP status.
    pub status: u16,
    /// The problem slug.
    pub kind: String,
    /// Human detail.
    pub detail: String,
}

impl From<&GatewayError> for WireError {
    fn from(e: &GatewayError) -> Self {
        WireError {
            status: e.status(),
            kind: e.slug().to_string(),
            detail: e.to_string(),
        }
    }
}

impl From<GatewayError> for WireError {
    fn from(e: GatewayError) -> Self {
        WireError::from(&e)
    }
}

impl WireError {
    /// Back to a [`GatewayError`] on the worker side.
    pub fn into_error(self) -> GatewayError {
        match self.status {
            400 => GatewayError::bad_request("invalid-request", self.detail),
            404 => GatewayError::NotFound(self.detail),
            409 => GatewayError::Conflict(self.detail),
            413 => GatewayError::PayloadTooLarge {
                limit: self
                    .detail
                    .split_whitespace()
                    .find_map(|w| w.parse().ok())
                    .unwrap_or(0),
            },
            503 => GatewayError::Unavailable(self.detail),
            _ => GatewayError::Internal(self.detail),
        }
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
