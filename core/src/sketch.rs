//! `LatencySketch`: a mergeable log-bucket histogram (DDSketch's layout) with 1 % relative error.
//!
//! A value `v >= 1` ms goes to bucket `ceil(log_γ v)` with `γ = (1 + α) / (1 − α)`, `α = 0.01`;
//! the bucket's representative `2γ^i / (γ + 1)` is within 1 % of every value in it, so every
//! quantile is within 1 % of an actual recorded value's rank neighbour. Values below 1 ms count
//! in a zero bucket. Merging is adding counts, so per-provider sketches merge exactly. Latencies
//! up to 10 minutes need at most ~700 buckets; the sketch stores only non-empty ones.

use serde::{Deserialize, Serialize};

/// Relative accuracy.
pub const ALPHA: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + ALPHA) / (1.0 - ALPHA)
}

/// A mergeable latency sketch (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySketch {
    /// (bucket index, count), sorted by index.
    pub buckets: Vec<(i32, u64)>,
    /// Values below 1 ms.
    pub zeros: u64,
    /// All values.
    pub count: u64,
}

impl LatencySketch {
    /// Records one latency.
    pub fn record(&mut self, ms: u32) {
        self.count += 1;
        if ms < 1 {
            self.zeros += 1;
            return;
        }
        let idx = (f64::from(ms).ln() / gamma().ln()).ceil() as i32;
        match self.buckets.binary_search_by_key(&idx, |&(i, _)| i) {
            Ok(p) => self.buckets[p].1 += 1,
            Err(p) => self.buckets.insert(p, (idx, 1)),
        }
    }

    /// Adds another sketch (exact).
    pub fn merge(&mut self, other: &LatencySketch) {
        self.count += other.count;
        self.zeros += other.zeros;
        for &(i, c) in &other.buckets {
            match self.buckets.binary_search_by_key(&i, |&(j, _)| j) {
                Ok(p) => self.buckets[p].1 += c,
                Err(p) => self.buckets.insert(p, (i, c)),
            }
        }
    }

    /// The `q`-quantile (0..=1) in ms, within 1 % relative error; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        let g = gamma();
        for &(i, c) in &self.buckets {
            seen += c;
            if seen > rank {
                return Some(2.0 * g.powi(i) / (g + 1.0));
            }
        }
        self.buckets
            .last()
            .map(|&(i, _)| 2.0 * g.powi(i) / (g + 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent_of_the_exact_ones() {
        let mut s = LatencySketch::default();
        let mut values: Vec<u32> = (0..10_000u32).map(|i| 1 + (i * 7919) % 5000).collect();
        for &v in &values {
            s.record(v);
        }
        values.sort_unstable();
        for q in [0.5, 0.95, 0.99] {
            let exact = f64::from(values[(q * (values.len() - 1) as f64).floor() as usize]);
            let est = s.quantile(q).unwrap();
            assert!(
                (est - exact).abs() <= exact * ALPHA + 1e-9,
                "q{q}: {est} vs {exact}"
            );
        }
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            LatencySketch::default(),
            LatencySketch::default(),
            LatencySketch::default(),
        );
        for v in 0..500u32 {
            if v % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(LatencySketch::default().quantile(0.5), None);
    }
}
