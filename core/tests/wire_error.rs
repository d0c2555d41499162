//! An object's error must reach the client exactly as the object raised it: the worker rebuilds
//! the `GatewayError` from the `WireError` in the reply, so the slug (`type` of the problem),
//! the HTTP status, the detail and structured data (the 413 limit, the 405 `Allow` value) must
//! all survive the hop.

use gateway_core::protocol::{self, Reply, WireError};
use gateway_core::GatewayError;
use serde::Serialize;

/// One error of every variant, and every `BadRequest` slug the objects raise.
fn every_error() -> Vec<GatewayError> {
    let mut all = vec![
        GatewayError::Unauthorized,
        GatewayError::Forbidden("admin access is disabled".into()),
        GatewayError::NotFound("no such experiment".into()),
        GatewayError::MethodNotAllowed {
            method: "PATCH".into(),
            allowed: "GET, HEAD, PUT, DELETE".into(),
        },
        GatewayError::PayloadTooLarge { limit: 1_048_576 },
        GatewayError::PayloadTooLarge { limit: 0 },
        GatewayError::Conflict("experiment exists".into()),
        GatewayError::TooManyRequests("rate limited by policy default".into()),
        GatewayError::Unavailable("a backend hop failed; retry later".into()),
        GatewayError::BadGateway("every provider failed".into()),
        GatewayError::GatewayTimeout("every provider timed out".into()),
        GatewayError::Internal("storage: boom".into()),
    ];
    for kind in [
        "invalid-request",
        "invalid-json",
        "invalid-cost",
        "invalid-policy",
        "invalid-key",
        "invalid-name",
        "invalid-path",
        "invalid-query",
        "invalid-header",
        "invalid-ttl",
        "invalid-shard",
        "invalid-event",
        "invalid-experiment",
        "invalid-experiment-event",
        "invalid-alert-rule",
        "invalid-provider",
        "invalid-report",
    ] {
        all.push(GatewayError::bad_request(
            kind,
            format!("the {kind} detail 42"),
        ));
    }
    all
}

/// What the worker makes of `err` raised in an object: the object encodes the `Err` reply,
/// the worker decodes it and rebuilds the error.
fn across_the_hop(err: &GatewayError) -> GatewayError {
    let bytes = protocol::encode(&Reply::<u32>::Err(WireError::from(err)))
        .unwrap_or_else(|e| panic!("{err:?} does not encode: {e}"));
    let reply: Reply<u32> =
        protocol::decode(&bytes).unwrap_or_else(|e| panic!("{err:?} does not decode: {e}"));
    match reply {
        Err(wire) => wire.into_error(),
        Ok(v) => panic!("{err:?} came back as Ok({v})"),
    }
}

#[test]
fn every_error_kind_keeps_its_slug_and_status_across_the_hop() {
    for err in every_error() {
        let back = across_the_hop(&err);
        assert_eq!(back.slug(), err.slug(), "slug of {err:?} became {back:?}");
        assert_eq!(
            back.status(),
            err.status(),
            "status of {err:?} became {back:?}"
        );
        assert_eq!(back.to_string(), err.to_string(), "detail of {err:?}");
        assert_eq!(back, err);
    }
}

#[test]
fn a_bad_request_keeps_its_own_slug_not_invalid_request() {
    for kind in ["invalid-cost", "invalid-policy"] {
        let back = across_the_hop(&GatewayError::bad_request(kind, "x"));
        assert_eq!(back.slug(), kind);
        assert_eq!(back.status(), 400);
    }
}

#[test]
fn statuses_other_than_the_old_few_are_not_turned_into_500() {
    for (err, status) in [
        (GatewayError::Unauthorized, 401),
        (GatewayError::Forbidden("x".into()), 403),
        (GatewayError::TooManyRequests("x".into()), 429),
        (GatewayError::BadGateway("x".into()), 502),
        (GatewayError::GatewayTimeout("x".into()), 504),
    ] {
        assert_eq!(across_the_hop(&err).status(), status, "{err:?}");
    }
}

#[test]
fn payload_too_large_carries_its_limit_as_data_not_in_the_text() {
    let err = GatewayError::PayloadTooLarge { limit: 65_536 };
    let mut wire = WireError::from(&err);
    // The limit must not be recovered from the human text.
    wire.detail = "too big (see 7 docs)".into();
    assert_eq!(
        wire.into_error(),
        GatewayError::PayloadTooLarge { limit: 65_536 }
    );
}

/// The layout an object wrote before `WireError::extra` was appended.
#[derive(Serialize)]
struct WireErrorV1 {
    status: u16,
    kind: String,
    detail: String,
}

#[test]
fn a_newer_worker_reads_an_older_objects_error() {
    let old = protocol::encode(&Result::<u32, _>::Err(WireErrorV1 {
        status: 400,
        kind: "invalid-cost".into(),
        detail: "cost must be 1..=1000".into(),
    }))
    .unwrap();
    let reply: Reply<u32> = protocol::decode_reply(&old).unwrap();
    let err = reply.unwrap_err().into_error();
    assert_eq!(
        err,
        GatewayError::bad_request("invalid-cost", "cost must be 1..=1000")
    );

    let old_413 = protocol::encode(&Result::<u32, _>::Err(WireErrorV1 {
        status: 413,
        kind: "payload-too-large".into(),
        detail: GatewayError::PayloadTooLarge { limit: 4096 }.to_string(),
    }))
    .unwrap();
    let reply: Reply<u32> = protocol::decode_reply(&old_413).unwrap();
    assert_eq!(
        reply.unwrap_err().into_error(),
        GatewayError::PayloadTooLarge { limit: 4096 }
    );

    // A successful reply is unaffected by the fallback; garbage is still an error.
    let ok = protocol::encode(&Reply::<u32>::Ok(7)).unwrap();
    assert_eq!(protocol::decode_reply::<u32>(&ok).unwrap(), Ok(7));
    assert!(protocol::decode_reply::<u32>(&[protocol::VERSION, 0xff]).is_err());
}

#[test]
fn an_older_worker_reads_a_newer_objects_error() {
    #[derive(serde::Deserialize)]
    struct OldReader {
        status: u16,
        kind: String,
        detail: String,
    }
    let err = GatewayError::PayloadTooLarge { limit: 4096 };
    let bytes = protocol::encode(&Reply::<u32>::Err(WireError::from(&err))).unwrap();
    let old: Result<u32, OldReader> = protocol::decode(&bytes).unwrap();
    let old = old.err().unwrap();
    assert_eq!(
        (old.status, old.kind.as_str(), old.detail),
        (413, "payload-too-large", err.to_string())
    );
}

#[test]
fn an_unknown_slug_from_a_newer_object_keeps_its_status_where_possible() {
    let wire = |status: u16| WireError {
        status,
        kind: "some-future-kind".into(),
        detail: "d".into(),
        extra: protocol::WireExtra::None,
    };
    assert_eq!(wire(400).into_error().slug(), "some-future-kind");
    for status in [401, 403, 404, 409, 429, 502, 503, 504] {
        assert_eq!(wire(status).into_error().status(), status);
    }
    assert_eq!(wire(418).into_error().status(), 500);
}
