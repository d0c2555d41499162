//! Spend per virtual key and per model: what each settled AI request cost and used.
//!
//! - [`SpendRecord`]: one settled AI request (key id, the model the client asked for, tokens,
//!   cost, the key's budgets at admission), emitted by the front worker beside its [`super::Record`]
//!   and batched with it.
//! - [`Spend`]: the mergeable aggregate of a time bucket: per key and per model a [`Usage`]
//!   (requests, input and output tokens, cost), each with an `other` bucket; per key also the
//!   latest budgets seen.
//! - [`ShardSpend`] (a shard's spend windows, sealed with the same boundary as its metric
//!   windows) and [`SpendSeries`] (the root's fine and hour spend buckets, merged in the same
//!   step as the metric buckets and the shard's cursor, so exactly once).
//!
//! **Bound.** A bucket keeps at most [`MAX_SPEND_KEYS`] keys and [`MAX_SPEND_MODELS`] models.
//! While the distinct names stay within the caps every counter is exact (merging adds). Beyond a
//! cap, the entries with the smallest cost (then fewest requests, then the greatest name) fold
//! into `other`, deterministically; the totals (entries plus `other`) stay exact, and a folded
//! name's later traffic may be split between a new entry and `other` (its entry under-counts by
//! at most what was folded). With 100 keys per bucket that only happens when more than 100 keys
//! spend within one fine bucket (or one period, once buckets merge).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::series::{floor, period_start, Bucket, Period, HOUR_MS};
use crate::{GatewayError, UnixMillis};

/// Keys kept per bucket (more fold into `other`).
pub const MAX_SPEND_KEYS: usize = 100;
/// Models kept per bucket (more fold into `other`).
pub const MAX_SPEND_MODELS: usize = 64;
/// Longest key id or model name, bytes.
pub const MAX_SPEND_NAME: usize = 128;

/// One settled AI request. Crosses a postcard hop: no `skip_serializing_if`, no `flatten`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    /// When the request arrived.
    pub at: UnixMillis,
    /// The virtual key's id.
    pub key: String,
    /// The model the client asked for.
    pub model: String,
    /// Prompt tokens the answer reported.
    pub input_tokens: u64,
    /// Completion tokens the answer reported.
    pub output_tokens: u64,
    /// Provider cost of the request (every attempt), micro-USD.
    pub cost_micro_usd: u64,
    /// The key's daily budget at admission.
    pub budget_day_micro_usd: Option<u64>,
    /// The key's monthly budget at admission.
    pub budget_month_micro_usd: Option<u64>,
}

