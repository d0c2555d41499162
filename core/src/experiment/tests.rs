//! Unit tests of the hash, the split, validation and the decision rule.

use super::*;

fn def(weights: &[u32]) -> ExperimentDef {
    ExperimentDef {
        min_sample: DEFAULT_MIN_SAMPLE,
        seed: "ttl-test".into(),
        variants: weights
            .iter()
            .enumerate()
            .map(|(i, w)| Variant {
                name: format!("v{i}"),
                weight: *w,
                params: "{}".into(),
                retired: false,
            })
            .collect(),
        coverage: 10_000,
        primary: MetricDef::well_known("cache_hit").unwrap(),
        guardrails: vec![MetricDef::well_known("latency_ms").unwrap()],
        target: None,
    }
}

/// Arm data with a binary primary at `rate` over `n` events and a latency guardrail with the
/// given mean and a spread of ±`spread` (half the events each side).
fn arm(n: u64, rate: f64, latency: f64, spread: f64) -> ArmData {
    let mut primary = Moments::default();
    let mut guard = Moments::default();
    let hits = (n as f64 * rate).round() as u64;
    for i in 0..n {
        primary.add(if i < hits { 1.0 } else { 0.0 });
        guard.add(latency + if i % 2 == 0 { spread } else { -spread });
    }
    ArmData {
        assigned: n,
        metrics: vec![primary, guard],
    }
}

#[test]
fn assignment_is_pinned() {
    // Expected buckets computed by an independent Python FNV-1a implementation.
    assert_eq!(bucket("ttl-test", "user-1"), 8_318);
    assert_eq!(bucket("ttl-test", "user-2"), 107);
    assert_eq!(bucket("other-seed", "user-1"), 2_183);
    let d = def(&[50, 50]);
    assert_eq!(assign(&d, "user-1"), 1);
    assert_eq!(assign(&d, "user-2"), 0);
}

#[test]
fn split_follows_weights() {
    let d = def(&[25, 75]);
    let n = 20_000;
    let ones = (0..n).filter(|i| assign(&d, &format!("u{i}")) == 1).count();
    let share = ones as f64 / n as f64;
    assert!((0.73..0.77).contains(&share), "share {share}");
}

#[test]
fn zero_weight_and_retired_arms_get_no_new_units() {
    let d = def(&[0, 1, 0]);
    assert!((0..1000).all(|i| assign(&d, &format!("u{i}")) == 1));
    let mut d = def(&[1, 1, 1]);
    d.variants[2].retired = true;
    let counts = (0..3000).fold([0; 3], |mut c, i| {
        c[assign(&d, &format!("u{i}"))] += 1;
        c
    });
    assert_eq!(counts[2], 0);
    assert!(counts[0] > 1300 && counts[1] > 1300, "{counts:?}");
}

#[test]
fn coverage_is_independent_of_the_arm_split() {
    let mut d = def(&[50, 50]);
    d.coverage = 2_500;
    let n = 20_000;
    let inside: Vec<String> = (0..n)
        .map(|i| format!("u{i}"))
        .filter(|u| covered(&d, u))
        .collect();
    let share = inside.len() as f64 / n as f64;
    assert!((0.23..0.27).contains(&share), "coverage share {share}");
    let treated = inside.iter().filter(|u| assign(&d, u) == 1).count();
    let split = treated as f64 / inside.len() as f64;
    assert!(
        (0.46..0.54).contains(&split),
        "split inside coverage {split}"
    );
    d.coverage = 10_000;
    assert!((0..100).all(|i| covered(&d, &format!("u{i}"))));
}

#[test]
fn promotes_a_clear_winner_only_after_the_minimum_sample_and_halts_on_srm() {
    let mut d = def(&[50, 50]);
    d.min_sample = 500;
    let small = analyse(
        &d,
        &[arm(400, 0.30, 100.0, 10.0), arm(400, 0.45, 100.0, 10.0)],
        None,
    );
    assert!(
        matches!(small.verdict, Verdict::Continue(_)),
        "{:?}",
        small.verdict
    );
    let big = analyse(
        &d,
        &[arm(2000, 0.30, 100.0, 10.0), arm(2000, 0.45, 100.0, 10.0)],
        Some(&small),
    );
    assert_eq!(big.verdict, Verdict::Promote("v1".into()));
    let worse = analyse(
        &d,
        &[arm(2000, 0.45, 100.0, 10.0), arm(2000, 0.30, 100.0, 10.0)],
        None,
    );
    assert!(
        matches!(worse.verdict, Verdict::Continue(_)),
        "a loser is never promoted"
    );
    let mut skewed = arm(4500, 0.3, 100.0, 10.0);
    skewed.assigned = 4500;
    let srm = analyse(&d, &[skewed, arm(5500, 0.4, 100.0, 10.0)], None);
    assert!(matches!(srm.verdict, Verdict::Halt(_)), "{:?}", srm.verdict);
}

