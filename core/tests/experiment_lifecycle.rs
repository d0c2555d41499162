//! Scenario tests of the experiment lifecycle on simulated time, through the public API the
//! Durable Object adapter uses: `Machine::load` from stored rows, `Machine::handle` per request,
//! `Machine::on_alarm` when the alarm fires, and every returned `Change` applied to an
//! in-memory model of the tables (`Store`, which mirrors `durable_objects/experiment.rs`).
//!
//! Reloading a fresh machine from the store stands for an evicted instance, so each scenario
//! also proves the writes are complete: what memory knew, storage knows.

// The harness outside `#[test]` functions unwraps too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use gateway_core::experiment::{
    Change, Effects, ExperimentDef, Known, Machine, MetricDef, Moments, Stored, StoredDef, Variant,
    DEF_LAYOUT,
};
use gateway_core::protocol::experiment::{Request, Response as Reply, State, Status};
use gateway_core::{GatewayError, UnixMillis};

const NAME: &str = "checkout";
const INTERVAL: u64 = 60_000;
const T0: UnixMillis = UnixMillis(1_800_000_000_000);

/// The tables of one experiment object.
#[derive(Default)]
struct Store {
    rows: Stored,
    units: BTreeMap<String, String>,
    promoted_at: Option<UnixMillis>,
}

impl Store {
    fn apply(&mut self, writes: &[Change]) {
        let r = &mut self.rows;
        for change in writes {
            match change {
                Change::Definition { name, def, .. } => {
                    r.definition = Some(StoredDef {
                        name: name.clone(),
                        layout: DEF_LAYOUT,
                        def: postcard::to_allocvec(def).unwrap(),
                    })
                }
                Change::Deleted(d) => r.deleted = *d,
                Change::Assignment { unit, arm, .. } => {
                    self.units.insert(unit.clone(), arm.clone());
                }
                Change::Assigned { arm } => match r.assigned.iter_mut().find(|(a, _)| a == arm) {
                    Some((_, n)) => *n += 1,
                    None => r.assigned.push((arm.clone(), 1)),
                },
                Change::Observed { arm, metric, value } => {
                    match r
                        .moments
                        .iter_mut()
                        .find(|(a, m, _)| a == arm && m == metric)
                    {
                        Some((_, _, m)) => m.add(*value),
                        None => {
                            let mut m = Moments::default();
                            m.add(*value);
                            r.moments.push((arm.clone(), metric.clone(), m));
                        }
                    }
                }
                Change::Status(s) => r.status = Some(s.as_str().into()),
                Change::Promoted { arm, at } => {
                    r.winner = Some(arm.clone());
                    r.promotions += 1;
                    self.promoted_at = Some(*at);
                }
                Change::Analysis { snapshot, .. } => {
                    r.analysis = Some(postcard::to_allocvec(snapshot).unwrap())
                }
                Change::Decision(d) => r.decisions.push(d.clone()),
                Change::Erased => {
                    let deleted = r.deleted;
                    *r = Stored {
                        deleted,
                        ..Stored::default()
                    };
                    self.units.clear();
                    self.promoted_at = None;
                }
            }
        }
    }
}

/// One Durable Object instance over a store, with its clock.
struct Object {
    store: Store,
    machine: Machine,
    configured: BTreeMap<String, ExperimentDef>,
    now: UnixMillis,
}

impl Object {
    fn new(def: ExperimentDef) -> Object {
        let mut configured = BTreeMap::new();
        configured.insert(NAME.to_string(), def);
        Object {
            store: Store::default(),
            machine: Machine::blank(INTERVAL),
            configured,
            now: T0,
        }
    }

    fn call(&mut self, msg: Request) -> Result<Reply, GatewayError> {
        let arms = Machine::units(&msg)
            .into_iter()
            .filter_map(|u| self.store.units.get(u).map(|a| (u.to_string(), a.clone())))
            .collect();
        let known = Known {
            arms,
            configured: &self.configured,
        };
        let (reply, writes) = self.machine.handle(msg, &known, self.now)?;
        self.store.apply(&writes);
        Ok(reply)
    }

    /// The alarm, as the runtime fires it: at `now`, whatever was due.
    fn alarm(&mut self) -> Effects {
        let effects = self.machine.on_alarm(self.now);
        self.store.apply(&effects.writes);
        effects
    }

    /// An evicted instance: the next request loads from storage.
    fn evict(&mut self) {
        self.machine = Machine::load(self.store.rows.clone(), INTERVAL).unwrap();
    }

    fn advance(&mut self, ms: i64) {
        self.now = self.now.plus_ms(ms);
    }