impl SpendRecord {
    /// Validates a record received over the wire: key and model are 1 to [`MAX_SPEND_NAME`]
    /// bytes without control characters.
    pub fn validate(&self) -> Result<(), GatewayError> {
        for (what, v) in [("key", &self.key), ("model", &self.model)] {
            if v.is_empty() || v.len() > MAX_SPEND_NAME || v.chars().any(char::is_control) {
                return Err(GatewayError::bad_request(
                    "invalid-event",
                    format!(
                        "spend {what} must be 1 to {MAX_SPEND_NAME} bytes without control characters"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn usage(&self) -> Usage {
        Usage {
            requests: 1,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_micro_usd: self.cost_micro_usd,
        }
    }
}

/// Requests, tokens and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Requests settled.
    pub requests: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost, micro-USD.
    pub cost_micro_usd: u64,
}

impl Usage {
    /// Adds another usage (saturating).
    pub fn add(&mut self, o: &Usage) {
        self.requests = self.requests.saturating_add(o.requests);
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(o.cost_micro_usd);
    }
}

/// The budgets a key's records carried, the latest by record time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Budget {
    /// Time of the record that carried them.
    pub at: UnixMillis,
    /// Daily budget, micro-USD.
    pub day_micro_usd: Option<u64>,
    /// Monthly budget, micro-USD.
    pub month_micro_usd: Option<u64>,
}

/// One key's spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpend {
    /// Its usage.
    pub usage: Usage,
    /// Its latest budgets.
    pub budget: Budget,
}

impl KeySpend {
    fn merge(&mut self, o: &KeySpend) {
        self.usage.add(&o.usage);
        // The latest wins; equal times pick the greater, so merging is order-independent.
        self.budget = self.budget.max(o.budget);
    }
}

/// The spend of a bucket (see the module docs for the bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// Per key id.
    pub keys: BTreeMap<String, KeySpend>,
    /// Keys folded out.
    pub other_keys: Usage,
    /// Per requested model.
    pub models: BTreeMap<String, Usage>,
    /// Models folded out.
    pub other_models: Usage,
}

/// Folds the smallest entries of `map` into `other` until it holds at most `cap`.
fn fold<V>(
    map: &mut BTreeMap<String, V>,
    other: &mut Usage,
    cap: usize,
    usage: impl Fn(&V) -> Usage,
) {
    if map.len() <= cap {
        return;
    }
    let mut order: Vec<(u64, u64, String)> = map
        .iter()
        .map(|(k, v)| {
            let u = usage(v);
            (u.cost_micro_usd, u.requests, k.clone())
        })
        .collect();
    // Smallest cost first, then fewest requests, then the greatest name.
    order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    let excess = map.len() - cap;
    for (_, _, k) in order.into_iter().take(excess) {
        if let Some(v) = map.remove(&k) {
            other.add(&usage(&v));
        }
    }
}

impl Spend {
    /// Counts one record.
    pub fn record(&mut self, r: &SpendRecord) {
        let u = r.usage();
        let k = KeySpend {
            usage: u,
            budget: Budget {
                at: r.at,
                day_micro_usd: r.budget_day_micro_usd,
                month_micro_usd: r.budget_month_micro_usd,
            },
        };
        self.keys.entry(r.key.clone()).or_default().merge(&k);
        self.models.entry(r.model.clone()).or_default().add(&u);
        self.cap();
    }

    /// Adds another bucket's spend.
    pub fn merge(&mut self, o: &Spend) {
        for (k, v) in &o.keys {
            self.keys.entry(k.clone()).or_default().merge(v);
        }
        for (m, u) in &o.models {
            self.models.entry(m.clone()).or_default().add(u);
        }
        self.other_keys.add(&o.other_keys);
        self.other_models.add(&o.other_models);
        self.cap();
    }

    fn cap(&mut self) {
        fold(&mut self.keys, &mut self.other_keys, MAX_SPEND_KEYS, |v| {
            v.usage
        });
        fold(
            &mut self.models,
            &mut self.other_models,
            MAX_SPEND_MODELS,
            |u| *u,
        );
    }

    /// Whether nothing was spent or settled.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.models.is_empty() && self.other_keys == Usage::default()
    }

    /// Everything over the keys (entries plus `other`): exact whatever was folded.
    pub fn total(&self) -> Usage {
        let mut t = self.other_keys;
        for k in self.keys.values() {
            t.add(&k.usage);
        }
        t
    }

    /// The `n` keys with the highest cost (then most requests, then by name).
    pub fn top_keys(&self, n: usize) -> Vec<(&str, &KeySpend)> {
        let mut v: Vec<(&str, &KeySpend)> =
            self.keys.iter().map(|(k, s)| (k.as_str(), s)).collect();
        v.sort_by(|a, b| {
            (b.1.usage.cost_micro_usd, b.1.usage.requests)
                .cmp(&(a.1.usage.cost_micro_usd, a.1.usage.requests))
                .then(a.0.cmp(b.0))
        });
        v.truncate(n);
        v
    }

    /// The `n` models with the highest cost (then most requests, then by name).
    pub fn top_models(&self, n: usize) -> Vec<(&str, &Usage)> {
        let mut v: Vec<(&str, &Usage)> = self.models.iter().map(|(k, u)| (k.as_str(), u)).collect();
        v.sort_by(|a, b| {
            (b.1.cost_micro_usd, b.1.requests)
                .cmp(&(a.1.cost_micro_usd, a.1.requests))
                .then(a.0.cmp(b.0))
        });
        v.truncate(n);
        v
    }

    /// Percent of key `k`'s daily budget this spend used (`None` without a positive budget).
    pub fn budget_used_day_pct(&self, key: &str) -> Option<f64> {
        let k = self.keys.get(key)?;
        let b = k.budget.day_micro_usd.filter(|b| *b > 0)?;
        Some(k.usage.cost_micro_usd as f64 * 100.0 / b as f64)
    }
}

/// A shard's spend windows, one [`Spend`] per fine bucket, sealed with the shard's metric
/// windows (the same `sealed_before`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardSpend {
    /// Windows by bucket start.
    pub windows: BTreeMap<UnixMillis, Spend>,
}