#[test]
fn a_guardrail_regression_rolls_back_even_a_primary_winner() {
    let mut d = def(&[50, 50]);
    d.min_sample = 500;
    // Better hit rate, but latency 100 → 130 ms: rolled back, not promoted.
    let a = analyse(
        &d,
        &[arm(2000, 0.30, 100.0, 20.0), arm(2000, 0.45, 130.0, 20.0)],
        None,
    );
    match &a.verdict {
        Verdict::Rollback(arm, reason) => {
            assert_eq!(arm, "v1");
            assert!(reason.contains("latency_ms"), "{reason}");
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
    // A guardrail that improves never rolls back.
    let b = analyse(
        &d,
        &[arm(2000, 0.30, 130.0, 20.0), arm(2000, 0.45, 100.0, 20.0)],
        None,
    );
    assert_eq!(b.verdict, Verdict::Promote("v1".into()));
    // Retired arms are neither rolled back again nor promoted.
    d.variants.push(Variant {
        name: "v2".into(),
        weight: 50,
        params: "{}".into(),
        retired: false,
    });
    d.variants[1].retired = true;
    let c = analyse(
        &d,
        &[
            arm(2000, 0.30, 100.0, 20.0),
            arm(2000, 0.45, 130.0, 20.0),
            arm(2000, 0.30, 100.0, 20.0),
        ],
        None,
    );
    assert!(matches!(c.verdict, Verdict::Continue(_)), "{:?}", c.verdict);
}

#[test]
fn continuous_primary_lower_is_better() {
    let mut d = def(&[50, 50]);
    d.min_sample = 200;
    d.primary = MetricDef::well_known("latency_ms").unwrap();
    d.guardrails = vec![MetricDef::well_known("error").unwrap()];
    let mk = |lat: f64| {
        let mut x = arm(1000, 0.0, lat, 30.0);
        x.metrics.swap(0, 1);
        x
    };
    let a = analyse(&d, &[mk(120.0), mk(100.0)], None);
    assert_eq!(a.verdict, Verdict::Promote("v1".into()));
    let r = a.arms[1].metrics[0].vs_control.unwrap();
    assert!((r.effect + 20.0).abs() < 1e-9, "{r:?}");
    let slower = analyse(&d, &[mk(100.0), mk(120.0)], None);
    assert!(matches!(slower.verdict, Verdict::Continue(_)));
}

#[test]
fn arm_params_are_parsed_and_validated() {
    let p = ArmParams::parse(
        r#"{"cache_ttl_s":86400,"strategy":"least_latency","provider":"beta","note":"x"}"#,
    )
    .unwrap();
    assert_eq!(p.cache_ttl_s, Some(86_400));
    assert_eq!(p.strategy, Some(crate::balancer::Strategy::LeastLatency));
    assert_eq!(p.provider.as_deref(), Some("beta"));
    assert_eq!(ArmParams::parse("{}").unwrap(), ArmParams::default());
    for bad in [
        r#"{"cache_ttl_s":0}"#,
        r#"{"cache_ttl_s":"1"}"#,
        r#"{"strategy":"fastest"}"#,
        r#"{"provider":"a b"}"#,
        "[]",
        "nope",
    ] {
        assert!(ArmParams::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_most_specific_target_applies() {
    let t = |n: &str, g: &str, p: &str| {
        (
            n.to_string(),
            Target {
                group: g.into(),
                path_prefix: p.into(),
            },
        )
    };
    let targets = vec![
        t("b-all", "search", "/"),
        t("a-title", "search", "/title"),
        t("c-other", "llm", "/"),
    ];
    assert_eq!(select(&targets, "search", "/title/42"), Some("a-title"));
    assert_eq!(select(&targets, "search", "/people"), Some("b-all"));
    assert_eq!(select(&targets, "llm", "/x"), Some("c-other"));
    assert_eq!(select(&targets, "other", "/x"), None);
    let tie = vec![t("z", "g", "/"), t("a", "g", "/")];
    assert_eq!(select(&tie, "g", "/"), Some("a"));
}

#[test]
fn moments_give_mean_and_unbiased_variance() {
    let mut m = Moments::default();
    for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
        m.add(x);
    }
    assert_eq!(m.mean(), Some(5.0));
    assert!((m.variance() - 32.0 / 7.0).abs() < 1e-12);
}

#[test]
fn validation_rejects_bad_definitions() {
    assert!(def(&[1]).validate().is_err());
    assert!(def(&[0, 0]).validate().is_err());
    assert!(def(&[1, 10_001]).validate().is_err());
    assert!(def(&[1, 1]).validate().is_ok());
    let mut d = def(&[1, 1]);
    d.variants[0].retired = true;
    assert!(d.validate().is_err(), "the control cannot be retired");
    let mut d = def(&[1, 1]);
    d.guardrails
        .push(MetricDef::well_known("cache_hit").unwrap());
    assert!(d.validate().is_err(), "duplicate metric");
    let mut d = def(&[1, 1]);
    d.coverage = 0;
    assert!(d.validate().is_err());
    let mut d = def(&[1, 1]);
    d.target = Some(Target {
        group: "search".into(),
        path_prefix: "title".into(),
    });
    assert!(d.validate().is_err(), "prefix must start with /");
}