    fn assign(&mut self, unit: &str) -> (String, bool) {
        match self.call(Request::Assign {
            name: NAME.into(),
            unit: unit.into(),
        }) {
            Ok(Reply::Assigned {
                variant, counted, ..
            }) => (variant, counted),
            other => panic!("assign {unit}: {other:?}"),
        }
    }

    fn event(&mut self, unit: &str, metric: &str, value: f64) -> bool {
        match self.call(Request::Event {
            name: NAME.into(),
            unit: unit.into(),
            values: vec![(metric.into(), value)],
        }) {
            Ok(Reply::Recorded { counted, .. }) => counted,
            other => panic!("event {unit}: {other:?}"),
        }
    }

    fn state(&mut self) -> State {
        match self.call(Request::Get { name: NAME.into() }) {
            Ok(Reply::State(s)) => *s,
            other => panic!("get: {other:?}"),
        }
    }

    /// `n` new units, each assigned and reporting the primary metric: a hit with probability
    /// `rate[arm]` (deterministic: every k-th unit of the arm), and a latency per arm.
    fn traffic(&mut self, prefix: &str, n: usize, rate: &[f64], latency: &[f64]) {
        let mut seen = [0usize; 8];
        for i in 0..n {
            let unit = format!("{prefix}-{i}");
            let (arm, counted) = self.assign(&unit);
            assert!(counted, "{unit} on {arm} is counted while running");
            let k: usize = arm[1..].parse().unwrap();
            seen[k] += 1;
            let hit = (seen[k] as f64 * rate[k]).floor() > ((seen[k] - 1) as f64 * rate[k]).floor();
            self.event(&unit, "@primary", if hit { 1.0 } else { 0.0 });
            let jitter = if i % 2 == 0 { 10.0 } else { -10.0 };
            self.event(&unit, "latency_ms", latency[k] + jitter);
        }
    }
}

fn def(weights: &[u32], min_sample: u64) -> ExperimentDef {
    ExperimentDef {
        seed: "lifecycle".into(),
        variants: weights
            .iter()
            .enumerate()
            .map(|(i, w)| Variant {
                name: format!("v{i}"),
                weight: *w,
                params: format!("{{\"arm\":{i}}}"),
                retired: false,
            })
            .collect(),
        min_sample,
        coverage: 10_000,
        primary: MetricDef::well_known("cache_hit").unwrap(),
        guardrails: vec![MetricDef::well_known("latency_ms").unwrap()],
        target: None,
    }
}

fn kinds(s: &State) -> Vec<&str> {
    s.decisions.iter().map(|d| d.kind.as_str()).collect()
}

#[test]
fn a_clear_winner_is_promoted_once_even_when_the_alarm_is_retried() {
    let mut o = Object::new(def(&[50, 50], 200));
    o.traffic("u", 1_600, &[0.2, 0.5], &[100.0, 100.0]);
    // Counting asked for the alarm one period after the first change, and no earlier.
    assert_eq!(o.machine.next_deadline(), Some(T0.plus_ms(INTERVAL as i64)));
    o.advance(INTERVAL as i64);
    let effects = o.alarm();
    assert!(effects.ran);
    let s = o.state();
    assert_eq!(s.status, Status::Concluded);
    assert_eq!(s.winner.as_deref(), Some("v1"));
    assert_eq!(s.promotions, 1);
    assert_eq!(kinds(&s), ["promote"]);
    assert_eq!(o.store.promoted_at, Some(o.now));
    // A concluded experiment needs no more alarms.
    assert_eq!(o.machine.next_deadline(), None);

    // The runtime retries the alarm (its first run's acknowledgement was lost): nothing acts
    // twice, in memory or after a reload from storage.
    let again = o.alarm();
    assert!(again.writes.is_empty(), "{:?}", again.writes);
    o.evict();
    o.advance(1);
    assert!(o.alarm().writes.is_empty());
    let s = o.state();
    assert_eq!((s.status, s.promotions), (Status::Concluded, 1));
    assert_eq!(kinds(&s), ["promote"]);
}