impl ShardSpend {
    /// Records a batch into fine buckets of `fine_ms`; a record for sealed time counts in the
    /// first open bucket (`sealed_before`). Returns the buckets that changed.
    pub fn ingest(
        &mut self,
        records: &[SpendRecord],
        fine_ms: i64,
        sealed_before: UnixMillis,
    ) -> Vec<UnixMillis> {
        let mut touched = Vec::new();
        for r in records {
            let b = floor(r.at, fine_ms).max(sealed_before);
            self.windows.entry(b).or_default().record(r);
            if !touched.contains(&b) {
                touched.push(b);
            }
        }
        touched
    }

    /// Sealed windows in `[since, sealed_before)`.
    pub fn sealed(&self, since: UnixMillis, sealed_before: UnixMillis) -> Vec<(UnixMillis, Spend)> {
        self.windows
            .range(since..sealed_before.max(since))
            .map(|(t, s)| (*t, s.clone()))
            .collect()
    }

    /// Every window at or after `since`.
    pub fn live_since(&self, since: UnixMillis) -> Vec<(UnixMillis, Spend)> {
        self.windows
            .range(since..)
            .map(|(t, s)| (*t, s.clone()))
            .collect()
    }

    /// Drops windows starting before `cut` (the metric windows' cut-off).
    pub fn prune(&mut self, cut: UnixMillis) {
        self.windows = self.windows.split_off(&cut);
    }
}

/// The root's spend buckets: fine (kept 24 h) and hour (kept 7 days), like the metric series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpendSeries {
    /// Fine buckets by start.
    pub fine: BTreeMap<UnixMillis, Spend>,
    /// Hour buckets by start.
    pub hours: BTreeMap<UnixMillis, Spend>,
}

impl SpendSeries {
    /// Merges the sealed windows in `[from, to)` (a shard's cursor before this merge and its new
    /// seal); returns the buckets that changed. The caller merges only when the cursor moved, in
    /// the same step that moves it, so every window is merged once.
    pub fn apply(
        &mut self,
        windows: &[(UnixMillis, Spend)],
        from: UnixMillis,
        to: UnixMillis,
        fine_ms: i64,
    ) -> Vec<Bucket> {
        let mut touched = Vec::new();
        for (t, s) in windows.iter().filter(|(t, _)| *t >= from && *t < to) {
            let (f, h) = (floor(*t, fine_ms), floor(*t, HOUR_MS));
            self.fine.entry(f).or_default().merge(s);
            self.hours.entry(h).or_default().merge(s);
            for b in [Bucket::Fine(f), Bucket::Hour(h)] {
                if !touched.contains(&b) {
                    touched.push(b);
                }
            }
        }
        touched
    }

    /// Drops buckets before the metric series' cut-offs.
    pub fn prune(&mut self, fine_before: UnixMillis, hour_before: UnixMillis) {
        self.fine = self.fine.split_off(&fine_before);
        self.hours = self.hours.split_off(&hour_before);
    }

    /// The merged buckets of a period (fine buckets for 1 h and 24 h, hours for 7 d).
    pub fn total(&self, period: Period, now: UnixMillis, fine_ms: i64) -> Spend {
        let map = if period == Period::Week {
            &self.hours
        } else {
            &self.fine
        };
        Self::sum(map, period_start(period, now, fine_ms))
    }

    /// The merged fine buckets at or after `since` (today's spend: fine buckets cover 24 h).
    pub fn since(&self, since: UnixMillis) -> Spend {
        Self::sum(&self.fine, since)
    }

    /// The merged hour buckets in `[from, to)` (a day's report).
    pub fn hours_between(&self, from: UnixMillis, to: UnixMillis) -> Spend {
        let mut out = Spend::default();
        for s in self.hours.range(from..to.max(from)).map(|(_, s)| s) {
            out.merge(s);
        }
        out
    }

