//! Unit tests of key identity, validation, admission and settlement.

use super::*;

const NOW: UnixMillis = UnixMillis(1_800_000_030_000); // 30 s into a minute

fn record(def: KeyDef) -> KeyRecord {
    let (id, hash) = identify(&secret_from(&[7; SECRET_BYTES])).unwrap();
    KeyRecord {
        id,
        hash,
        def,
        created_at: NOW,
        revoked_at: None,
    }
}

fn ask(tokens: u64) -> Admission {
    Admission {
        model: "gpt-4o".into(),
        group: "openai".into(),
        tokens,
    }
}

#[test]
fn a_secret_names_its_id_and_only_our_shape_is_accepted() {
    let s = secret_from(&[0xab; SECRET_BYTES]);
    assert_eq!(s.len(), SECRET_PREFIX.len() + 2 * SECRET_BYTES);
    assert!(s.starts_with("sk-eg-abab"));
    let (id, hash) = identify(&s).unwrap();
    assert_eq!(hash.len(), 64);
    assert_eq!(id, format!("key_{}", &hash[..16]));
    assert!(validate_id(&id).is_ok());
    // Pinned: SHA-256 of the secret (computed independently with Python's hashlib).
    let (_, h) = identify("sk-eg-000000000000000000000000000000000000000000000000").unwrap();
    assert_eq!(
        h,
        "9228cd3b86e64e2da492661e75c875ef633f904f45f2c6029f5508512b79d51a"
    );
    for bad in [
        "",
        "sk-eg-",
        "sk-eg-zz",
        "sk-other-000000000000000000000000000000000000000000000000",
    ] {
        assert!(identify(bad).is_none(), "{bad}");
    }
    assert!(validate_id("key_XYZ").is_err());
}

#[test]
fn specs_are_validated() {
    let ok = KeySpec {
        tokens_per_minute: Some(1000),
        models: vec!["gpt-4o".into()],
        metadata: [("team".to_string(), "search".to_string())].into(),
        ..KeySpec::default()
    };
    assert!(ok.into_def().is_ok());
    for bad in [
        KeySpec {
            tokens_per_minute: Some(0),
            ..KeySpec::default()
        },
        KeySpec {
            models: vec!["has space".into()],
            ..KeySpec::default()
        },
        KeySpec {
            groups: vec!["bad/group".into()],
            ..KeySpec::default()
        },
        KeySpec {
            name: Some(String::new()),
            ..KeySpec::default()
        },
    ] {
        let e = bad.into_def().unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
    }
}

#[test]
fn reservations_hold_the_token_window_and_settle_to_the_real_count() {
    let key = record(KeyDef {
        tokens_per_minute: Some(1_000),
        ..KeyDef::default()
    });
    let mut u = Usage::default();
    let a = u.admit(&key, &ask(400), NOW).unwrap();
    let b = u.admit(&key, &ask(400), NOW).unwrap();
    // 800 reserved: a third request of 400 would exceed 1000.
    let r = u.admit(&key, &ask(400), NOW).unwrap_err();
    assert_eq!((r.status, r.kind.as_str()), (429, "token-limit"));
    assert_eq!(r.retry_after_s, Some(30));
    // The first used only 100: 300 come back and the third fits.
    assert!(u.settle(a.reservation, Some(100), 5, NOW));
    assert_eq!(u.minute.reserved + u.minute.used, 500);
    let c = u.admit(&key, &ask(400), NOW).unwrap();
    // Settling twice changes nothing.
    assert!(!u.settle(a.reservation, Some(100), 5, NOW));
    assert!(u.settle(b.reservation, None, 7, NOW));
    assert!(u.settle(c.reservation, Some(450), 0, NOW));
    assert_eq!((u.minute.reserved, u.minute.used), (0, 100 + 400 + 450));
    assert_eq!(u.spent_micro_usd, 12);
    assert_eq!(u.tokens, 950);
    // The next minute starts empty.
    let next = NOW.plus_ms(30_000);
    let v = u.view(next);
    assert_eq!((v.tokens_minute, v.tokens_day), (0, 950));
}

#[test]
fn a_late_settle_charges_only_the_excess_to_the_new_window() {
    let key = record(KeyDef {
        tokens_per_minute: Some(1_000),
        ..KeyDef::default()
    });
    let mut u = Usage::default();
    let a = u.admit(&key, &ask(100), NOW).unwrap();
    let later = NOW.plus_ms(60_000);
    assert!(u.settle(a.reservation, Some(250), 0, later));
    assert_eq!(
        u.minute.used, 150,
        "the estimate was charged in the old minute"
    );
    assert_eq!(u.day.used, 250, "same day: the real count");
}

#[test]
fn an_unsettled_reservation_is_charged_at_its_estimate_after_the_ttl() {
    let key = record(KeyDef {
        tokens_per_day: Some(1_000),
        ..KeyDef::default()
    });
    let mut u = Usage::default();
    let a = u.admit(&key, &ask(300), NOW).unwrap();
    u.roll(NOW.plus_ms(RESERVATION_TTL_MS + 1));
    assert!(u.in_flight.is_empty());
    assert_eq!(u.day.used, 300);
    assert!(!u.settle(
        a.reservation,
        Some(10),
        0,
        NOW.plus_ms(RESERVATION_TTL_MS + 2)
    ));
}

