//! One key's counters: token windows with reservations, spend per day and month, and the state
//! of its request policy. See the module docs of [`super`] for the rules.

use chrono::{Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{KeyDef, KeyRecord, MAX_IN_FLIGHT, RESERVATION_TTL_MS};
use crate::rate_limit::policy::{self, KeyState, Policy};
use crate::rate_limit::Decision;
use crate::UnixMillis;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// Tokens in one fixed UTC window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Start, ms.
    pub start: i64,
    /// Held by requests in flight.
    pub reserved: u64,
    /// Settled.
    pub used: u64,
}

impl Window {
    fn rolled(self, start: i64) -> Window {
        if self.start == start {
            self
        } else {
            Window {
                start,
                reserved: 0,
                used: 0,
            }
        }
    }

    fn taken(&self) -> u64 {
        self.reserved.saturating_add(self.used)
    }
}

/// Spend in one UTC period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spend {
    /// Period start, ms.
    pub start: i64,
    /// Spent, micro-USD.
    pub micro_usd: u64,
}

impl Spend {
    fn rolled(self, start: i64) -> Spend {
        if self.start == start {
            self
        } else {
            Spend {
                start,
                micro_usd: 0,
            }
        }
    }
}

/// A request admitted and not yet settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Id (per key, increasing).
    pub id: u64,
    /// Tokens reserved.
    pub tokens: u64,
    /// The minute window it reserved in.
    pub minute: i64,
    /// The day window it reserved in.
    pub day: i64,
    /// When.
    pub at: UnixMillis,
}

/// A key's counters, as stored (one row per key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens this minute.
    pub minute: Window,
    /// Tokens today.
    pub day: Window,
    /// Spend today.
    pub spend_day: Spend,
    /// Spend this month.
    pub spend_month: Spend,
    /// The request policy's TAT (token bucket) or window state.
    pub policy_state: Option<KeyState>,
    /// The next reservation id.
    pub next_id: u64,
    /// Reservations in flight.
    pub in_flight: Vec<Reservation>,
    /// Requests admitted, ever.
    pub requests: u64,
    /// Tokens settled, ever.
    pub tokens: u64,
    /// Spend, ever, micro-USD.
    pub spent_micro_usd: u64,
}

/// What a request asks of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    /// The model asked for.
    pub model: String,
    /// The first group its route goes to.
    pub group: String,
    /// Estimated tokens (prompt + completion).
    pub tokens: u64,
}

/// One limit's state for the `RateLimit` headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    /// `requests` or `tokens`.
    pub name: String,
    /// Quota.
    pub quota: u64,
    /// Window, s.
    pub window_s: u64,
    /// Left.
    pub remaining: u64,
    /// Seconds until it resets (or, refused, until it would admit).
    pub reset_s: u64,
}

impl Limit {
    /// `RateLimit-Policy` and `RateLimit` header values over several limits.
    pub fn headers(limits: &[Limit]) -> (String, String) {
        let policy: Vec<String> = limits
            .iter()
            .map(|l| format!("\"{}\";q={};w={}", l.name, l.quota, l.window_s))
            .collect();
        let state: Vec<String> = limits
            .iter()
            .map(|l| format!("\"{}\";r={};t={}", l.name, l.remaining, l.reset_s))
            .collect();
        (policy.join(", "), state.join(", "))
    }
}

/// An admitted request.
///
/// The budgets were appended after the first layout; an older object's answer (without them)
/// still decodes, with both `None` (see the `Deserialize` impl below: an admission is the last
/// thing in its reply, so absent trailing fields are an end of input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admitted {
    /// Settle with this.
    pub reservation: u64,
    /// The key's label.
    pub name: Option<String>,
    /// Header state of the key's limits.
    pub limits: Vec<Limit>,
    /// The groups the key may reach (empty: any), for the model's fallback targets.
    pub groups: Vec<String>,
    /// The key's daily budget, micro-USD (for spend records).
    pub budget_day_micro_usd: Option<u64>,
    /// The key's monthly budget, micro-USD (for spend records).
    pub budget_month_micro_usd: Option<u64>,
}

