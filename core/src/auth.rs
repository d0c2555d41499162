//! Admin authentication: `Authorization: Bearer <ADMIN_TOKEN>`, compared in constant time.
//!
//! Fails closed: when no admin token is configured every admin request is refused.

use subtle::ConstantTimeEq;

use crate::GatewayError;

/// Checks an `Authorization` header value against the configured admin token.
///
/// The comparison does not leak, through timing, how many leading bytes matched (`subtle`).
/// Token length is not secret (the operator chooses it); tokens shorter than 16 bytes are
/// refused as misconfiguration so a trivially guessable token never works.
pub fn check_admin(
    authorization: Option<&str>,
    configured: Option<&str>,
) -> Result<(), GatewayError> {
    let configured = match configured {
        Some(t) if t.len() >= 16 => t,
        _ => {
            return Err(GatewayError::Forbidden(
                "admin routes are disabled: ADMIN_TOKEN is not set (or shorter than 16 bytes)"
                    .into(),
            ))
        }
    };
    let presented = authorization
        .and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(GatewayError::Unauthorized)?;
    if bool::from(presented.as_bytes().ct_eq(configured.as_bytes())) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden("invalid admin token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn accepts_the_right_bearer_token_case_insensitively() {
        assert!(check_admin(Some("Bearer 0123456789abcdef0123"), Some(TOKEN)).is_ok());
        assert!(check_admin(Some("bearer 0123456789abcdef0123"), Some(TOKEN)).is_ok());
    }

    #[test]
    fn missing_header_is_401_wrong_token_is_403() {
        assert_eq!(
            check_admin(None, Some(TOKEN)),
            Err(GatewayError::Unauthorized)
        );
        assert_eq!(
            check_admin(Some("Basic abc"), Some(TOKEN)),
            Err(GatewayError::Unauthorized)
        );
        assert_eq!(
            check_admin(Some("Bearer"), Some(TOKEN)),
            Err(GatewayError::Unauthorized)
        );
        assert_eq!(
            check_admin(Some("Bearer wrong"), Some(TOKEN))
                .unwrap_err()
                .status(),
            403
        );
        // A prefix of the right token is still wrong.
        assert_eq!(
            check_admin(Some("Bearer 0123456789abcdef012"), Some(TOKEN))
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn fails_closed_without_a_configured_token() {
        assert_eq!(
            check_admin(Some("Bearer x"), None).unwrap_err().status(),
            403
        );
        assert_eq!(
            check_admin(Some("Bearer short"), Some("short"))
                .unwrap_err()
                .status(),
            403
        );
    }
}
