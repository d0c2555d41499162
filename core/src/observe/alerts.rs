//! Alert rules evaluated by the root aggregator's alarm, Alertmanager-style but in one place.
//!
//! Per rule: **inactive → pending** when its condition holds (over the rule's window, with at
//! least `min_requests`); **pending → firing** once it has held for `for_ms` (a condition that
//! stops holding while pending goes back to inactive, silently); **firing → resolved** only after
//! the condition has been false for `keep_firing_ms` (flap damping: a condition that returns
//! meanwhile just keeps the alert firing, with no new notification). A firing alert notifies once
//! (**dedup**) and again only every `repeat_interval_ms` while it stays firing; its resolution
//! notifies once. So a condition flapping on every evaluation produces at most one firing and one
//! resolved notification per episode.
//!
//! Notifications go to an [`Outbox`]; the alarm delivers what is due within its time budget and
//! retries failures with exponential backoff, so a slow webhook never blocks the alarm.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Agg;
use crate::{GatewayError, UnixMillis};

use super::issue::Issue;
pub use super::issue::Severity;

/// What a rule measures over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Requests not served from cache, % ([`Agg::miss_rate`]).
    MissRate,
    /// Fresh cache hits, % ([`Agg::hit_rate`]).
    HitRate,
    /// Responses >= 500, % ([`Agg::error_rate`]).
    ErrorRate,
    /// 95th percentile latency, ms.
    P95Ms,
    /// 99th percentile latency, ms.
    P99Ms,
    /// Percent of a key's daily budget spent today, per key ([`super::budget`]).
    KeyBudgetUsedPct,
}

impl Metric {
    /// The value over an aggregate (`None` without requests).
    pub fn value(self, a: &Agg) -> Option<f64> {
        if a.requests == 0 {
            return None;
        }
        match self {
            Metric::MissRate => Some(a.miss_rate()),
            Metric::HitRate => Some(a.hit_rate()),
            Metric::ErrorRate => Some(a.error_rate()),
            Metric::P95Ms => a.latency.quantile(0.95),
            Metric::P99Ms => a.latency.quantile(0.99),
            Metric::KeyBudgetUsedPct => None,
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::MissRate => "miss_rate",
            Metric::HitRate => "hit_rate",
            Metric::ErrorRate => "error_rate",
            Metric::P95Ms => "p95_ms",
            Metric::P99Ms => "p99_ms",
            Metric::KeyBudgetUsedPct => "key_budget_used_pct",
        }
    }
}

/// Comparison of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Fires above the threshold.
    Above,
    /// Fires below the threshold.
    Below,
}

/// An alert rule. As JSON (`ALERT_RULES`), every duration has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name (`[A-Za-z0-9_.-]{1,64}`).
    pub name: String,
    /// Severity.
    pub severity: Severity,
    /// Measured metric.
    pub metric: Metric,
    /// Comparison.
    pub op: Op,
    /// Threshold (percent or ms).
    pub threshold: f64,
    /// How long the condition must hold before firing (default 2 minutes).
    #[serde(default = "default_for")]
    pub for_ms: i64,
    /// How long a firing alert stays firing after the condition clears (default 5 minutes).
    #[serde(default = "default_keep")]
    pub keep_firing_ms: i64,
    /// Evaluation window (default 5 minutes).
    #[serde(default = "default_window")]
    pub window_ms: i64,
    /// Requests the window needs before the rule is evaluated (default 20).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_for() -> i64 {
    120_000
}
fn default_keep() -> i64 {
    300_000
}
fn default_window() -> i64 {
    300_000
}
fn default_min_requests() -> u64 {
    20
}

impl Rule {
    fn new(name: &str, severity: Severity, metric: Metric, op: Op, threshold: f64) -> Rule {
        Rule {
            name: name.into(),
            severity,
            metric,
            op,
            threshold,
            for_ms: default_for(),
            keep_firing_ms: default_keep(),
            window_ms: default_window(),
            min_requests: default_min_requests(),
        }
    }

    /// Whether `value` breaches the threshold.
    pub fn breached(&self, value: f64) -> bool {
        match self.op {
            Op::Above => value > self.threshold,
            Op::Below => value < self.threshold,
        }
    }