impl<'de> Deserialize<'de> for Admitted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Admitted;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an admission")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Admitted, A::Error> {
                use serde::de::Error;
                let missing = |i| A::Error::invalid_length(i, &"an admission");
                let reservation = seq.next_element()?.ok_or_else(|| missing(0))?;
                let name = seq.next_element()?.ok_or_else(|| missing(1))?;
                let limits = seq.next_element()?.ok_or_else(|| missing(2))?;
                let groups = seq.next_element()?.ok_or_else(|| missing(3))?;
                // Absent in the first layout: the end of input reads as no budget.
                let day: Option<Option<u64>> = seq.next_element().unwrap_or(None);
                let month: Option<Option<u64>> = seq.next_element().unwrap_or(None);
                Ok(Admitted {
                    reservation,
                    name,
                    limits,
                    groups,
                    budget_day_micro_usd: day.flatten(),
                    budget_month_micro_usd: month.flatten(),
                })
            }
        }
        const FIELDS: &[&str] = &[
            "reservation",
            "name",
            "limits",
            "groups",
            "budget_day_micro_usd",
            "budget_month_micro_usd",
        ];
        d.deserialize_struct("Admitted", FIELDS, V)
    }
}

/// A refused request: a problem for the client, never an error of the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// 401, 403 or 429.
    pub status: u16,
    /// Problem slug.
    pub kind: String,
    /// For a human.
    pub detail: String,
    /// When to retry, s (429).
    pub retry_after_s: Option<u64>,
    /// Header state of the key's limits.
    pub limits: Vec<Limit>,
}

/// A key's usage as shown to an admin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageView {
    /// Tokens this minute (reserved + used).
    pub tokens_minute: u64,
    /// Tokens today (reserved + used).
    pub tokens_day: u64,
    /// Spend today, micro-USD.
    pub spend_day_micro_usd: u64,
    /// Spend this month, micro-USD.
    pub spend_month_micro_usd: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests admitted, ever.
    pub requests: u64,
    /// Tokens settled, ever.
    pub tokens: u64,
    /// Spend, ever.
    pub spent_micro_usd: u64,
}

fn floor(t: i64, step: i64) -> i64 {
    t - t.rem_euclid(step)
}

/// Start of the UTC calendar month containing `now`, and of the next one, ms.
pub fn month_bounds(now: UnixMillis) -> (i64, i64) {
    let Some(t) = Utc.timestamp_millis_opt(now.0).single() else {
        return (floor(now.0, DAY_MS), floor(now.0, DAY_MS) + 31 * DAY_MS);
    };
    let (y, m) = (t.year(), t.month());
    let start = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single();
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next = Utc.with_ymd_and_hms(ny, nm, 1, 0, 0, 0).single();
    match (start, next) {
        (Some(s), Some(n)) => (s.timestamp_millis(), n.timestamp_millis()),
        _ => (floor(now.0, DAY_MS), floor(now.0, DAY_MS) + 31 * DAY_MS),
    }
}

fn secs_until(now: UnixMillis, at: i64) -> u64 {
    u64::try_from(at.saturating_sub(now.0).max(0))
        .unwrap_or(0)
        .div_ceil(1000)
        .max(1)
}

impl Usage {
    /// The counters rolled to `now` (new windows and periods start empty; reservations too old
    /// to settle are charged at their estimate).
    pub fn roll(&mut self, now: UnixMillis) {
        let (minute, day) = (floor(now.0, MINUTE_MS), floor(now.0, DAY_MS));
        let cutoff = now.plus_ms(-RESERVATION_TTL_MS);
        let (expired, live): (Vec<Reservation>, Vec<Reservation>) =
            self.in_flight.iter().partition(|r| r.at < cutoff);
        self.in_flight = live;
        for r in expired {
            self.charge(r, r.tokens);
        }
        self.minute = self.minute.rolled(minute);
        self.day = self.day.rolled(day);
        self.spend_day = self.spend_day.rolled(day);
        self.spend_month = self.spend_month.rolled(month_bounds(now).0);
    }

