//! Unit tests of the balancer: strategies, circuit breaking, budgets and validation.

use super::*;

fn spec(name: &str, weight: u32) -> ProviderSpec {
    ProviderSpec {
        name: name.into(),
        url: format!("http://127.0.0.1:1/{name}"),
        weight,
        health_path: "/health".into(),
        timeout_ms: 1000,
        secret: None,
        cost_per_request_micro_usd: 0,
        cost_per_1k_input_micro_usd: 0,
        cost_per_1k_output_micro_usd: 0,
        budget_micro_usd: None,
        budget_period_ms: 86_400_000,
    }
}

#[test]
fn weighted_round_robin_matches_weights_exactly_per_cycle() {
    let mut b = Balancer::new(vec![spec("a", 3), spec("b", 1)], EjectionPolicy::default());
    let picks: Vec<String> = (0..8)
        .map(|_| b.pick(UnixMillis(0)).unwrap().name)
        .collect();
    assert_eq!(picks.iter().filter(|p| *p == "a").count(), 6);
    // Smooth: never more than three `a` in a row.
    assert_eq!(picks[..4], ["a", "a", "b", "a"]);
}

fn names(picks: &[Pick]) -> Vec<&str> {
    picks.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn ranked_picks_split_like_single_picks_and_rank_the_rest_for_failover() {
    let mut single = Balancer::new(vec![spec("a", 3), spec("b", 1)], EjectionPolicy::default());
    let mut ranked = single.clone();
    for _ in 0..40 {
        let one = single.pick(UnixMillis(0)).unwrap().name;
        let list = ranked.pick_ranked(UnixMillis(0), 0, &Preference::default(), 3);
        assert_eq!(
            list[0].name, one,
            "the first candidate is exactly the single pick"
        );
        assert_eq!(list.len(), 2);
        assert_ne!(list[0].name, list[1].name);
        for p in &list {
            ranked.release(&p.name, p.panic, UnixMillis(0));
        }
        single.release(&one, false, UnixMillis(0));
    }
    assert_eq!(ranked.health(0).map(|h| h.in_flight), Some(0), "released");
    assert_eq!(
        ranked
            .pick_ranked(UnixMillis(0), 0, &Preference::default(), 1)
            .len(),
        1
    );
    assert!(ranked
        .pick_ranked(UnixMillis(0), 0, &Preference::default(), 0)
        .is_empty());
}

#[test]
fn ranked_picks_put_ejected_providers_last_as_panic_and_skip_spent_budgets() {
    let policy = EjectionPolicy {
        consecutive_failures: 1,
        base_ejection_ms: 1000,
        max_ejected_percent: 100,
    };
    let mut pricey = spec("pricey", 1);
    pricey.cost_per_request_micro_usd = 100;
    pricey.budget_micro_usd = Some(100);
    let mut b = Balancer::new(vec![spec("down", 1), pricey, spec("ok", 1)], policy);
    let fail = Outcome {
        ok: false,
        error: Some(ErrorClass::ServerError),
        ..Outcome::default()
    };
    b.report("down", fail, UnixMillis(0));
    let list = b.pick_ranked(UnixMillis(1), 0, &Preference::default(), 3);
    assert_eq!(names(&list), ["pricey", "ok", "down"]);
    assert_eq!(
        list.iter().map(|p| p.panic).collect::<Vec<_>>(),
        [false, false, true]
    );
    for p in &list {
        b.release(&p.name, p.panic, UnixMillis(1));
    }
    b.report(
        "pricey",
        Outcome {
            ok: true,
            ..Outcome::default()
        },
        UnixMillis(1),
    );
    assert_eq!(
        b.budgets_reset_in_ms(UnixMillis(1)),
        None,
        "one budget is not all"
    );
    let list = b.pick_ranked(UnixMillis(2), 0, &Preference::default(), 3);
    assert_eq!(
        names(&list),
        ["ok", "down"],
        "a spent budget is never a candidate"
    );
    // Every budget spent: no candidate, and when the first comes back.
    let mut only = spec("only", 1);
    only.cost_per_request_micro_usd = 10;
    only.budget_micro_usd = Some(10);
    only.budget_period_ms = 60_000;
    let mut b = Balancer::new(vec![only], EjectionPolicy::default());
    b.report(
        "only",
        Outcome {
            ok: true,
            ..Outcome::default()
        },
        UnixMillis(1000),
    );
    assert!(b
        .pick_ranked(UnixMillis(5000), 0, &Preference::default(), 3)
        .is_empty());
    // The period started at 0 (a fresh provider), so it ends at 60 000.
    assert_eq!(b.budgets_reset_in_ms(UnixMillis(5000)), Some(55_000));
}

#[test]
fn a_half_open_fallback_holds_the_trial_slot_until_released() {
    let policy = EjectionPolicy {
        consecutive_failures: 1,
        base_ejection_ms: 1000,
        max_ejected_percent: 100,
    };
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
    let fail = Outcome {
        ok: false,
        ..Outcome::default()
    };
    b.report("b", fail, UnixMillis(0));
    // At 2000 b's ejection has ended: half-open, one trial at a time.
    let list = b.pick_ranked(UnixMillis(2000), 0, &Preference::default(), 3);
    assert_eq!(names(&list), ["a", "b"]);
    assert!(
        !b.health(1).unwrap().is_healthy(UnixMillis(2000)),
        "trial slot taken"
    );
    b.release("b", false, UnixMillis(2000));
    assert!(
        b.health(1).unwrap().is_healthy(UnixMillis(2000)),
        "slot returned"
    );
}

#[test]
fn a_preferred_provider_is_used_while_healthy_and_never_when_ejected() {
    let policy = EjectionPolicy {
        consecutive_failures: 1,
        base_ejection_ms: 1000,
        max_ejected_percent: 100,
    };
    let mut b = Balancer::new(vec![spec("a", 3), spec("b", 1)], policy);
    let prefer_b = Preference {
        provider: Some("b".into()),
        strategy: None,
    };
    for _ in 0..5 {
        assert_eq!(
            b.pick_with(UnixMillis(0), &[], 0, &prefer_b).unwrap().name,
            "b"
        );
    }
    let fail = Outcome {
        ok: false,
        latency_ms: 5,
        retry_after_ms: None,
        input_tokens: 0,
        output_tokens: 0,
        error: None,
    };
    b.report("b", fail, UnixMillis(0));
    assert_eq!(
        b.pick_with(UnixMillis(10), &[], 0, &prefer_b).unwrap().name,
        "a"
    );
    // A strategy preference overrides the group's weighted strategy.
    let mut c = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
    let ok = |ms| Outcome {
        ok: true,
        latency_ms: ms,
        ..fail
    };
    c.report("a", ok(200), UnixMillis(0));
    c.report("b", ok(5), UnixMillis(0));
    let fastest = Preference {
        provider: None,
        strategy: Some(Strategy::LeastLatency),
    };
    for _ in 0..4 {
        assert_eq!(
            c.pick_with(UnixMillis(1), &[], 0, &fastest).unwrap().name,
            "b"
        );
    }
}

#[test]
fn consecutive_failures_eject_with_growing_time_and_probe_restores() {
    let policy = EjectionPolicy {
        consecutive_failures: 2,
        base_ejection_ms: 1000,
        max_ejected_percent: 100,
    };
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
    let fail = Outcome {
        ok: false,
        latency_ms: 5,
        retry_after_ms: None,
        input_tokens: 0,
        output_tokens: 0,
        error: None,
    };
    b.report("a", fail, UnixMillis(0));
    assert!(b.health(0).unwrap().is_healthy(UnixMillis(0)));
    b.report("a", fail, UnixMillis(0));
    assert_eq!(b.health(0).unwrap().ejected_until, Some(UnixMillis(1000)));
    for _ in 0..4 {
        assert_eq!(b.pick(UnixMillis(10)).unwrap().name, "b");
    }
    b.on_probe("a", true, UnixMillis(20));
    assert!(b.health(0).unwrap().is_healthy(UnixMillis(20)));
    b.report("a", fail, UnixMillis(30));
    b.report("a", fail, UnixMillis(30));
    assert_eq!(
        b.health(0).unwrap().ejected_until,
        Some(UnixMillis(2030)),
        "doubled"
    );
}

#[test]
fn all_ejected_routes_to_least_bad_in_panic_mode() {
    let policy = EjectionPolicy {
        consecutive_failures: 1,
        base_ejection_ms: 1000,
        max_ejected_percent: 100,
    };
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
    b.report(
        "a",
        Outcome {
            ok: false,
            latency_ms: 1,
            retry_after_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            error: None,
        },
        UnixMillis(0),
    );
    b.report(
        "b",
        Outcome {
            ok: false,
            latency_ms: 1,
            retry_after_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            error: None,
        },
        UnixMillis(500),
    );
    let p = b.pick(UnixMillis(600)).unwrap();
    assert!(p.panic);
    assert_eq!(p.name, "a");
}

#[test]
fn retry_after_cools_a_provider_down_without_counting_a_failure() {
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
    b.report(
        "a",
        Outcome {
            ok: false,
            latency_ms: 3,
            retry_after_ms: Some(2000),
            input_tokens: 0,
            output_tokens: 0,
            error: None,
        },
        UnixMillis(0),
    );
    let h = b.health(0).unwrap();
    assert_eq!((h.failures, h.rate_limited, h.requests), (0, 1, 0));
    for _ in 0..4 {
        assert_eq!(b.pick(UnixMillis(1999)).unwrap().name, "b");
    }
    let names: Vec<String> = (0..4)
        .map(|_| b.pick(UnixMillis(2000)).unwrap().name)
        .collect();
    assert!(names.contains(&"a".to_string()), "back after Retry-After");
}

#[test]
fn excluded_providers_are_skipped_and_exhaustion_is_none() {
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
    assert_eq!(
        b.pick_excluding(UnixMillis(0), &["a".into()], 0)
            .unwrap()
            .name,
        "b"
    );
    assert_eq!(
        b.pick_excluding(UnixMillis(0), &["a".into(), "b".into()], 0),
        None
    );
}

#[test]
fn least_latency_prefers_the_fastest_after_trying_each() {
    let mut b = Balancer::new(
        vec![spec("slow", 1), spec("fast", 1)],
        EjectionPolicy::default(),
    )
    .with_strategy(Strategy::LeastLatency);
    b.report(
        "slow",
        Outcome {
            ok: true,
            latency_ms: 300,
            retry_after_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            error: None,
        },
        UnixMillis(0),
    );
    assert_eq!(
        b.pick(UnixMillis(1)).unwrap().name,
        "fast",
        "untried provider first"
    );
    b.report(
        "fast",
        Outcome {
            ok: true,
            latency_ms: 20,
            retry_after_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            error: None,
        },
        UnixMillis(1),
    );
    for _ in 0..5 {
        assert_eq!(b.pick(UnixMillis(2)).unwrap().name, "fast");
    }
}

#[test]
fn specs_and_picks_survive_the_postcard_hop() {
    // postcard is not self-describing: a skipped field would corrupt every later one.
    let mut s = spec("a", 2);
    for secret in [None, Some("API_KEY".to_string())] {
        s.secret = secret;
        let back: ProviderSpec =
            crate::protocol::decode(&crate::protocol::encode(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let p = Pick::of(&s, false);
        let back: Pick = crate::protocol::decode(&crate::protocol::encode(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}

#[test]
fn usage_is_costed_and_an_exhausted_budget_leaves_rotation_until_the_period_ends() {
    let mut pricey = spec("pricey", 1);
    pricey.cost_per_request_micro_usd = 100;
    pricey.cost_per_1k_output_micro_usd = 2000;
    pricey.budget_micro_usd = Some(250);
    pricey.budget_period_ms = 10_000;
    let mut b = Balancer::new(vec![pricey, spec("cheap", 1)], EjectionPolicy::default());
    let used = Outcome {
        ok: true,
        latency_ms: 5,
        output_tokens: 30,
        ..Outcome::default()
    };
    b.report("pricey", used, UnixMillis(0));
    assert_eq!(b.health(0).unwrap().cost_micro_usd, 160);
    assert_eq!(b.budget_left(0, UnixMillis(1)), Some(90));
    b.report("pricey", used, UnixMillis(1));
    assert_eq!(b.budget_left(0, UnixMillis(2)), Some(0));
    for _ in 0..4 {
        assert_eq!(b.pick(UnixMillis(2)).unwrap().name, "cheap");
    }
    assert_eq!(
        b.budget_left(0, UnixMillis(10_000)),
        Some(250),
        "a new period"
    );
}

#[test]
fn no_more_than_the_max_share_is_ejected() {
    let policy = EjectionPolicy {
        consecutive_failures: 1,
        base_ejection_ms: 1000,
        max_ejected_percent: 50,
    };
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
    let fail = Outcome {
        ok: false,
        latency_ms: 1,
        ..Outcome::default()
    };
    b.report("a", fail, UnixMillis(0));
    b.report("b", fail, UnixMillis(0));
    assert!(!b.health(0).unwrap().is_healthy(UnixMillis(1)));
    assert!(
        b.health(1).unwrap().is_healthy(UnixMillis(1)),
        "ejecting b would exceed 50%"
    );
    assert_eq!(b.health(1).unwrap().failures, 1);
}

#[test]
fn circuit_opens_goes_half_open_admits_one_trial_and_closes_with_slow_start() {
    let policy = EjectionPolicy {
        consecutive_failures: 2,
        base_ejection_ms: 1000,
        max_ejected_percent: 100,
    };
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], policy);
    let fail = Outcome {
        ok: false,
        latency_ms: 5,
        ..Outcome::default()
    };
    let ok = Outcome {
        ok: true,
        latency_ms: 5,
        ..Outcome::default()
    };
    b.report("a", fail, UnixMillis(0));
    b.report("a", fail, UnixMillis(0));
    assert_eq!(
        b.health(0).unwrap().circuit_at(UnixMillis(999)),
        Circuit::Open
    );
    assert_eq!(
        b.health(0).unwrap().circuit_at(UnixMillis(1000)),
        Circuit::HalfOpen
    );
    // Half-open: exactly one trial at a time.
    let picks: Vec<String> = (0..4)
        .map(|_| b.pick(UnixMillis(1000)).unwrap().name)
        .collect();
    assert_eq!(picks.iter().filter(|p| *p == "a").count(), 1, "{picks:?}");
    // The trial fails: open again, for twice as long.
    b.report("a", fail, UnixMillis(1010));
    assert_eq!(b.health(0).unwrap().ejected_until, Some(UnixMillis(3010)));
    // A passing probe moves it to half-open; a successful trial closes it.
    b.on_probe("a", true, UnixMillis(1500));
    assert_eq!(b.health(0).unwrap().circuit, Circuit::HalfOpen);
    while b.pick(UnixMillis(1500)).unwrap().name != "a" {}
    b.report("a", ok, UnixMillis(1600));
    let h = b.health(0).unwrap();
    assert_eq!(h.circuit, Circuit::Closed);
    assert_eq!(
        h.weight_percent(UnixMillis(1600)),
        10,
        "slow start begins at 10 %"
    );
    assert_eq!(h.weight_percent(UnixMillis(1600 + SLOW_START_MS / 2)), 55);
    assert_eq!(h.weight_percent(UnixMillis(1600 + SLOW_START_MS)), 100);
}

#[test]
fn failure_rate_over_the_window_ejects_even_without_a_streak() {
    let mut b = Balancer::new(vec![spec("a", 1), spec("b", 1)], EjectionPolicy::default());
    for i in 0..12 {
        let o = Outcome {
            ok: i % 2 == 0,
            latency_ms: 5,
            ..Outcome::default()
        };
        b.report("a", o, UnixMillis(i));
    }
    assert_eq!(
        b.health(0).unwrap().circuit,
        Circuit::Open,
        "50 % of 10+ outcomes failed"
    );
    assert!(
        b.health(0).unwrap().consecutive_failures <= 1,
        "never a streak of 5"
    );
}

#[test]
fn p2c_prefers_the_less_loaded_of_two_random_choices() {
    let mut b = Balancer::new(
        vec![spec("slow", 1), spec("fast", 1)],
        EjectionPolicy::default(),
    )
    .with_strategy(Strategy::P2c);
    b.report(
        "slow",
        Outcome {
            ok: true,
            latency_ms: 400,
            ..Outcome::default()
        },
        UnixMillis(0),
    );
    b.report(
        "fast",
        Outcome {
            ok: true,
            latency_ms: 10,
            ..Outcome::default()
        },
        UnixMillis(0),
    );
    let fast = (0..100u64)
        .filter(|r| {
            let p = b
                .pick_excluding(UnixMillis(1), &[], r.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .unwrap();
            b.report(
                &p.name,
                Outcome {
                    ok: true,
                    latency_ms: if p.name == "fast" { 10 } else { 400 },
                    ..Outcome::default()
                },
                UnixMillis(1),
            );
            p.name == "fast"
        })
        .count();
    assert_eq!(fast, 100, "with two providers both are always compared");
}

#[test]
fn cost_strategy_takes_the_cheapest_within_the_latency_bound() {
    let mut cheap_slow = spec("cheap_slow", 1);
    cheap_slow.cost_per_request_micro_usd = 1;
    let mut cheap = spec("cheap", 1);
    cheap.cost_per_request_micro_usd = 10;
    let mut dear = spec("dear", 1);
    dear.cost_per_request_micro_usd = 100;
    let mut b = Balancer::new(vec![cheap_slow, cheap, dear], EjectionPolicy::default())
        .with_strategy(Strategy::Cost);
    for (n, l) in [("cheap_slow", 900), ("cheap", 60), ("dear", 50)] {
        b.report(
            n,
            Outcome {
                ok: true,
                latency_ms: l,
                ..Outcome::default()
            },
            UnixMillis(0),
        );
    }
    for _ in 0..3 {
        assert_eq!(b.pick(UnixMillis(1)).unwrap().name, "cheap");
    }
}

#[test]
fn rejects_bad_groups() {
    assert!(validate_group(&[]).is_err());
    assert!(validate_group(&[spec("a", 1), spec("a", 2)]).is_err());
    assert!(validate_group(&[spec("a", 0)]).is_err());
    let mut s = spec("a", 1);
    s.url = "ftp://x".into();
    assert!(validate_group(&[s]).is_err());
    assert!(validate_group(&[spec("a", 1), spec("b", 1000)]).is_ok());
}