    /// Validates a rule from configuration.
    pub fn validate(&self) -> Result<(), GatewayError> {
        crate::validate::name("alert rule", &self.name)?;
        let bad = |d: &str| {
            Err(GatewayError::bad_request(
                "invalid-alert-rule",
                d.to_string(),
            ))
        };
        if !self.threshold.is_finite() {
            return bad("threshold must be a finite number");
        }
        let day = 86_400_000;
        if !(0..=day).contains(&self.for_ms) || !(0..=day).contains(&self.keep_firing_ms) {
            return bad("for_ms and keep_firing_ms must be 0..=86400000");
        }
        if !(1_000..=day).contains(&self.window_ms) {
            return bad("window_ms must be 1000..=86400000");
        }
        Ok(())
    }
}

/// The default rules: critical when the miss rate is above 15 %, p99 above 500 ms or the error
/// rate above 5 %; warning when the miss rate is above 10 %, p95 above 100 ms or the cache hit
/// rate below 75 %.
pub fn default_rules() -> Vec<Rule> {
    use Metric::*;
    use Op::*;
    use Severity::*;
    vec![
        Rule::new("miss-rate-critical", Critical, MissRate, Above, 15.0),
        Rule::new("p99-latency-critical", Critical, P99Ms, Above, 500.0),
        Rule::new("error-rate-critical", Critical, ErrorRate, Above, 5.0),
        Rule::new("miss-rate-warning", Warning, MissRate, Above, 10.0),
        Rule::new("p95-latency-warning", Warning, P95Ms, Above, 100.0),
        Rule::new("hit-rate-warning", Warning, HitRate, Below, 75.0),
    ]
}

/// Parses `ALERT_RULES` (a JSON array of rules; empty or absent: the defaults).
pub fn parse_rules(json: Option<&str>) -> Result<Vec<Rule>, GatewayError> {
    let Some(text) = json.filter(|t| !t.trim().is_empty()) else {
        return Ok(default_rules());
    };
    let rules: Vec<Rule> = serde_json::from_str(text)
        .map_err(|e| GatewayError::bad_request("invalid-alert-rule", e.to_string()))?;
    for (i, r) in rules.iter().enumerate() {
        r.validate()?;
        if rules[..i].iter().any(|o| o.name == r.name) {
            return Err(GatewayError::bad_request(
                "invalid-alert-rule",
                format!("rule {} is defined twice", r.name),
            ));
        }
    }
    Ok(rules)
}

/// A rule's state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Condition false.
    Inactive,
    /// Condition true since `since`, not long enough.
    Pending {
        /// Since when.
        since: UnixMillis,
    },
    /// Firing since `since`; last notified at `notified`; condition false since `clear_since`.
    Firing {
        /// Since when.
        since: UnixMillis,
        /// Last notification.
        notified: UnixMillis,
        /// When the condition stopped holding (keep-firing timer).
        clear_since: Option<UnixMillis>,
    },
}

/// One rule's live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    /// Rule name.
    pub rule: String,
    /// Phase.
    pub phase: Phase,
    /// Last observed value.
    pub value: Option<f64>,
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started (or repeated while) firing.
    Firing,
    /// Ended.
    Resolved,
}

/// A notification (also a history entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Rule name.
    pub rule: String,
    /// Severity.
    pub severity: Severity,
    /// Metric.
    pub metric: Metric,
    /// Firing or resolved.
    pub status: Status,
    /// Value that triggered it.
    pub value: f64,
    /// Threshold.
    pub threshold: f64,
    /// When the alert started firing.
    pub starts_at: UnixMillis,
    /// When it resolved.
    pub ends_at: Option<UnixMillis>,
    /// When this notification was produced.
    pub at: UnixMillis,
    /// A repeat of a still-firing alert.
    pub repeat: bool,
}

impl Notification {
    /// The webhook payload (JSON), Alertmanager-like.
    pub fn payload(&self) -> serde_json::Value {
        serde_json::json!({
            "version": "1",
            "source": "edge-gateway",
            "status": match self.status { Status::Firing => "firing", Status::Resolved => "resolved" },
            "repeat": self.repeat,
            "alert": {
                "name": self.rule,
                "severity": self.severity.name(),
                "metric": self.metric.name(),
                "value": self.value,
                "threshold": self.threshold,
                "startsAt": self.starts_at.to_rfc3339(),
                "endsAt": self.ends_at.map(UnixMillis::to_rfc3339),
            },
            "sentAt": self.at.to_rfc3339(),
        })
    }
}