    /// Moves a settled reservation's tokens from reserved to used, in the windows it reserved
    /// in if they are still current, else (the part over the estimate) in the current ones.
    fn charge(&mut self, r: Reservation, actual: u64) {
        for (w, start) in [(&mut self.minute, r.minute), (&mut self.day, r.day)] {
            if w.start == start {
                w.reserved = w.reserved.saturating_sub(r.tokens);
                w.used = w.used.saturating_add(actual);
            } else {
                w.used = w.used.saturating_add(actual.saturating_sub(r.tokens));
            }
        }
        self.tokens = self.tokens.saturating_add(actual);
    }

    fn limits(
        &self,
        def: &KeyDef,
        now: UnixMillis,
        request: Option<(&Policy, &Decision)>,
    ) -> Vec<Limit> {
        let mut out = Vec::new();
        if let Some((p, d)) = request {
            let (quota, window_s) = p.quota_and_window_s();
            out.push(Limit {
                name: "requests".into(),
                quota,
                window_s,
                remaining: d.remaining,
                reset_s: if d.allowed {
                    d.reset_ms.div_ceil(1000)
                } else {
                    d.retry_after_ms.div_ceil(1000).max(1)
                },
            });
        }
        if let Some(q) = def.tokens_per_minute {
            out.push(Limit {
                name: "tokens".into(),
                quota: q,
                window_s: 60,
                remaining: q.saturating_sub(self.minute.taken()),
                reset_s: secs_until(now, self.minute.start + MINUTE_MS),
            });
        }
        if let Some(q) = def.tokens_per_day {
            out.push(Limit {
                name: "tokens-day".into(),
                quota: q,
                window_s: 86_400,
                remaining: q.saturating_sub(self.day.taken()),
                reset_s: secs_until(now, self.day.start + DAY_MS),
            });
        }
        out
    }

