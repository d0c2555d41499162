//! Cohort assignment properties: deterministic, in range, never to a zero-weight arm.

#![allow(clippy::expect_used)]

use gateway_core::experiment::{assign, ExperimentDef, MetricDef, Variant};
use proptest::prelude::*;

proptest! {
    #[test]
    fn assignment_is_deterministic_and_respects_zero_weights(
        weights in prop::collection::vec(0u32..100, 2..6),
        unit in "[a-z0-9:-]{1,40}",
        seed in "[a-z]{1,10}",
    ) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let def = ExperimentDef {
            min_sample: 1000,
            seed,
            variants: weights.iter().enumerate().map(|(i, w)| Variant { name: format!("v{i}"), weight: *w, params: "{}".into(), retired: false }).collect(),
            coverage: 10_000,
            primary: MetricDef::well_known("cache_hit").expect("well-known metric"),
            guardrails: vec![],
            target: None,
        };
        let a = assign(&def, &unit);
        prop_assert_eq!(a, assign(&def, &unit));
        prop_assert!(a < weights.len());
        prop_assert!(weights[a] > 0, "assigned to a zero-weight arm");
    }
}