/// History kept.
pub const HISTORY: usize = 200;

/// The engine: per-rule states and the history of notifications.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Engine {
    /// States, one per rule seen.
    pub states: Vec<AlertState>,
    /// Notifications, oldest first (at most [`HISTORY`]).
    pub history: VecDeque<Notification>,
}

impl Engine {
    /// Evaluates every rule at `now`. `observe` gives a rule's value and the requests it is
    /// based on over the rule's window. Returns the notifications to send.
    pub fn evaluate(
        &mut self,
        now: UnixMillis,
        rules: &[Rule],
        repeat_interval_ms: i64,
        observe: impl Fn(&Rule) -> Option<(f64, u64)>,
    ) -> Vec<Notification> {
        self.states
            .retain(|s| rules.iter().any(|r| r.name == s.rule));
        let mut out = Vec::new();
        for rule in rules {
            let observed = observe(rule).filter(|(_, n)| *n >= rule.min_requests.max(1));
            let holds = observed.is_some_and(|(v, _)| rule.breached(v));
            let i = match self.states.iter().position(|s| s.rule == rule.name) {
                Some(i) => i,
                None => {
                    self.states.push(AlertState {
                        rule: rule.name.clone(),
                        phase: Phase::Inactive,
                        value: None,
                    });
                    self.states.len() - 1
                }
            };
            let st = &mut self.states[i];
            if let Some((v, _)) = observed {
                st.value = Some(v);
            }
            let value = st.value.unwrap_or(0.0);
            let note = |status, starts_at, ends_at, repeat| Notification {
                rule: rule.name.clone(),
                severity: rule.severity,
                metric: rule.metric,
                status,
                value,
                threshold: rule.threshold,
                starts_at,
                ends_at,
                at: now,
                repeat,
            };
            st.phase = match (st.phase, holds) {
                (Phase::Inactive, false) => Phase::Inactive,
                (Phase::Inactive, true) | (Phase::Pending { .. }, true) => {
                    let since = match st.phase {
                        Phase::Pending { since } => since,
                        _ => now,
                    };
                    if now.since(since) >= rule.for_ms {
                        out.push(note(Status::Firing, now, None, false));
                        Phase::Firing {
                            since: now,
                            notified: now,
                            clear_since: None,
                        }
                    } else {
                        Phase::Pending { since }
                    }
                }
                (Phase::Pending { .. }, false) => Phase::Inactive,
                (
                    Phase::Firing {
                        since, notified, ..
                    },
                    true,
                ) => {
                    if now.since(notified) >= repeat_interval_ms {
                        out.push(note(Status::Firing, since, None, true));
                        Phase::Firing {
                            since,
                            notified: now,
                            clear_since: None,
                        }
                    } else {
                        Phase::Firing {
                            since,
                            notified,
                            clear_since: None,
                        }
                    }
                }
                (
                    Phase::Firing {
                        since,
                        notified,
                        clear_since,
                    },
                    false,
                ) => {
                    let cleared = clear_since.unwrap_or(now);
                    if now.since(cleared) >= rule.keep_firing_ms {
                        out.push(note(Status::Resolved, since, Some(now), false));
                        Phase::Inactive
                    } else {
                        Phase::Firing {
                            since,
                            notified,
                            clear_since: Some(cleared),
                        }
                    }
                }
            };
        }
        for n in &out {
            if self.history.len() >= HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(n.clone());
        }
        out
    }

    /// The firing alerts as health issues, e.g. `alert errors: error_rate > 5 (now 7.50)`.
    pub fn issues(&self, rules: &[Rule]) -> Vec<Issue> {
        self.states
            .iter()
            .filter_map(|s| {
                let Phase::Firing { since, .. } = s.phase else {
                    return None;
                };
                let r = rules.iter().find(|r| r.name == s.rule)?;
                let op = match r.op {
                    Op::Above => ">",
                    Op::Below => "<",
                };
                Some(Issue {
                    severity: r.severity,
                    message: format!(
                        "alert {}: {} {op} {} (now {:.2})",
                        r.name,
                        r.metric.name(),
                        r.threshold,
                        s.value.unwrap_or(0.0)
                    ),
                    since,
                })
            })
            .collect()
    }
}