#[test]
fn after_the_conclusion_everyone_gets_the_winner_and_only_its_units_count() {
    let mut o = Object::new(def(&[50, 50], 200));
    o.traffic("u", 1_600, &[0.2, 0.5], &[100.0, 100.0]);
    o.advance(INTERVAL as i64);
    o.alarm();
    assert_eq!(o.state().status, Status::Concluded);
    let on_control = o
        .store
        .units
        .iter()
        .find(|(_, a)| *a == "v0")
        .map(|(u, _)| u.clone())
        .unwrap();
    let on_winner = o
        .store
        .units
        .iter()
        .find(|(_, a)| *a == "v1")
        .map(|(u, _)| u.clone())
        .unwrap();
    let before = o.state().data;

    // A unit that was on the control now gets the winner's configuration, uncounted.
    assert_eq!(o.assign(&on_control), ("v1".to_string(), false));
    assert!(!o.event(&on_control, "@primary", 1.0));
    // The winner's own units keep counting, and a unit never seen is recorded on the winner.
    assert_eq!(o.assign(&on_winner), ("v1".to_string(), true));
    assert!(o.event(&on_winner, "@primary", 1.0));
    assert_eq!(o.assign("newcomer"), ("v1".to_string(), true));
    assert_eq!(
        o.store.units.get("newcomer").map(String::as_str),
        Some("v1")
    );
    assert!(o.event("newcomer", "@primary", 0.0));

    let after = o.state().data;
    assert_eq!(
        after[0].metrics[0], before[0].metrics[0],
        "control untouched"
    );
    assert_eq!(after[1].metrics[0].n, before[1].metrics[0].n + 2);
    // Storage agrees after an eviction.
    o.evict();
    assert_eq!(o.state().data, after);
}

#[test]
fn a_guardrail_regression_rolls_the_treatment_back_and_everyone_gets_the_control() {
    let mut o = Object::new(def(&[50, 50], 200));
    // Better hit rate but 30 ms slower: the guardrail wins.
    o.traffic("u", 2_000, &[0.3, 0.45], &[100.0, 130.0]);
    o.advance(INTERVAL as i64);
    o.alarm();
    let s = o.state();
    assert_eq!(s.status, Status::RolledBack);
    assert_eq!(s.winner, None);
    assert_eq!(kinds(&s), ["rollback"]);
    assert!(s.def.variants[1].retired);
    assert!(
        s.decisions[0].reason.contains("latency_ms"),
        "{:?}",
        s.decisions
    );
    let treated = o
        .store
        .units
        .iter()
        .find(|(_, a)| *a == "v1")
        .map(|(u, _)| u.clone())
        .unwrap();
    assert_eq!(o.assign(&treated), ("v0".to_string(), false));
    assert_eq!(o.assign("newcomer"), ("v0".to_string(), false));
    assert!(!o.store.units.contains_key("newcomer"));
    // Rolled back is final: a retried alarm changes nothing and an admin resume is refused.
    assert!(o.alarm().writes.is_empty());
    match o.call(Request::Pause {
        name: NAME.into(),
        paused: false,
    }) {
        Err(GatewayError::Conflict(m)) => assert!(m.contains("rolled_back"), "{m}"),
        other => panic!("a rolled-back experiment cannot be resumed, got {other:?}"),
    }
    o.evict();
    let s = o.state();
    assert_eq!(s.status, Status::RolledBack);
    assert_eq!(kinds(&s), ["rollback"]);
}

#[test]
fn a_sample_ratio_mismatch_halts_until_an_admin_resumes() {
    let mut o = Object::new(def(&[50, 50], 200));
    o.traffic("u", 1_000, &[0.3, 0.3], &[100.0, 100.0]);
    // The split is changed to 90/10 mid-flight: the 50/50 tallies no longer match the
    // weights, so the data cannot be trusted.
    o.call(Request::Define {
        name: NAME.into(),
        def: def(&[90, 10], 200),
    })
    .unwrap();
    o.advance(INTERVAL as i64);
    o.alarm();
    let s = o.state();
    assert_eq!(s.status, Status::Halted);
    assert_eq!(kinds(&s), ["halt"]);
    assert!(s.analysis.as_ref().and_then(|a| a.srm_p).unwrap() < 0.001);
    assert_eq!(o.machine.next_deadline(), None);
    // Halted: units get the control and nothing counts.
    let (arm, counted) = o.assign("u-1");
    assert_eq!((arm.as_str(), counted), ("v0", false));
    assert!(!o.event("u-1", "@primary", 1.0));
    // An admin resumes (after fixing the split back): running again, alarm re-armed.
    o.call(Request::Define {
        name: NAME.into(),
        def: def(&[50, 50], 200),
    })
    .unwrap();
    match o.call(Request::Pause {
        name: NAME.into(),
        paused: false,
    }) {
        Ok(Reply::State(s)) => assert_eq!(s.status, Status::Running),
        other => panic!("{other:?}"),
    }
    assert!(o.machine.next_deadline().is_some());
    o.evict();
    let s = o.state();
    assert_eq!(s.status, Status::Running);
    assert_eq!(kinds(&s), ["halt", "resume"]);
}

