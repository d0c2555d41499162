//! Cohort assignment: the pinned hash, coverage, the arm for a new unit, and which experiment
//! applies to a proxied request (see the module documentation of [`super`] for the hash).

use super::{ExperimentDef, Target, Variant};
use crate::shard::fnv1a64;

/// The experiment that applies to a proxied request: among `targets`, the one with the longest
/// matching path prefix (ties: the first by name). At most one experiment applies per request,
/// so overlapping experiments cannot confound each other.
pub fn select<'a>(targets: &'a [(String, Target)], group: &str, path: &str) -> Option<&'a str> {
    targets
        .iter()
        .filter(|(_, t)| t.matches(group, path))
        .max_by(|a, b| {
            a.1.path_prefix
                .len()
                .cmp(&b.1.path_prefix.len())
                .then_with(|| b.0.cmp(&a.0))
        })
        .map(|(n, _)| n.as_str())
}

fn hash_bucket(parts: &[&[u8]]) -> u32 {
    let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            bytes.push(0x1f);
        }
        bytes.extend_from_slice(p);
    }
    (fnv1a64(&bytes) % 10_000) as u32
}

/// The bucket in `0..10_000` a unit falls into for `seed`.
pub fn bucket(seed: &str, unit: &str) -> u32 {
    hash_bucket(&[seed.as_bytes(), unit.as_bytes()])
}

/// Whether a unit is inside the experiment's coverage.
pub fn covered(def: &ExperimentDef, unit: &str) -> bool {
    def.coverage >= 10_000
        || hash_bucket(&[format!("{}#coverage", def.seed).as_bytes(), unit.as_bytes()])
            < def.coverage
}

/// The arm index for a unit that has no stored assignment yet (retired arms get nobody).
pub fn assign(def: &ExperimentDef, unit: &str) -> usize {
    let b = u64::from(bucket(&def.seed, unit));
    let weight = |v: &Variant| if v.retired { 0 } else { u64::from(v.weight) };
    let total: u64 = def.variants.iter().map(weight).sum::<u64>().max(1);
    let mut cumulative = 0u64;
    let last_weighted = def
        .variants
        .iter()
        .rposition(|v| weight(v) > 0)
        .unwrap_or(0);
    for (i, v) in def.variants.iter().enumerate() {
        cumulative += weight(v);
        if weight(v) > 0 && b < cumulative * 10_000 / total {
            return i;
        }
    }
    last_weighted
}