/// A notification waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    /// Sequence number.
    pub id: u64,
    /// The notification.
    pub notification: Notification,
    /// Deliveries tried.
    pub attempts: u32,
    /// Next try.
    pub next_at: UnixMillis,
}

/// Deliveries tried before a notification is dropped.
pub const MAX_ATTEMPTS: u32 = 8;

/// The webhook outbox (bounded: the oldest are dropped past 100 entries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    /// Waiting notifications, oldest first.
    pub queue: Vec<Queued>,
    /// Next id.
    pub next_id: u64,
    /// Delivered so far.
    pub delivered: u64,
    /// Dropped after [`MAX_ATTEMPTS`] (or overflow).
    pub dropped: u64,
}

impl Outbox {
    /// Queues notifications for immediate delivery.
    pub fn push(&mut self, now: UnixMillis, notes: Vec<Notification>) {
        for n in notes {
            self.queue.push(Queued {
                id: self.next_id,
                notification: n,
                attempts: 0,
                next_at: now,
            });
            self.next_id += 1;
        }
        while self.queue.len() > 100 {
            self.queue.remove(0);
            self.dropped += 1;
        }
    }

    /// Ids due at `now`, oldest first.
    pub fn due(&self, now: UnixMillis) -> Vec<u64> {
        self.queue
            .iter()
            .filter(|q| q.next_at <= now)
            .map(|q| q.id)
            .collect()
    }

    /// The queued notification `id`.
    pub fn get(&self, id: u64) -> Option<&Queued> {
        self.queue.iter().find(|q| q.id == id)
    }

    /// Delivered.
    pub fn ack(&mut self, id: u64) {
        let before = self.queue.len();
        self.queue.retain(|q| q.id != id);
        self.delivered += (before - self.queue.len()) as u64;
    }

    /// Failed: retry after 1 s × 2^attempts (at most 5 minutes), or drop after the last try.
    pub fn fail(&mut self, id: u64, now: UnixMillis) {
        if let Some(q) = self.queue.iter_mut().find(|q| q.id == id) {
            q.attempts += 1;
            q.next_at = now.plus_ms((1_000i64 << q.attempts.min(9)).min(300_000));
        }
        let before = self.queue.len();
        self.queue.retain(|q| q.attempts < MAX_ATTEMPTS);
        self.dropped += (before - self.queue.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            for_ms: 10_000,
            keep_firing_ms: 30_000,
            min_requests: 5,
            ..Rule::new(
                "errors",
                Severity::Critical,
                Metric::ErrorRate,
                Op::Above,
                5.0,
            )
        }
    }

    fn run(engine: &mut Engine, t: i64, value: f64) -> Vec<Notification> {
        engine.evaluate(UnixMillis(t), &[rule()], 4 * 3_600_000, |_| {
            Some((value, 100))
        })
    }