#[test]
fn a_paused_experiment_counts_nothing_and_its_alarm_decides_nothing() {
    let mut o = Object::new(def(&[50, 50], 200));
    o.traffic("u", 1_600, &[0.2, 0.5], &[100.0, 100.0]);
    match o.call(Request::Pause {
        name: NAME.into(),
        paused: true,
    }) {
        Ok(Reply::State(s)) => assert_eq!(s.status, Status::Paused),
        other => panic!("{other:?}"),
    }
    let before = o.state().data;
    let (arm, counted) = o.assign("u-7");
    assert_eq!((arm.as_str(), counted), ("v0", false));
    assert!(!o.event("u-7", "@primary", 1.0));
    assert_eq!(o.assign("newcomer"), ("v0".to_string(), false));
    assert!(!o.store.units.contains_key("newcomer"));
    // The alarm that was armed fires while paused: no analysis, no verdict, not re-armed.
    o.advance(INTERVAL as i64);
    let effects = o.alarm();
    assert!(effects.writes.is_empty(), "{:?}", effects.writes);
    assert_eq!(o.machine.next_deadline(), None);
    assert_eq!(o.state().data, before);
    assert_eq!(o.state().status, Status::Paused);
    // Pausing twice is not a second decision.
    o.call(Request::Pause {
        name: NAME.into(),
        paused: true,
    })
    .unwrap();
    // Resume: the alarm is armed again and the same data now promotes.
    o.call(Request::Pause {
        name: NAME.into(),
        paused: false,
    })
    .unwrap();
    assert_eq!(
        o.machine.next_deadline(),
        Some(o.now.plus_ms(INTERVAL as i64))
    );
    o.advance(INTERVAL as i64);
    o.alarm();
    let s = o.state();
    assert_eq!(s.status, Status::Concluded);
    assert_eq!(kinds(&s), ["pause", "resume", "promote"]);
}

#[test]
fn a_missed_alarm_is_one_catch_up_run_over_all_the_data() {
    let mut o = Object::new(def(&[50, 50], 200));
    // Too little data to decide: the alarm continues and re-arms one period after it ran.
    o.traffic("a", 100, &[0.2, 0.5], &[100.0, 100.0]);
    o.advance(INTERVAL as i64);
    o.alarm();
    assert_eq!(o.state().status, Status::Running);
    assert_eq!(
        o.machine.next_deadline(),
        Some(o.now.plus_ms(INTERVAL as i64))
    );
    // The alarm is then missed for ten periods while traffic keeps coming.
    o.traffic("b", 1_500, &[0.2, 0.5], &[100.0, 100.0]);
    o.advance(10 * INTERVAL as i64);
    assert!(o.machine.next_deadline().unwrap() < o.now, "overdue");
    // One late run sees everything, decides once and does not re-arm a backlog of runs.
    let effects = o.alarm();
    assert!(effects.ran);
    let s = o.state();
    assert_eq!(s.status, Status::Concluded);
    assert_eq!(kinds(&s), ["promote"]);
    let analysis = s.analysis.unwrap();
    let n: u64 = s.data.iter().map(|d| d.metrics[0].n).sum();
    assert_eq!(n, 1_600);
    assert_eq!(analysis.arms.len(), 2);
    assert_eq!(o.machine.next_deadline(), None);
}

#[test]
fn a_deleted_experiment_is_not_adopted_again_from_the_configuration() {
    let mut o = Object::new(def(&[50, 50], 200));
    o.traffic("u", 50, &[0.2, 0.5], &[100.0, 100.0]);
    match o.call(Request::Delete { name: NAME.into() }) {
        Ok(Reply::Deleted { existed }) => assert!(existed),
        other => panic!("{other:?}"),
    }
    assert!(o.store.units.is_empty());
    o.evict();
    match o.call(Request::Get { name: NAME.into() }) {
        Err(GatewayError::NotFound(_)) => {}
        other => panic!("a deleted experiment answers 404, got {other:?}"),
    }
    // The alarm that was still armed finds nothing to analyse and stops.
    o.advance(INTERVAL as i64);
    let effects = o.alarm();
    assert!(!effects.ran && effects.writes.is_empty());
    assert_eq!(o.machine.next_deadline(), None);
    // Defining it again starts afresh.
    o.call(Request::Define {
        name: NAME.into(),
        def: def(&[50, 50], 200),
    })
    .unwrap();
    let s = o.state();
    assert_eq!(s.status, Status::Running);
    assert!(s.data.iter().all(|d| d.assigned == 0));
}
