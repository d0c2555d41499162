//! Simulated experiments analysed at every alarm (every 500 units per arm): the sequential rule
//! keeps wrong promotions under 5 % in A/A tests and finds a real 3-point lift on a 30 % metric.
//!
//! The rule under test is `gateway_core::experiment::analyse`, exactly as ExperimentDO's alarm
//! applies it: promote when the running minimum of the mSPRT always-valid p-value is below 0.05,
//! the effect is positive and each arm has the minimum sample; halt on sample-ratio mismatch.

#![allow(clippy::expect_used)]

use gateway_core::experiment::{
    analyse, ArmData, ExperimentDef, MetricDef, Moments, Variant, Verdict, DEFAULT_MIN_SAMPLE,
};

const LOOK_EVERY: u64 = 500;
const MAX_PER_ARM: u64 = 8_000; // the documented sample size per arm

struct XorShift(u64);

impl XorShift {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn def() -> ExperimentDef {
    let arm = |name: &str| Variant {
        name: name.into(),
        weight: 1,
        params: "{}".into(),
        retired: false,
    };
    ExperimentDef {
        seed: "sim".into(),
        variants: vec![arm("control"), arm("treatment")],
        min_sample: DEFAULT_MIN_SAMPLE,
        coverage: 10_000,
        primary: MetricDef::well_known("cache_hit").expect("well-known metric"),
        guardrails: vec![],
        target: None,
    }
}

/// Runs one experiment, analysed after every `LOOK_EVERY` units per arm; returns whether the
/// treatment was promoted.
fn run(rng: &mut XorShift, p_control: f64, p_treatment: f64) -> bool {
    let d = def();
    let (mut s1, mut s2, mut n) = (0u64, 0u64, 0u64);
    let mut previous = None;
    while n < MAX_PER_ARM {
        for _ in 0..LOOK_EVERY {
            s1 += u64::from(rng.uniform() < p_control);
            s2 += u64::from(rng.uniform() < p_treatment);
        }
        n += LOOK_EVERY;
        let binary = |s: u64| ArmData {
            assigned: n,
            metrics: vec![Moments {
                n,
                sum: s as f64,
                sum_sq: s as f64,
            }],
        };
        let tallies = [binary(s1), binary(s2)];
        let a = analyse(&d, &tallies, previous.as_ref());
        match a.verdict {
            Verdict::Promote(ref arm) => return arm == "treatment",
            Verdict::Halt(_) | Verdict::Rollback(..) => return false,
            Verdict::Continue(_) => previous = Some(a),
        }
    }
    false
}

#[test]
fn a_a_tests_analysed_at_every_alarm_rarely_promote() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let runs = 1_000;
    let wrong = (0..runs).filter(|_| run(&mut rng, 0.30, 0.30)).count();
    let rate = wrong as f64 / runs as f64;
    println!("A/A: {wrong} wrong promotions in {runs} simulated experiments ({rate:.3})");
    assert!(rate <= 0.05, "false-positive rate {rate}");
}

#[test]
fn a_three_point_lift_on_thirty_percent_is_promoted_at_the_documented_sample_size() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let runs = 500;
    let found = (0..runs).filter(|_| run(&mut rng, 0.30, 0.33)).count();
    let power = found as f64 / runs as f64;
    println!(
        "30% -> 33%: promoted in {found} of {runs} ({power:.3}) with at most {MAX_PER_ARM} per arm"
    );
    assert!(power >= 0.80, "power {power}");
}

/// A continuous metric (latency-like: normal with mean 100 ms, sd 30 ms), analysed with Welch
/// and the normal-mixture mSPRT at every look.
fn run_continuous(rng: &mut XorShift, mean_treatment: f64) -> bool {
    let mut d = def();
    d.primary = MetricDef::well_known("latency_ms").expect("well-known metric");
    let normal = |rng: &mut XorShift| {
        // Box-Muller.
        let (u1, u2) = (rng.uniform().max(1e-300), rng.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let (mut c, mut t) = (Moments::default(), Moments::default());
    let mut previous = None;
    while c.n < MAX_PER_ARM {
        for _ in 0..LOOK_EVERY {
            c.add(100.0 + 30.0 * normal(rng));
            t.add(mean_treatment + 30.0 * normal(rng));
        }
        let data = [
            ArmData {
                assigned: c.n,
                metrics: vec![c],
            },
            ArmData {
                assigned: t.n,
                metrics: vec![t],
            },
        ];
        let a = analyse(&d, &data, previous.as_ref());
        match a.verdict {
            Verdict::Promote(ref arm) => return arm == "treatment",
            Verdict::Continue(_) => previous = Some(a),
            _ => return false,
        }
    }
    false
}

#[test]
fn continuous_metric_a_a_rarely_promotes_and_a_tenth_sd_improvement_is_found() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let runs = 400;
    let wrong = (0..runs)
        .filter(|_| run_continuous(&mut rng, 100.0))
        .count();
    let fp = wrong as f64 / runs as f64;
    let found = (0..runs).filter(|_| run_continuous(&mut rng, 97.0)).count();
    let power = found as f64 / runs as f64;
    println!(
        "continuous A/A: {wrong}/{runs} wrong ({fp:.3}); 100 -> 97 ms: {found}/{runs} ({power:.3})"
    );
    assert!(fp <= 0.05, "false-positive rate {fp}");
    assert!(power >= 0.80, "power {power}");
}