    fn sum(map: &BTreeMap<UnixMillis, Spend>, since: UnixMillis) -> Spend {
        let mut out = Spend::default();
        for s in map.range(since..).map(|(_, s)| s) {
            out.merge(s);
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record of `cost` for `key` and `model` at `at`.
    pub(crate) fn srec(at: i64, key: &str, model: &str, cost: u64) -> SpendRecord {
        SpendRecord {
            at: UnixMillis(at),
            key: key.into(),
            model: model.into(),
            input_tokens: 10,
            output_tokens: 16,
            cost_micro_usd: cost,
            budget_day_micro_usd: Some(1_000),
            budget_month_micro_usd: None,
        }
    }

    #[test]
    fn merging_is_exact_within_the_caps_and_order_independent() {
        let (mut a, mut b) = (Spend::default(), Spend::default());
        for i in 0..50u64 {
            a.record(&srec(0, &format!("key_{i}"), "m1", 100 + i));
            b.record(&srec(0, &format!("key_{}", i + 25), "m2", 7));
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.keys.len(), 75, "within the cap nothing folds");
        assert_eq!(ab.other_keys, Usage::default());
        let k30 = ab.keys["key_30"].usage;
        assert_eq!((k30.requests, k30.cost_micro_usd), (2, 130 + 7));
        assert_eq!((k30.input_tokens, k30.output_tokens), (20, 32));
        assert_eq!(ab.models["m1"].cost_micro_usd, (100..150).sum::<u64>());
        assert_eq!(ab.models["m2"].requests, 50);
    }

    #[test]
    fn over_the_cap_the_cheapest_fold_into_other_and_totals_stay_exact() {
        let mut s = Spend::default();
        let mut total = 0;
        for i in 0..(MAX_SPEND_KEYS as u64 + 20) {
            s.record(&srec(
                0,
                &format!("key_{i:03}"),
                &format!("m{i}"),
                1_000 + i,
            ));
            total += 1_000 + i;
        }
        assert_eq!(s.keys.len(), MAX_SPEND_KEYS);
        assert_eq!(s.models.len(), MAX_SPEND_MODELS);
        assert_eq!(s.other_keys.requests, 20);
        assert!(!s.keys.contains_key("key_000"), "the cheapest folded first");
        assert!(s.keys.contains_key("key_119"));
        assert_eq!(s.total().cost_micro_usd, total);
        assert_eq!(s.top_keys(1)[0].0, "key_119");
        let model_total: u64 = s.models.values().map(|u| u.cost_micro_usd).sum::<u64>()
            + s.other_models.cost_micro_usd;
        assert_eq!(model_total, total);
    }

    #[test]
    fn the_latest_budget_wins_and_validation_refuses_bad_names() {
        let mut s = Spend::default();
        let mut late = srec(5_000, "key_a", "m", 10);
        late.budget_day_micro_usd = Some(50);
        s.record(&late);
        s.record(&srec(1_000, "key_a", "m", 10));
        assert_eq!(s.keys["key_a"].budget.day_micro_usd, Some(50));
        assert_eq!(s.budget_used_day_pct("key_a"), Some(40.0));
        assert!(srec(0, "", "m", 1).validate().is_err());
        assert!(srec(0, "k", &"m".repeat(129), 1).validate().is_err());
        assert!(srec(0, "k\n", "m", 1).validate().is_err());
        assert!(srec(0, "k", &"m".repeat(128), 1).validate().is_ok());
    }

    #[test]
    fn shard_windows_seal_like_metric_windows_and_the_root_merges_once() {
        let mut sh = ShardSpend::default();
        sh.ingest(
            &[srec(100, "k", "m", 1), srec(1_500, "k", "m", 2)],
            1_000,
            UnixMillis(0),
        );
        let touched = sh.ingest(&[srec(200, "k", "m", 4)], 1_000, UnixMillis(1_000));
        assert_eq!(
            touched,
            vec![UnixMillis(1_000)],
            "late spend counts in the open bucket"
        );
        let mut root = SpendSeries::default();
        let sealed = sh.sealed(UnixMillis(0), UnixMillis(1_000));
        root.apply(&sealed, UnixMillis(0), UnixMillis(1_000), 1_000);
        let sealed = sh.sealed(UnixMillis(1_000), UnixMillis(2_000));
        root.apply(&sealed, UnixMillis(1_000), UnixMillis(2_000), 1_000);
        let t = root.since(UnixMillis(0));
        assert_eq!(t.keys["k"].usage.cost_micro_usd, 7);
        assert_eq!(
            root.total(Period::Week, UnixMillis(3_000), 1_000)
                .total()
                .requests,
            3
        );
        root.prune(UnixMillis(1_000), UnixMillis(0));
        assert_eq!(root.since(UnixMillis(0)).total().cost_micro_usd, 6);
    }
}