    #[test]
    fn fires_after_the_pending_duration_once_and_resolves_after_keep_firing() {
        let mut e = Engine::default();
        assert!(run(&mut e, 0, 10.0).is_empty(), "pending");
        assert!(run(&mut e, 5_000, 10.0).is_empty(), "still pending");
        let fired = run(&mut e, 10_000, 12.0);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].status, Status::Firing);
        let issues = e.issues(&[rule()]);
        assert_eq!(issues.len(), 1);
        assert_eq!(
            issues[0].message,
            "alert errors: error_rate > 5 (now 12.00)"
        );
        assert_eq!(issues[0].since, UnixMillis(10_000));
        for t in (11_000..60_000).step_by(1_000) {
            assert!(run(&mut e, t, 12.0).is_empty(), "dedup at {t}");
        }
        assert!(run(&mut e, 60_000, 1.0).is_empty(), "keep firing");
        assert!(run(&mut e, 80_000, 1.0).is_empty());
        let resolved = run(&mut e, 90_000, 1.0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, Status::Resolved);
        assert_eq!(resolved[0].ends_at, Some(UnixMillis(90_000)));
        assert_eq!(e.history.len(), 2);
    }

    #[test]
    fn a_flapping_condition_does_not_storm() {
        let mut e = Engine::default();
        let mut notes = Vec::new();
        // Toggling every evaluation (1 s) for an hour: never pending long enough.
        for t in 0..3_600 {
            notes.extend(run(&mut e, t * 1_000, if t % 2 == 0 { 50.0 } else { 0.0 }));
        }
        assert!(notes.is_empty(), "{notes:?}");
        // Bad for 20 s, then toggling: fires once, keep-firing absorbs the flaps, resolves once.
        let mut e = Engine::default();
        for t in 0..20 {
            notes.extend(run(&mut e, t * 1_000, 50.0));
        }
        for t in 20..3_600 {
            notes.extend(run(&mut e, t * 1_000, if t % 2 == 0 { 50.0 } else { 0.0 }));
        }
        for t in 3_600..3_700 {
            notes.extend(run(&mut e, t * 1_000, 0.0));
        }
        let firing = notes.iter().filter(|n| n.status == Status::Firing).count();
        let resolved = notes
            .iter()
            .filter(|n| n.status == Status::Resolved)
            .count();
        assert_eq!((firing, resolved), (1, 1), "{notes:?}");
    }

    #[test]
    fn repeats_while_firing_and_needs_enough_requests() {
        let mut e = Engine::default();
        let mut r = rule();
        r.for_ms = 0;
        let mut count = 0;
        for t in 0..=8 {
            count += e
                .evaluate(
                    UnixMillis(t * 3_600_000),
                    &[r.clone()],
                    4 * 3_600_000,
                    |_| Some((9.0, 50)),
                )
                .len();
        }
        assert_eq!(count, 3, "at 0 h, 4 h and 8 h");
        let mut quiet = Engine::default();
        let few = quiet.evaluate(UnixMillis(0), &[r], 1, |_| Some((90.0, 4)));
        assert!(few.is_empty(), "below min_requests nothing fires");
    }

    #[test]
    fn defaults_and_parsing() {
        let d = default_rules();
        assert_eq!(d.len(), 6);
        let crit: Vec<(&str, f64)> = d
            .iter()
            .filter(|r| r.severity == Severity::Critical)
            .map(|r| (r.metric.name(), r.threshold))
            .collect();
        assert_eq!(
            crit,
            [("miss_rate", 15.0), ("p99_ms", 500.0), ("error_rate", 5.0)]
        );
        assert!(d
            .iter()
            .any(|r| r.metric == Metric::HitRate && r.op == Op::Below && r.threshold == 75.0));
        assert_eq!(parse_rules(None).unwrap(), d);
        let one = parse_rules(Some(
            r#"[{"name":"e","severity":"critical","metric":"error_rate","op":"above","threshold":5,"for_ms":2000}]"#,
        ))
        .unwrap();
        assert_eq!((one[0].for_ms, one[0].window_ms), (2_000, 300_000));
        assert!(parse_rules(Some(r#"[{"name":"e"}]"#)).is_err());
        assert!(parse_rules(Some(
            r#"[{"name":"e","severity":"critical","metric":"error_rate","op":"above","threshold":5,"window_ms":1}]"#
        ))
        .is_err());
    }

    #[test]
    fn outbox_retries_with_backoff_and_drops_after_the_last_try() {
        let mut e = Engine::default();
        let mut r = rule();
        r.for_ms = 0;
        let notes = e.evaluate(UnixMillis(0), &[r], 1, |_| Some((9.0, 50)));
        let mut o = Outbox::default();
        o.push(UnixMillis(0), notes);
        let id = o.due(UnixMillis(0))[0];
        o.fail(id, UnixMillis(0));
        assert!(o.due(UnixMillis(1_000)).is_empty());
        assert_eq!(o.due(UnixMillis(2_000)), vec![id], "retried after 2 s");
        for _ in 1..MAX_ATTEMPTS {
            o.fail(id, UnixMillis(0));
        }
        assert!(o.queue.is_empty());
        assert_eq!(o.dropped, 1);
        let payload = e.history[0].payload();
        assert_eq!(payload["status"], "firing");
        assert_eq!(payload["alert"]["name"], "errors");
        assert_eq!(payload["alert"]["severity"], "critical");
    }
}
