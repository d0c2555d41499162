//! Simulated experiments analysed at every alarm (every 500 units per arm): the sequential rule
//! keeps wrong promotions under 5 % in A/A tests and finds a real 3-point lift on a 30 % metric.
//!
//! The rule under test is `gateway_core::experiment::analyse`, exactly as ExperimentDO's alarm
//! applies it: promote when the running minimum of the mSPRT always-valid p-value is below 0.05,
//! the effect is positive and each arm has the minimum sample; halt on sample-ratio mismatch.

use gateway_core::experiment::{
    analyse, ArmTally, ExperimentDef, Variant, Verdict, DEFAULT_MIN_SAMPLE,
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
    };
    ExperimentDef {
        seed: "sim".into(),
        variants: vec![arm("control"), arm("treatment")],
        min_sample: DEFAULT_MIN_SAMPLE,
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
        let tallies = [
            ArmTally {
                assigned: n,
                events: n,
                successes: s1,
            },
            ArmTally {
                assigned: n,
                events: n,
                successes: s2,
            },
        ];
        let a = analyse(&d, &tallies, previous.as_ref());
        match a.verdict {
            Verdict::Promote(ref arm) => return arm == "treatment",
            Verdict::Halt(_) => return false,
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