#[test]
fn revoked_disallowed_and_over_budget_keys_are_refused_without_a_charge() {
    let mut key = record(KeyDef {
        budget_day_micro_usd: Some(100),
        models: vec!["gpt-4o".into()],
        ..KeyDef::default()
    });
    let mut u = Usage::default();
    let other = Admission {
        model: "other".into(),
        ..ask(1)
    };
    assert_eq!(u.admit(&key, &other, NOW).unwrap_err().status, 403);
    let a = u.admit(&key, &ask(1), NOW).unwrap();
    assert!(u.settle(a.reservation, Some(1), 100, NOW));
    let r = u.admit(&key, &ask(1), NOW).unwrap_err();
    assert_eq!((r.status, r.kind.as_str()), (429, "budget-exceeded"));
    assert!(r.retry_after_s.unwrap() > 0);
    // The next UTC day has a fresh budget.
    assert!(u.admit(&key, &ask(1), NOW.plus_ms(86_400_000)).is_ok());
    key.revoked_at = Some(NOW);
    let before = u.clone();
    let r = u.admit(&key, &ask(1), NOW.plus_ms(86_400_000)).unwrap_err();
    assert_eq!((r.status, r.kind.as_str()), (401, "key-revoked"));
    assert_eq!(u, before);
}

#[test]
fn the_request_policy_is_enforced_and_named_in_the_headers() {
    let policy = PolicyJson {
        capacity: Some(2),
        refill: Some(2),
        period_ms: Some(60_000),
        ..PolicyJson::default()
    }
    .into_policy()
    .unwrap();
    let key = record(KeyDef {
        policy: Some(policy),
        tokens_per_minute: Some(10_000),
        ..KeyDef::default()
    });
    let mut u = Usage::default();
    let a = u.admit(&key, &ask(100), NOW).unwrap();
    let (p, s) = Limit::headers(&a.limits);
    assert_eq!(p, "\"requests\";q=2;w=60, \"tokens\";q=10000;w=60");
    assert_eq!(s, "\"requests\";r=1;t=30, \"tokens\";r=9900;t=30");
    u.admit(&key, &ask(100), NOW).unwrap();
    let r = u.admit(&key, &ask(100), NOW).unwrap_err();
    assert_eq!((r.status, r.kind.as_str()), (429, "rate-limited"));
    // The refused request reserved nothing.
    assert_eq!(u.minute.reserved, 200);
}

#[test]
fn month_bounds_follow_the_calendar() {
    // 2026-12-04T00:00:00Z → December 2026.
    let (s, e) = usage::month_bounds(UnixMillis(1_796_342_400_000));
    assert_eq!(s, 1_796_083_200_000); // 2026-12-01
    assert_eq!(e, 1_798_761_600_000); // 2027-01-01
}

mod store_tests {
    use super::*;
    use crate::protocol::ratelimit::{Request, Response as Reply};

    fn admit(id: &str, hash: &str) -> Request {
        Request::Admit {
            id: id.into(),
            hash: hash.into(),
            ask: ask(10),
        }
    }

    #[test]
    fn only_the_exact_secret_hash_is_admitted() {
        let key = record(KeyDef::default());
        let (id, hash) = (key.id.clone(), key.hash.clone());
        let (reply, writes) =
            store::handle(admit(&id, &hash), Some(key.clone()), None, NOW).unwrap();
        assert!(matches!(reply, Reply::Admission(a) if a.is_ok()));
        assert_eq!(writes.len(), 1);
        let wrong = "0".repeat(64);
        let (reply, writes) = store::handle(admit(&id, &wrong), Some(key), None, NOW).unwrap();
        match reply {
            Reply::Admission(a) => assert_eq!(a.unwrap_err().kind, "invalid-api-key"),
            other => panic!("{other:?}"),
        }
        assert!(writes.is_empty());
        let (reply, _) = store::handle(admit(&id, &hash), None, None, NOW).unwrap();
        assert!(
            matches!(reply, Reply::Admission(a) if a.as_ref().as_ref().is_err_and(|r| r.status == 401))
        );
    }

    #[test]
    fn create_conflicts_revoke_is_idempotent_and_settle_needs_the_key() {
        let key = record(KeyDef::default());
        let id = key.id.clone();
        let create = Request::CreateKey(Box::new(key.clone()));
        assert!(store::handle(create.clone(), None, None, NOW).is_ok());
        assert_eq!(
            store::handle(create, Some(key.clone()), None, NOW)
                .unwrap_err()
                .status(),
            409
        );
        let (reply, writes) = store::handle(
            Request::RevokeKey { id: id.clone() },
            Some(key.clone()),
            None,
            NOW,
        )
        .unwrap();
        let revoked = match (reply, writes.as_slice()) {
            (Reply::Key(v), [store::Write::Record(r)]) => {
                assert_eq!(v.revoked_at, Some(NOW));
                (**r).clone()
            }
            other => panic!("{other:?}"),
        };
        let (_, writes) = store::handle(
            Request::RevokeKey { id: id.clone() },
            Some(revoked),
            None,
            NOW,
        )
        .unwrap();
        assert!(writes.is_empty(), "revoking twice writes nothing");
        let settle = Request::SettleKey {
            id: id.clone(),
            reservation: 0,
            tokens: Some(1),
            cost_micro_usd: 1,
        };
        let (reply, _) = store::handle(settle, None, None, NOW).unwrap();
        assert_eq!(reply, Reply::KeySettled { settled: false });
        assert_eq!(
            store::handle(Request::GetKey { id }, None, None, NOW)
                .unwrap_err()
                .status(),
            404
        );
    }
}