    /// Admits a request or refuses it. On a refusal nothing changed except the rolling of
    /// windows (which loses nothing).
    pub fn admit(
        &mut self,
        key: &KeyRecord,
        ask: &Admission,
        now: UnixMillis,
    ) -> Result<Admitted, Refusal> {
        self.roll(now);
        let def = &key.def;
        let refuse =
            |status: u16, kind: &str, detail: String, retry: Option<u64>, limits| Refusal {
                status,
                kind: kind.into(),
                detail,
                retry_after_s: retry,
                limits,
            };
        if key.revoked_at.is_some() {
            return Err(refuse(
                401,
                "key-revoked",
                format!("key {} was revoked", key.id),
                None,
                vec![],
            ));
        }
        if !def.allows(&ask.model, &ask.group) {
            return Err(refuse(
                403,
                "model-not-allowed",
                format!(
                    "key {} may not use model {} (group {})",
                    key.id, ask.model, ask.group
                ),
                None,
                vec![],
            ));
        }
        let (_, month_end) = month_bounds(now);
        for (budget, spent, end, period) in [
            (
                def.budget_day_micro_usd,
                self.spend_day.micro_usd,
                self.spend_day.start + DAY_MS,
                "daily",
            ),
            (
                def.budget_month_micro_usd,
                self.spend_month.micro_usd,
                month_end,
                "monthly",
            ),
        ] {
            if let Some(b) = budget.filter(|b| spent >= *b) {
                return Err(refuse(
                    429,
                    "budget-exceeded",
                    format!(
                        "key {} has spent its {period} budget ({spent} of {b} micro-USD)",
                        key.id
                    ),
                    Some(secs_until(now, end)),
                    self.limits(def, now, None),
                ));
            }
        }
        for (limit, window, len, what) in [
            (def.tokens_per_minute, self.minute, MINUTE_MS, "per minute"),
            (def.tokens_per_day, self.day, DAY_MS, "per day"),
        ] {
            let Some(q) = limit else { continue };
            if ask.tokens > q {
                return Err(refuse(
                    429,
                    "token-limit",
                    format!(
                        "the request's estimate of {} tokens exceeds the key's limit of {q} tokens {what}",
                        ask.tokens
                    ),
                    None,
                    self.limits(def, now, None),
                ));
            }
            if window.taken().saturating_add(ask.tokens) > q {
                return Err(refuse(
                    429,
                    "token-limit",
                    format!(
                        "the key's token limit ({q} {what}) has {} left; this request needs about {}",
                        q.saturating_sub(window.taken()),
                        ask.tokens
                    ),
                    Some(secs_until(now, window.start + len)),
                    self.limits(def, now, None),
                ));
            }
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return Err(refuse(
                429,
                "too-many-in-flight",
                format!("key {} has {MAX_IN_FLIGHT} requests in flight", key.id),
                Some(1),
                self.limits(def, now, None),
            ));
        }
        let mut request = None;
        if let Some(p) = &def.policy {
            let out = match policy::take(p, self.policy_state, 1, now) {
                Ok(o) => o,
                Err(e) => return Err(refuse(500, "internal", e.to_string(), None, vec![])),
            };
            if !out.decision.allowed {
                let limits = self.limits(def, now, Some((p, &out.decision)));
                return Err(refuse(
                    429,
                    "rate-limited",
                    format!("key {} is over its request rate", key.id),
                    Some(out.decision.retry_after_ms.div_ceil(1000).max(1)),
                    limits,
                ));
            }
            if let Some(s) = out.new_state {
                self.policy_state = Some(s);
            }
            request = Some((p, out.decision));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.push(Reservation {
            id,
            tokens: ask.tokens,
            minute: self.minute.start,
            day: self.day.start,
            at: now,
        });
        self.minute.reserved = self.minute.reserved.saturating_add(ask.tokens);
        self.day.reserved = self.day.reserved.saturating_add(ask.tokens);
        self.requests += 1;
        Ok(Admitted {
            reservation: id,
            name: def.name.clone(),
            limits: self.limits(def, now, request.as_ref().map(|(p, d)| (*p, d))),
            groups: def.groups.clone(),
            budget_day_micro_usd: def.budget_day_micro_usd,
            budget_month_micro_usd: def.budget_month_micro_usd,
        })
    }

    /// Settles reservation `id` with the real token count (`None`: unknown, the estimate stays
    /// charged) and adds `cost` to the spend. Returns false, changing nothing, when the
    /// reservation is not in flight (a retried settle, or one charged already by expiry).
    pub fn settle(
        &mut self,
        id: u64,
        tokens: Option<u64>,
        cost_micro_usd: u64,
        now: UnixMillis,
    ) -> bool {
        self.roll(now);
        let Some(i) = self.in_flight.iter().position(|r| r.id == id) else {
            return false;
        };
        let r = self.in_flight.remove(i);
        self.charge(r, tokens.unwrap_or(r.tokens));
        self.spend_day.micro_usd = self.spend_day.micro_usd.saturating_add(cost_micro_usd);
        self.spend_month.micro_usd = self.spend_month.micro_usd.saturating_add(cost_micro_usd);
        self.spent_micro_usd = self.spent_micro_usd.saturating_add(cost_micro_usd);
        true
    }

    /// The admin view at `now`.
    pub fn view(&self, now: UnixMillis) -> UsageView {
        let mut u = self.clone();
        u.roll(now);
        UsageView {
            tokens_minute: u.minute.taken(),
            tokens_day: u.day.taken(),
            spend_day_micro_usd: u.spend_day.micro_usd,
            spend_month_micro_usd: u.spend_month.micro_usd,
            in_flight: u.in_flight.len() as u64,
            requests: u.requests,
            tokens: u.tokens,
            spent_micro_usd: u.spent_micro_usd,
        }
    }
}
