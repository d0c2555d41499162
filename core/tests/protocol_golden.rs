//! Golden bytes of the internal worker <-> Durable Object protocol.
//!
//! During a deploy, workers and Durable Objects of different versions talk to each other (and
//! objects read what they stored), so the bytes of every message are a contract between
//! versions. Each test below encodes one fixed message (version byte + postcard, the crate's
//! own `protocol::encode`) and compares it with the pinned hex, then decodes the pinned hex and
//! compares it with the message. One golden per variant of every request and response enum of
//! the aggregator, cache, experiment, provider and rate-limiter protocols, and one wire error per
//! `GatewayError` variant (`every_variant_has_a_golden` in each group fails when a variant is
//! added without one).
//!
//! A failure means a mixed-version rollout breaks: an older peer misreads the newer bytes, or a
//! newer peer cannot read what an older one sends. Renaming a field is free (postcard writes no
//! names); reordering fields or variants, changing a type, or inserting in the middle is not. An
//! appended field or variant is the supported change (an older reader ignores trailing bytes):
//! make sure the newer reader still accepts the older bytes where a mixed rollout can send them
//! (see `WireError` and `protocol::decode_reply` for how the error did it), then re-pin.
//!
//! Responses are pinned as they cross the hop, wrapped in `Reply::Ok`; wire errors as
//! `Reply::<()>::Err` (an error never touches the reply's `T`, so its bytes are the same for
//! every reply type).

use std::fmt::Debug;

use gateway_core::alarm::AlarmStats;
use gateway_core::balancer::sketch::LatencySketch;
use gateway_core::balancer::{
    Circuit, ErrorClass, Outcome, Pick, Preference, ProviderHealth, ProviderSpec, Strategy,
};
use gateway_core::cache::CacheCounters;
use gateway_core::experiment::stats::TestResult;
use gateway_core::experiment::{
    Analysis, ArmAnalysis, ArmData, Better, ExperimentDef, MetricAnalysis, MetricDef, MetricKind,
    Moments, Target, Variant, Verdict,
};
use gateway_core::observe::alerts::{
    AlertState, Metric, Notification, Op, Phase, Rule, Severity, Status as AlertStatus,
};
use gateway_core::observe::export::Issue;
use gateway_core::observe::series::{Lifetime, Period};
use gateway_core::observe::spend::{Spend, SpendRecord};
use gateway_core::observe::{Agg, CacheOutcome, ProviderAgg, Record, TopEntry, TopKeys};
use gateway_core::protocol::{
    self, aggregator, cache, experiment, providers, ratelimit, ObjectStats, Reply, WireError,
};
use gateway_core::rate_limit::policy::{Algorithm, Policy};
use gateway_core::rate_limit::sliding::SlidingWindowPolicy;
use gateway_core::rate_limit::{Decision, TokenBucketPolicy};
use gateway_core::{keys, GatewayError, UnixMillis};
use serde::de::DeserializeOwned;
use serde::Serialize;

const ROLLOUT: &str = "this breaks a mixed-version rollout (workers and Durable Objects of \
    different versions exchange these bytes during a deploy); only append fields or variants, \
    keep older bytes readable, then re-pin (see the header of core/tests/protocol_golden.rs)";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex literal");
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .unwrap_or_else(|e| panic!("bad hex literal {s:?}: {e}"))
        })
        .collect()
}

/// Encodes `value` and compares with `pinned`; decodes `pinned` and compares with `value`.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T, pinned: &str) {
    let encoded = hex(&protocol::encode(value)
        .unwrap_or_else(|e| panic!("{name}: the message no longer encodes ({e})")));
    assert_eq!(
        encoded, pinned,
        "{name}: the encoding of this message changed: {ROLLOUT}"
    );
    let decoded: T = protocol::decode(&unhex(pinned))
        .unwrap_or_else(|e| panic!("{name}: the pinned bytes no longer decode ({e}): {ROLLOUT}"));
    assert_eq!(
        &decoded, value,
        "{name}: the pinned bytes decode to a different message: {ROLLOUT}"
    );
}

/// The variants of a message enum: the exhaustive `match` stops the build when a variant is
/// added, so it cannot be added without a golden.
trait Variants {
    const ALL: &'static [&'static str];
    fn variant(&self) -> &'static str;
}

/// One `mod $group` of golden tests over the enum `$enum`, each value wrapped by `$wrap` into
/// the message type `$encoded` that crosses the hop.
macro_rules! goldens {
    ($group:ident: $enum:ty => $encoded:ty = $wrap:expr; { $($name:ident: $value:expr => $hex:literal,)* }) => {
        pub mod $group {
            use super::*;

            fn wrap(v: $enum) -> $encoded {
                ($wrap)(v)
            }

            $(
                #[test]
                fn $name() {
                    check(
                        concat!(stringify!($group), "::", stringify!($name)),
                        &wrap($value),
                        $hex,
                    );
                }
            )*

            #[test]
            fn every_variant_has_a_golden() {
                let mut pinned: Vec<&str> = vec![$(Variants::variant(&$value)),*];
                pinned.sort_unstable();
                let mut all = <$enum as Variants>::ALL.to_vec();
                all.sort_unstable();
                assert_eq!(pinned, all, "{}: pin exactly one message per variant", stringify!($group));
            }
        }
    };
}

// ---- fixed values ----------------------------------------------------------------------------

const KEY_ID: &str = "key_0123456789abcdef";

fn key_def() -> keys::KeyDef {
    keys::KeyDef {
        name: Some("search".into()),
        policy: Some(policy_bucket()),
        tokens_per_minute: Some(10_000),
        tokens_per_day: None,
        budget_day_micro_usd: Some(5_000_000),
        budget_month_micro_usd: None,
        models: vec!["gpt-4o".into()],
        groups: vec![],
        metadata: [("team".to_string(), "search".to_string())].into(),
    }
}

fn key_record() -> keys::KeyRecord {
    keys::KeyRecord {
        id: KEY_ID.into(),
        hash: "ab".repeat(32),
        def: key_def(),
        created_at: at(1_700_000_000_000),
        revoked_at: None,
    }
}

fn key_view() -> keys::KeyView {
    keys::KeyView {
        id: KEY_ID.into(),
        def: key_def(),
        created_at: at(1_700_000_000_000),
        revoked_at: Some(at(1_700_000_060_000)),
        usage: keys::usage::UsageView {
            tokens_minute: 120,
            tokens_day: 900,
            spend_day_micro_usd: 450,
            spend_month_micro_usd: 1_450,
            in_flight: 1,
            requests: 9,
            tokens: 880,
            spent_micro_usd: 1_450,
        },
    }
}

fn token_limit() -> keys::Limit {
    keys::Limit {
        name: "tokens".into(),
        quota: 10_000,
        window_s: 60,
        remaining: 9_700,
        reset_s: 30,
    }
}

fn at(ms: i64) -> UnixMillis {
    UnixMillis(ms)
}

fn object_stats() -> ObjectStats {
    ObjectStats {
        alarm: AlarmStats {
            runs: 12,
            last_run_at: Some(at(1_700_000_000_000)),
        },
        schema_version: 2,
    }
}

fn sketch() -> LatencySketch {
    LatencySketch {
        buckets: vec![(-1, 1), (70, 3)],
        zeros: 2,
        count: 6,
    }
}

fn agg() -> Agg {
    Agg {
        requests: 10,
        cache_hits: 4,
        stale_hits: 1,
        cache_misses: 3,
        upstream_requests: 5,
        upstream_calls: 6,
        rate_limited: 1,
        errors: 2,
        client_errors: 1,
        latency_sum_ms: 345,
        latency_max_ms: 120,
        latency: sketch(),
        cost_micro_usd: 1_500,
        providers: vec![(
            "openai".into(),
            ProviderAgg {
                requests: 5,
                errors: 1,
                latency: sketch(),
                cost_micro_usd: 1_500,
            },
        )],
        top: TopKeys {
            entries: vec![TopEntry {
                key: "chat/v1".into(),
                count: 7,
                error: 1,
                hits: 3,
            }],
        },
    }
}

fn sample_record() -> Record {
    Record {
        at: at(1_700_000_000_123),
        status: 200,
        latency_ms: 42,
        cache: CacheOutcome::Hit,
        rate_limited: false,
        upstream_calls: 1,
        key: "chat/v1".into(),
        provider: Some("openai".into()),
        provider_latency_ms: 40,
        provider_error: false,
        cost_micro_usd: 250,
    }
}

fn spend_record() -> SpendRecord {
    SpendRecord {
        at: at(1_700_000_000_123),
        key: KEY_ID.into(),
        model: "gpt-4o".into(),
        input_tokens: 12,
        output_tokens: 16,
        cost_micro_usd: 116,
        budget_day_micro_usd: Some(5_000_000),
        budget_month_micro_usd: None,
    }
}

fn spend() -> Spend {
    let mut s = Spend::default();
    s.record(&spend_record());
    s.other_keys.requests = 1;
    s
}

fn rule() -> Rule {
    Rule {
        name: "high-miss-rate".into(),
        severity: Severity::Warning,
        metric: Metric::MissRate,
        op: Op::Above,
        threshold: 0.5,
        for_ms: 60_000,
        keep_firing_ms: 120_000,
        window_ms: 300_000,
        min_requests: 20,
    }
}

fn notification() -> Notification {
    Notification {
        rule: "high-miss-rate".into(),
        severity: Severity::Critical,
        metric: Metric::ErrorRate,
        status: AlertStatus::Resolved,
        value: 0.25,
        threshold: 0.5,
        starts_at: at(1_700_000_000_000),
        ends_at: Some(at(1_700_000_600_000)),
        at: at(1_700_000_600_000),
        repeat: true,
    }
}

fn policy_bucket() -> Policy {
    Policy {
        algorithm: Algorithm::TokenBucket(TokenBucketPolicy {
            capacity: 100,
            refill: 10,
            period_ms: 1_000,
        }),
        shadow: false,
    }
}

fn policy_window() -> Policy {
    Policy {
        algorithm: Algorithm::SlidingWindow(SlidingWindowPolicy {
            limit: 60,
            window_ms: 60_000,
        }),
        shadow: true,
    }
}

fn metric(name: &str, kind: MetricKind, better: Better) -> MetricDef {
    MetricDef {
        name: name.into(),
        kind,
        better,
    }
}

fn experiment_def() -> ExperimentDef {
    ExperimentDef {
        seed: "s1".into(),
        variants: vec![
            Variant {
                name: "control".into(),
                weight: 5_000,
                params: "{}".into(),
                retired: false,
            },
            Variant {
                name: "long-ttl".into(),
                weight: 5_000,
                params: "{\"cache_ttl_s\":86400}".into(),
                retired: true,
            },
        ],
        min_sample: 100,
        coverage: 10_000,
        primary: metric("converted", MetricKind::Binary, Better::Higher),
        guardrails: vec![metric("latency_ms", MetricKind::Continuous, Better::Lower)],
        target: Some(target()),
    }
}

fn target() -> Target {
    Target {
        group: "llm".into(),
        path_prefix: "/chat".into(),
    }
}

fn experiment_state() -> experiment::State {
    experiment::State {
        name: "ttl-test".into(),
        def: experiment_def(),
        data: vec![ArmData {
            assigned: 50,
            metrics: vec![Moments {
                n: 40,
                sum: 12.0,
                sum_sq: 12.0,
            }],
        }],
        analysis: Some(Analysis {
            events: 40,
            arms: vec![ArmAnalysis {
                name: "long-ttl".into(),
                assigned: 50,
                retired: false,
                metrics: vec![MetricAnalysis {
                    metric: "converted".into(),
                    n: 40,
                    mean: Some(0.25),
                    ci: Some((0.125, 0.375)),
                    vs_control: Some(TestResult {
                        effect: 0.0625,
                        statistic: 1.5,
                        p_value: 0.125,
                        ci_low: -0.03125,
                        ci_high: 0.15625,
                    }),
                    sequential_p: 0.5,
                }],
            }],
            srm_p: Some(0.75),
            verdict: Verdict::Rollback("long-ttl".into(), "latency_ms regressed".into()),
        }),
        status: experiment::Status::RolledBack,
        object: object_stats(),
        winner: None,
        promotions: 0,
        decisions: vec![experiment::Decision {
            kind: "rollback".into(),
            arm: Some("long-ttl".into()),
            at: at(1_700_000_300_000),
            reason: "latency_ms regressed".into(),
        }],
    }
}

fn cached() -> cache::Cached {
    cache::Cached {
        value: b"hello".to_vec(),
        content_type: Some("text/plain".into()),
        age_ms: 1_500,
        ttl_left_ms: 58_500,
        negative: false,
    }
}

fn sample_decision() -> Decision {
    Decision {
        allowed: true,
        limit: 100,
        remaining: 99,
        reset_ms: 100,
        retry_after_ms: 0,
        cost: 1,
    }
}

// ---- variant lists ---------------------------------------------------------------------------

impl Variants for aggregator::Request {
    const ALL: &'static [&'static str] = &[
        "Record",
        "Collect",
        "Stats",
        "Run",
        "Wake",
        "Summary",
        "Points",
        "Alerts",
        "Report",
        "Ingest",
        "CollectAll",
        "SpendSummary",
    ];
    fn variant(&self) -> &'static str {
        use aggregator::Request::*;
        match self {
            Record { .. } => "Record",
            Collect { .. } => "Collect",
            Stats => "Stats",
            Run => "Run",
            Wake => "Wake",
            Summary { .. } => "Summary",
            Points { .. } => "Points",
            Alerts => "Alerts",
            Report => "Report",
            Ingest { .. } => "Ingest",
            CollectAll { .. } => "CollectAll",
            SpendSummary { .. } => "SpendSummary",
        }
    }
}

impl Variants for aggregator::Response {
    const ALL: &'static [&'static str] = &[
        "Ingested",
        "Windows",
        "Stats",
        "Ran",
        "Awake",
        "Summary",
        "Points",
        "Alerts",
        "Report",
        "Collected",
        "SpendSummary",
    ];
    fn variant(&self) -> &'static str {
        use aggregator::Response::*;
        match self {
            Ingested { .. } => "Ingested",
            Windows(_) => "Windows",
            Stats(_) => "Stats",
            Ran(_) => "Ran",
            Awake => "Awake",
            Summary(_) => "Summary",
            Points { .. } => "Points",
            Alerts(_) => "Alerts",
            Report(_) => "Report",
            Collected(_) => "Collected",
            SpendSummary(_) => "SpendSummary",
        }
    }
}

impl Variants for cache::Request {
    const ALL: &'static [&'static str] = &["Get", "Put", "Delete", "Purge", "Stats"];
    fn variant(&self) -> &'static str {
        use cache::Request::*;
        match self {
            Get { .. } => "Get",
            Put { .. } => "Put",
            Delete { .. } => "Delete",
            Purge { .. } => "Purge",
            Stats => "Stats",
        }
    }
}

impl Variants for cache::Response {
    const ALL: &'static [&'static str] = &[
        "Hit", "Stale", "Miss", "Stored", "Deleted", "Purged", "Stats",
    ];
    fn variant(&self) -> &'static str {
        use cache::Response::*;
        match self {
            Hit(_) => "Hit",
            Stale { .. } => "Stale",
            Miss { .. } => "Miss",
            Stored { .. } => "Stored",
            Deleted { .. } => "Deleted",
            Purged { .. } => "Purged",
            Stats(_) => "Stats",
        }
    }
}

impl Variants for experiment::Request {
    const ALL: &'static [&'static str] = &[
        "Define",
        "Assign",
        "Event",
        "Events",
        "Get",
        "Analyse",
        "Pause",
        "Retire",
        "Delete",
        "IndexPut",
        "IndexDelete",
        "IndexList",
    ];
    fn variant(&self) -> &'static str {
        use experiment::Request::*;
        match self {
            Define { .. } => "Define",
            Assign { .. } => "Assign",
            Event { .. } => "Event",
            Events { .. } => "Events",
            Get { .. } => "Get",
            Analyse { .. } => "Analyse",
            Pause { .. } => "Pause",
            Retire { .. } => "Retire",
            Delete { .. } => "Delete",
            IndexPut { .. } => "IndexPut",
            IndexDelete { .. } => "IndexDelete",
            IndexList => "IndexList",
        }
    }
}

impl Variants for experiment::Response {
    const ALL: &'static [&'static str] = &[
        "Defined",
        "Assigned",
        "Recorded",
        "RecordedMany",
        "Deleted",
        "State",
        "Index",
    ];
    fn variant(&self) -> &'static str {
        use experiment::Response::*;
        match self {
            Defined { .. } => "Defined",
            Assigned { .. } => "Assigned",
            Recorded { .. } => "Recorded",
            RecordedMany { .. } => "RecordedMany",
            Deleted { .. } => "Deleted",
            State(_) => "State",
            Index(_) => "Index",
        }
    }
}

impl Variants for ratelimit::Request {
    const ALL: &'static [&'static str] = &[
        "Take",
        "Peek",
        "Reset",
        "Stats",
        "PutPolicy",
        "ListPolicies",
        "CreateKey",
        "GetKey",
        "ListKeys",
        "RevokeKey",
        "Admit",
        "SettleKey",
    ];
    fn variant(&self) -> &'static str {
        use ratelimit::Request::*;
        match self {
            CreateKey(_) => "CreateKey",
            GetKey { .. } => "GetKey",
            ListKeys => "ListKeys",
            RevokeKey { .. } => "RevokeKey",
            Admit { .. } => "Admit",
            SettleKey { .. } => "SettleKey",
            Take { .. } => "Take",
            Peek { .. } => "Peek",
            Reset { .. } => "Reset",
            Stats => "Stats",
            PutPolicy { .. } => "PutPolicy",
            ListPolicies => "ListPolicies",
        }
    }
}

impl Variants for ratelimit::Response {
    const ALL: &'static [&'static str] = &[
        "Decision",
        "Reset",
        "Stats",
        "PolicyStored",
        "Policies",
        "Key",
        "Keys",
        "Admission",
        "KeySettled",
    ];
    fn variant(&self) -> &'static str {
        use ratelimit::Response::*;
        match self {
            Key(_) => "Key",
            Keys(_) => "Keys",
            Admission(_) => "Admission",
            KeySettled { .. } => "KeySettled",
            Decision { .. } => "Decision",
            Reset { .. } => "Reset",
            Stats(_) => "Stats",
            PolicyStored { .. } => "PolicyStored",
            Policies(_) => "Policies",
        }
    }
}

impl Variants for providers::Request {
    const ALL: &'static [&'static str] = &[
        "Pick",
        "Report",
        "Configure",
        "ReportMany",
        "Status",
        "PickRanked",
        "Settle",
    ];
    fn variant(&self) -> &'static str {
        use providers::Request::*;
        match self {
            Pick { .. } => "Pick",
            Report { .. } => "Report",
            Configure { .. } => "Configure",
            ReportMany { .. } => "ReportMany",
            Status { .. } => "Status",
            PickRanked { .. } => "PickRanked",
            Settle { .. } => "Settle",
        }
    }
}

impl Variants for providers::Response {
    const ALL: &'static [&'static str] =
        &["Picked", "Reported", "Configured", "Status", "Candidates"];
    fn variant(&self) -> &'static str {
        use providers::Response::*;
        match self {
            Picked(_) => "Picked",
            Reported => "Reported",
            Configured { .. } => "Configured",
            Status(_) => "Status",
            Candidates { .. } => "Candidates",
        }
    }
}

fn provider_spec() -> ProviderSpec {
    ProviderSpec {
        name: "alpha".into(),
        url: "http://127.0.0.1:9100/alpha".into(),
        weight: 3,
        health_path: "/health".into(),
        timeout_ms: 2000,
        secret: Some("ALPHA_KEY".into()),
        cost_per_request_micro_usd: 100,
        cost_per_1k_input_micro_usd: 150,
        cost_per_1k_output_micro_usd: 600,
        budget_micro_usd: Some(5000),
        budget_period_ms: 86_400_000,
    }
}

fn sample_pick(panic: bool) -> Pick {
    Pick {
        name: "alpha".into(),
        url: "http://127.0.0.1:9100/alpha".into(),
        panic,
        timeout_ms: 2000,
        secret: Some("ALPHA_KEY".into()),
        prices: (100, 150, 600),
    }
}

fn sample_outcome() -> Outcome {
    Outcome {
        ok: false,
        latency_ms: 120,
        retry_after_ms: Some(30_000),
        input_tokens: 12,
        output_tokens: 34,
        error: Some(ErrorClass::Timeout),
    }
}

fn prefer() -> Preference {
    Preference {
        provider: Some("beta".into()),
        strategy: Some(Strategy::LeastLatency),
    }
}

impl Variants for GatewayError {
    const ALL: &'static [&'static str] = &[
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "MethodNotAllowed",
        "PayloadTooLarge",
        "TooManyRequests",
        "Conflict",
        "Unavailable",
        "BadGateway",
        "GatewayTimeout",
        "Internal",
        "Refused",
    ];
    fn variant(&self) -> &'static str {
        match self {
            GatewayError::BadRequest { .. } => "BadRequest",
            GatewayError::Unauthorized => "Unauthorized",
            GatewayError::Forbidden(_) => "Forbidden",
            GatewayError::NotFound(_) => "NotFound",
            GatewayError::MethodNotAllowed { .. } => "MethodNotAllowed",
            GatewayError::PayloadTooLarge { .. } => "PayloadTooLarge",
            GatewayError::TooManyRequests(_) => "TooManyRequests",
            GatewayError::Conflict(_) => "Conflict",
            GatewayError::Unavailable(_) => "Unavailable",
            GatewayError::BadGateway(_) => "BadGateway",
            GatewayError::GatewayTimeout(_) => "GatewayTimeout",
            GatewayError::Internal(_) => "Internal",
            GatewayError::Refused { .. } => "Refused",
        }
    }
}

fn wire_err(e: GatewayError) -> Reply<()> {
    Err(WireError::from(&e))
}

// ---- the goldens -----------------------------------------------------------------------------

/// A failing test here names the message whose bytes changed.
pub mod mixed_version_rollout_breaks_if_these_bytes_change {
    use super::*;

    goldens! { aggregator_request: aggregator::Request => aggregator::Request = |v| v; {
        record: aggregator::Request::Record { batch: "b-1".into(), records: vec![sample_record()] } => "010003622d3101f6a1abfef962c8012a00000107636861742f763101066f70656e61692800fa01",
        collect: aggregator::Request::Collect { since: at(1_700_000_000_000) } => "010180a0abfef962",
        stats: aggregator::Request::Stats => "0102",
        run: aggregator::Request::Run => "0103",
        wake: aggregator::Request::Wake => "0104",
        summary: aggregator::Request::Summary { period: Period::Hour } => "010500",
        points: aggregator::Request::Points { period: Period::Week } => "010602",
        alerts: aggregator::Request::Alerts => "0107",
        report: aggregator::Request::Report => "0108",
        ingest: aggregator::Request::Ingest {
            batch: "b-2".into(),
            records: vec![sample_record()],
            spend: vec![spend_record()],
        } => "010903622d3201f6a1abfef962c8012a00000107636861742f763101066f70656e61692800fa0101f6a1abfef962146b65795f30313233343536373839616263646566066770742d346f0c107401c096b10200",
        collect_all: aggregator::Request::CollectAll { since: at(1_700_000_000_000) } => "010a80a0abfef962",
        spend_summary: aggregator::Request::SpendSummary { period: Period::Day } => "010b01",
    }}

    goldens! { aggregator_response: aggregator::Response => Reply<aggregator::Response> = Ok; {
        ingested: aggregator::Response::Ingested { accepted: 3, late: 1, duplicate: false } => "010000030100",
        windows: aggregator::Response::Windows(aggregator::Windows {
            sealed: vec![(at(1_700_000_000_000), agg())],
            open: vec![(at(1_700_000_060_000), Agg::default())],
            sealed_before: at(1_700_000_060_000),
        }) => "0100010180a0abfef9620a0401030506010201d902780201018c01030206dc0b01066f70656e616905010201018c01030206dc0b0107636861742f763107010301c0c9b2fef9620000000000000000000000000000000000c0c9b2fef962",
        stats: aggregator::Response::Stats(aggregator::Stats {
            role: "root".into(),
            windows: 24,
            sealed_before: at(1_700_000_060_000),
            records: 1_000,
            late: 2,
            duplicate_batches: 1,
            cursors: vec![(0, at(1_700_000_000_000)), (3, at(1_700_000_060_000))],
            object: object_stats(),
        }) => "01000204726f6f7418c0c9b2fef962e8070201020080a0abfef96203c0c9b2fef9620c0180a0abfef96202",
        ran: aggregator::Response::Ran(aggregator::RunReport {
            merged: 4,
            skipped: 1,
            shards_ok: 7,
            shards_failed: 1,
            notifications: 2,
            delivered: 1,
            failed: 1,
        }) => "01000304010701020101",
        awake: aggregator::Response::Awake => "010004",
        summary: aggregator::Response::Summary(Box::new(aggregator::Summary {
            now: at(1_700_000_123_000),
            agg: agg(),
            lifetime: Lifetime {
                requests: 100,
                cache_hits: 40,
                stale_hits: 5,
                cache_misses: 30,
                upstream_calls: 55,
                rate_limited: 3,
                errors: 4,
                latency_sum_ms: 4_200,
                cost_micro_usd: 9_000,
            },
            cursors: vec![(1, at(1_700_000_000_000))],
            earliest: Some(at(1_699_999_000_000)),
            issues: vec![Issue {
                severity: Severity::Critical,
                message: "provider openai ejected".into(),
                since: at(1_700_000_100_000),
            }],
        })) => "010005f0a1bafef9620a0401030506010201d902780201018c01030206dc0b01066f70656e616905010201018c01030206dc0b0107636861742f76310701036428051e370304e820a846010180a0abfef962018097b1fdf96201011770726f7669646572206f70656e616920656a6563746564c0bab7fef962",
        points: aggregator::Response::Points {
            step_ms: 60_000,
            points: vec![(at(1_700_000_000_000), agg())],
            cursors: vec![(2, at(1_700_000_000_000))],
        } => "010006c0a9070180a0abfef9620a0401030506010201d902780201018c01030206dc0b01066f70656e616905010201018c01030206dc0b0107636861742f7631070103010280a0abfef962",
        alerts: aggregator::Response::Alerts(Box::new(aggregator::AlertsView {
            rules: vec![rule()],
            states: vec![
                AlertState { rule: "a".into(), phase: Phase::Inactive, value: None },
                AlertState {
                    rule: "b".into(),
                    phase: Phase::Pending { since: at(1_700_000_000_000) },
                    value: Some(0.75),
                },
                AlertState {
                    rule: "c".into(),
                    phase: Phase::Firing {
                        since: at(1_700_000_000_000),
                        notified: at(1_700_000_060_000),
                        clear_since: Some(at(1_700_000_120_000)),
                    },
                    value: Some(0.125),
                },
            ],
            history: vec![notification()],
            webhook: true,
            pending: 1,
            delivered: 5,
            dropped: 1,
        })) => "010007010e686967682d6d6973732d72617465000000000000000000e03fc0a90780d30ec0cf2414030161000001620180a0abfef96201000000000000e83f01630280a0abfef962c0c9b2fef9620180f3b9fef96201000000000000c03f010e686967682d6d6973732d72617465010201000000000000d03f000000000000e03f80a0abfef9620180bff4fef96280bff4fef9620101010501",
        report: aggregator::Response::Report("{\"day\":\"2023-11-14\"}".into()) => "010008147b22646179223a22323032332d31312d3134227d",
        collected: aggregator::Response::Collected(aggregator::Collected {
            windows: aggregator::Windows {
                sealed: vec![(at(1_700_000_000_000), agg())],
                open: vec![],
                sealed_before: at(1_700_000_060_000),
            },
            spend_sealed: vec![(at(1_700_000_000_000), spend())],
            spend_open: vec![(at(1_700_000_060_000), Spend::default())],
        }) => "0100090180a0abfef9620a0401030506010201d902780201018c01030206dc0b01066f70656e616905010201018c01030206dc0b0107636861742f763107010300c0c9b2fef9620180a0abfef96201146b65795f30313233343536373839616263646566010c1074f6a1abfef96201c096b102000100000001066770742d346f010c10740000000001c0c9b2fef96200000000000000000000",
        spend_summary: aggregator::Response::SpendSummary(Box::new(aggregator::SpendSummary {
            summary: aggregator::Summary {
                now: at(1_700_000_123_000),
                agg: Agg::default(),
                lifetime: Lifetime::default(),
                cursors: vec![(1, at(1_700_000_000_000))],
                earliest: None,
                issues: vec![],
            },
            spend: spend(),
            today: Spend::default(),
        })) => "01000af0a1bafef9620000000000000000000000000000000000000000000000000000010180a0abfef962000001146b65795f30313233343536373839616263646566010c1074f6a1abfef96201c096b102000100000001066770742d346f010c10740000000000000000000000000000",
    }}

    goldens! { cache_request: cache::Request => cache::Request = |v| v; {
        get: cache::Request::Get {
            key: "ns/key".into(),
            allow_stale_if_error: true,
            lease_ms: Some(5_000),
            wait_ms: 250,
        } => "0100066e732f6b657901018827fa01",
        put: cache::Request::Put {
            key: "ns/key".into(),
            value: b"hello".to_vec(),
            content_type: Some("text/plain".into()),
            spec: cache::PutSpec {
                ttl_ms: 60_000,
                stale_while_revalidate_ms: 10_000,
                stale_if_error_ms: 300_000,
                negative: false,
                tags: vec!["t1".into(), "t2".into()],
            },
        } => "0101066e732f6b65790568656c6c6f010a746578742f706c61696ee0d403904ee0a7120002027431027432",
        delete: cache::Request::Delete { key: "ns/key".into() } => "0102066e732f6b6579",
        purge: cache::Request::Purge { tags: vec!["t1".into()] } => "010301027431",
        stats: cache::Request::Stats => "0104",
    }}

    goldens! { cache_response: cache::Response => Reply<cache::Response> = Ok; {
        hit: cache::Response::Hit(cached()) => "0100000568656c6c6f010a746578742f706c61696edc0b84c90300",
        stale: cache::Response::Stale { cached: cached(), if_error: true, lease: Some(77) } => "0100010568656c6c6f010a746578742f706c61696edc0b84c9030001014d",
        miss: cache::Response::Miss { expired: true, lease: None, waited: true } => "010002010001",
        stored: cache::Response::Stored { evicted: 2 } => "01000302",
        deleted: cache::Response::Deleted { existed: true } => "01000401",
        purged: cache::Response::Purged { removed: 3 } => "01000503",
        stats: cache::Response::Stats(cache::Stats {
            entries: 10,
            bytes: 2_048,
            max_entries: 10_000,
            max_bytes: 1_048_576,
            counters: CacheCounters {
                hits: 1,
                stale_hits: 2,
                misses: 3,
                evicted_capacity: 4,
                evicted_bytes: 5,
                expired: 6,
                purged: 7,
            },
            swept: 8,
            leases_granted: 9,
            coalesced: 10,
            object: object_stats(),
        }) => "0100060a8010904e8080400102030405060708090a0c0180a0abfef96202",
    }}

    goldens! { experiment_request: experiment::Request => experiment::Request = |v| v; {
        define: experiment::Request::Define { name: "ttl-test".into(), def: experiment_def() } => "01000874746c2d746573740273310207636f6e74726f6c8827027b7d00086c6f6e672d74746c8827157b2263616368655f74746c5f73223a38363430307d0164904e09636f6e7665727465640000010a6c6174656e63795f6d73010101036c6c6d052f63686174",
        assign: experiment::Request::Assign { name: "ttl-test".into(), unit: "user-1".into() } => "01010874746c2d7465737406757365722d31",
        event: experiment::Request::Event {
            name: "ttl-test".into(),
            unit: "user-1".into(),
            values: vec![("converted".into(), 1.0)],
        } => "01020874746c2d7465737406757365722d310109636f6e766572746564000000000000f03f",
        events: experiment::Request::Events {
            name: "ttl-test".into(),
            events: vec![
                ("user-1".into(), vec![("converted".into(), 1.0)]),
                ("user-2".into(), vec![("latency_ms".into(), 12.5)]),
            ],
        } => "01030874746c2d746573740206757365722d310109636f6e766572746564000000000000f03f06757365722d32010a6c6174656e63795f6d730000000000002940",
        get: experiment::Request::Get { name: "ttl-test".into() } => "01040874746c2d74657374",
        analyse: experiment::Request::Analyse { name: "ttl-test".into() } => "01050874746c2d74657374",
        pause: experiment::Request::Pause { name: "ttl-test".into(), paused: true } => "01060874746c2d7465737401",
        retire: experiment::Request::Retire { name: "ttl-test".into(), arm: "long-ttl".into() } => "01070874746c2d74657374086c6f6e672d74746c",
        delete: experiment::Request::Delete { name: "ttl-test".into() } => "01080874746c2d74657374",
        index_put: experiment::Request::IndexPut { name: "ttl-test".into(), target: Some(target()) } => "01090874746c2d7465737401036c6c6d052f63686174",
        index_delete: experiment::Request::IndexDelete { name: "ttl-test".into() } => "010a0874746c2d74657374",
        index_list: experiment::Request::IndexList => "010b",
    }}

    goldens! { experiment_response: experiment::Response => Reply<experiment::Response> = Ok; {
        defined: experiment::Response::Defined { created: true } => "01000001",
        assigned: experiment::Response::Assigned {
            variant: "long-ttl".into(),
            params: "{\"cache_ttl_s\":86400}".into(),
            new: true,
            counted: false,
        } => "010001086c6f6e672d74746c157b2263616368655f74746c5f73223a38363430307d0100",
        recorded: experiment::Response::Recorded {
            variant: "control".into(),
            counted: true,
            ignored: vec!["clicks".into()],
        } => "01000207636f6e74726f6c010106636c69636b73",
        recorded_many: experiment::Response::RecordedMany { counted: 9, skipped: 1 } => "0100030901",
        deleted: experiment::Response::Deleted { existed: false } => "01000400",
        state: experiment::Response::State(Box::new(experiment_state())) => "0100050874746c2d746573740273310207636f6e74726f6c8827027b7d00086c6f6e672d74746c8827157b2263616368655f74746c5f73223a38363430307d0164904e09636f6e7665727465640000010a6c6174656e63795f6d73010101036c6c6d052f636861740132012800000000000028400000000000002840012801086c6f6e672d74746c32000109636f6e7665727465642801000000000000d03f01000000000000c03f000000000000d83f01000000000000b03f000000000000f83f000000000000c03f000000000000a0bf000000000000c43f000000000000e03f01000000000000e83f02086c6f6e672d74746c146c6174656e63795f6d7320726567726573736564030c0180a0abfef9620200000108726f6c6c6261636b01086c6f6e672d74746cc0efcffef962146c6174656e63795f6d7320726567726573736564",
        index: experiment::Response::Index(vec![
            experiment::IndexEntry { name: "ttl-test".into(), target: Some(target()), deleted: false },
            experiment::IndexEntry { name: "old".into(), target: None, deleted: true },
        ]) => "010006020874746c2d7465737401036c6c6d052f6368617400036f6c640001",
    }}

    goldens! { ratelimit_request: ratelimit::Request => ratelimit::Request = |v| v; {
        take: ratelimit::Request::Take {
            policy_name: "default".into(),
            key: "tenant-1".into(),
            cost: 1,
        } => "01000764656661756c740874656e616e742d3101",
        peek: ratelimit::Request::Peek {
            policy_name: "default".into(),
            key: "tenant-1".into(),
            cost: 300,
        } => "01010764656661756c740874656e616e742d31ac02",
        reset: ratelimit::Request::Reset { policy_name: "default".into(), key: "tenant-1".into() } => "01020764656661756c740874656e616e742d31",
        stats: ratelimit::Request::Stats => "0103",
        put_policy: ratelimit::Request::PutPolicy {
            name: "burst".into(),
            policy: Some(policy_window()),
            version: Some(1_700_000_000_000),
        } => "010405627572737401013ce0d403010180a0abfef962",
        list_policies: ratelimit::Request::ListPolicies => "0105",
        create_key: ratelimit::Request::CreateKey(Box::new(key_record())) => "0106146b65795f30313233343536373839616263646566406162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616201067365617263680100640ae8070001904e0001c096b1020001066770742d346f0001047465616d0673656172636880a0abfef96200",
        get_key: ratelimit::Request::GetKey { id: KEY_ID.into() } => "0107146b65795f30313233343536373839616263646566",
        list_keys: ratelimit::Request::ListKeys => "0108",
        revoke_key: ratelimit::Request::RevokeKey { id: KEY_ID.into() } => "0109146b65795f30313233343536373839616263646566",
        admit: ratelimit::Request::Admit {
            id: KEY_ID.into(),
            hash: "ab".repeat(32),
            ask: keys::Admission { model: "gpt-4o".into(), group: "openai".into(), tokens: 300 },
        } => "010a146b65795f303132333435363738396162636465664061626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162616261626162066770742d346f066f70656e6169ac02",
        settle_key: ratelimit::Request::SettleKey {
            id: KEY_ID.into(),
            reservation: 7,
            tokens: Some(120),
            cost_micro_usd: 450,
        } => "010b146b65795f30313233343536373839616263646566070178c203",
    }}

    goldens! { ratelimit_response: ratelimit::Response => Reply<ratelimit::Response> = Ok; {
        decision: ratelimit::Response::Decision {
            decision: sample_decision(),
            shadow_denied: true,
            policy: policy_bucket(),
        } => "0100000164636400010100640ae80700",
        reset: ratelimit::Response::Reset { existed: true } => "01000101",
        stats: ratelimit::Response::Stats(ratelimit::Stats {
            buckets: 3,
            windows: 2,
            allowed: 100,
            denied: 5,
            shadow_denied: 1,
            collected: 7,
            policies: vec![ratelimit::PolicyCounters {
                policy: "default".into(),
                allowed: 100,
                denied: 5,
                shadow_denied: 1,
            }],
            object: object_stats(),
        }) => "010002030264050107010764656661756c746405010c0180a0abfef96202",
        policy_stored: ratelimit::Response::PolicyStored { version: 1_700_000_000_000 } => "01000380a0abfef962",
        policies: ratelimit::Response::Policies(vec![
            ratelimit::PolicyEntry {
                name: "default".into(),
                policy: policy_bucket(),
                source: ratelimit::PolicySource::Config,
                version: 0,
            },
            ratelimit::PolicyEntry {
                name: "burst".into(),
                policy: policy_window(),
                source: ratelimit::PolicySource::Admin,
                version: 3,
            },
        ]) => "010004020764656661756c7400640ae807000000056275727374013ce0d403010106",
        key: ratelimit::Response::Key(Box::new(key_view())) => "010005146b65795f3031323334353637383961626364656601067365617263680100640ae8070001904e0001c096b1020001066770742d346f0001047465616d0673656172636880a0abfef96201c0c9b2fef962788407c203aa0b0109f006aa0b",
        keys: ratelimit::Response::Keys(vec![key_view()]) => "01000601146b65795f3031323334353637383961626364656601067365617263680100640ae8070001904e0001c096b1020001066770742d346f0001047465616d0673656172636880a0abfef96201c0c9b2fef962788407c203aa0b0109f006aa0b",
        admission: ratelimit::Response::Admission(Box::new(Ok(keys::Admitted {
            reservation: 7,
            name: Some("search".into()),
            limits: vec![token_limit()],
            groups: vec!["openai".into()],
            budget_day_micro_usd: Some(5_000_000),
            budget_month_micro_usd: None,
        }))) => "010007000701067365617263680106746f6b656e73904e3ce44b1e01066f70656e616901c096b10200",
        key_settled: ratelimit::Response::KeySettled { settled: true } => "01000801",
    }}

    #[test]
    fn an_admission_in_the_first_layout_still_decodes_without_budgets() {
        // Bytes of an object that predates the budgets in `Admitted`.
        let old = unhex("010007000701067365617263680106746f6b656e73904e3ce44b1e01066f70656e6169");
        let r: Reply<ratelimit::Response> = protocol::decode(&old).expect(ROLLOUT);
        let Ok(ratelimit::Response::Admission(a)) = r else {
            panic!("{r:?}")
        };
        let a = (*a).expect("an admission");
        assert_eq!((a.reservation, a.groups.len()), (7, 1));
        assert_eq!(
            (a.budget_day_micro_usd, a.budget_month_micro_usd),
            (None, None)
        );
    }

    #[test]
    fn a_refused_admission() {
        check(
            "ratelimit_response::refused",
            &Reply::<ratelimit::Response>::Ok(ratelimit::Response::Admission(Box::new(Err(
                keys::Refusal {
                    status: 429,
                    kind: "token-limit".into(),
                    detail: "over".into(),
                    retry_after_s: Some(30),
                    limits: vec![token_limit()],
                },
            )))),
            "01000701ad030b746f6b656e2d6c696d6974046f766572011e0106746f6b656e73904e3ce44b1e",
        );
    }

    goldens! { wire_error: GatewayError => Reply<()> = wire_err; {
        bad_request: GatewayError::bad_request("invalid-cost", "cost must be 1..=1000") => "010190030c696e76616c69642d636f737415636f7374206d75737420626520312e2e3d3130303000",
        unauthorized: GatewayError::Unauthorized => "010191030c756e617574686f72697a6564367468697320726f757465206e656564732060417574686f72697a6174696f6e3a20426561726572203c41444d494e5f544f4b454e3e6000",
        forbidden: GatewayError::Forbidden("invalid admin token".into()) => "0101930309666f7262696464656e13696e76616c69642061646d696e20746f6b656e00",
        not_found: GatewayError::NotFound("no such experiment".into()) => "01019403096e6f742d666f756e64126e6f2073756368206578706572696d656e7400",
        method_not_allowed: GatewayError::MethodNotAllowed {
            method: "PATCH".into(),
            allowed: "GET, POST".into(),
        } => "01019503126d6574686f642d6e6f742d616c6c6f776564346d6574686f64205041544348206973206e6f7420616c6c6f77656420686572653b20616c6c6f7765643a204745542c20504f535402055041544348094745542c20504f5354",
        payload_too_large: GatewayError::PayloadTooLarge { limit: 1_048_576 } => "01019d03117061796c6f61642d746f6f2d6c617267652f7265717565737420626f6479206578636565647320746865206c696d6974206f66203130343835373620627974657301808040",
        too_many_requests: GatewayError::TooManyRequests("rate limited".into()) => "0101ad030c726174652d6c696d697465640c72617465206c696d6974656400",
        conflict: GatewayError::Conflict("exists".into()) => "0101990308636f6e666c6963740665786973747300",
        unavailable: GatewayError::Unavailable("retry later".into()) => "0101f7030b756e617661696c61626c650b7265747279206c6174657200",
        bad_gateway: GatewayError::BadGateway("every provider failed".into()) => "0101f6030b6261642d676174657761791565766572792070726f7669646572206661696c656400",
        gateway_timeout: GatewayError::GatewayTimeout("every provider timed out".into()) => "0101f8030f676174657761792d74696d656f75741865766572792070726f76696465722074696d6564206f757400",
        internal: GatewayError::Internal("storage: boom".into()) => "0101f40308696e7465726e616c0d73746f726167653a20626f6f6d00",
        refused: GatewayError::Refused { status: 429, kind: "budget-exceeded".into(), detail: "spent".into() } => "0101ad030f6275646765742d6578636565646564057370656e7400",
    }}

    goldens! { providers_request: providers::Request => providers::Request = |v| v; {
        pick: providers::Request::Pick {
            group: "demo".into(),
            exclude: vec!["gamma".into()],
            prefer: prefer(),
        } => "01000464656d6f010567616d6d610104626574610101",
        report: providers::Request::Report {
            group: "demo".into(),
            provider: "alpha".into(),
            outcome: sample_outcome(),
        } => "01010464656d6f05616c706861007801b0ea010c220101",
        configure: providers::Request::Configure {
            group: "demo".into(),
            providers: vec![provider_spec()],
            strategy: Strategy::Cost,
        } => "01020464656d6f0105616c7068611b687474703a2f2f3132372e302e302e313a393130302f616c70686103072f6865616c7468d00f0109414c5048415f4b4559649601d80401882780b8992903",
        report_many: providers::Request::ReportMany {
            group: "demo".into(),
            outcomes: vec![("alpha".into(), sample_outcome())],
        } => "01030464656d6f0105616c706861007801b0ea010c220101",
        status: providers::Request::Status { group: "demo".into() } => "01040464656d6f",
        pick_ranked: providers::Request::PickRanked {
            group: "demo".into(),
            prefer: prefer(),
            max: 3,
        } => "01050464656d6f010462657461010103",
        settle: providers::Request::Settle {
            group: "demo".into(),
            outcomes: vec![("alpha".into(), sample_outcome())],
            released: vec![("beta".into(), false), ("gamma".into(), true)],
        } => "01060464656d6f0105616c706861007801b0ea010c220101020462657461000567616d6d6101",
    }}

    goldens! { providers_response: providers::Response => Reply<providers::Response> = Ok; {
        picked: providers::Response::Picked(sample_pick(false)) => "01000005616c7068611b687474703a2f2f3132372e302e302e313a393130302f616c70686100d00f0109414c5048415f4b4559649601d804",
        reported: providers::Response::Reported => "010001",
        configured: providers::Response::Configured { providers: 3 } => "01000203",
        status: providers::Response::Status(providers::GroupStatus {
            group: "demo".into(),
            strategy: Strategy::Weighted,
            providers: vec![providers::ProviderStatus {
                spec: provider_spec(),
                healthy: true,
                health: ProviderHealth::default(),
                budget_left_micro_usd: Some(4900),
                circuit: Circuit::HalfOpen,
                latency_p50_ms: Some(12.5),
                latency_p95_ms: None,
                latency_p99_ms: Some(99.0),
            }],
            object: object_stats(),
        }) => "0100030464656d6f000105616c7068611b687474703a2f2f3132372e302e302e313a393130302f616c70686103072f6865616c7468d00f0109414c5048415f4b4559649601d80401882780b89929010000000000000000000000000000000000000000000000000000000000000000000000000001a4260201000000000000294000010000000000c058400c0180a0abfef96202",
        candidates: providers::Response::Candidates {
            picks: vec![sample_pick(false), sample_pick(true)],
            budget_resets_in_ms: Some(60_000),
        } => "0100040205616c7068611b687474703a2f2f3132372e302e302e313a393130302f616c70686100d00f0109414c5048415f4b4559649601d80405616c7068611b687474703a2f2f3132372e302e302e313a393130302f616c70686101d00f0109414c5048415f4b4559649601d80401e0d403",
    }}

    /// The error layout objects wrote before `WireError::extra` was appended (status, slug,
    /// detail): a newer worker must still read it while older objects are being replaced.
    #[test]
    fn wire_error_first_layout_still_decodes() {
        for (pinned, raised) in [
            (
                "010190030c696e76616c69642d636f737415636f7374206d75737420626520312e2e3d31303030",
                GatewayError::bad_request("invalid-cost", "cost must be 1..=1000"),
            ),
            (
                "01019d03117061796c6f61642d746f6f2d6c617267652f7265717565737420626f6479206578636565647320746865206c696d6974206f662031303438353736206279746573",
                GatewayError::PayloadTooLarge { limit: 1_048_576 },
            ),
        ] {
            let reply: Reply<()> = protocol::decode_reply(&unhex(pinned)).unwrap_or_else(|e| {
                panic!("{raised:?} in the first layout no longer decodes ({e}): {ROLLOUT}")
            });
            match reply {
                Err(wire) => assert_eq!(wire.into_error(), raised, "{ROLLOUT}"),
                Ok(()) => panic!("{raised:?} decoded as Ok: {ROLLOUT}"),
            }
        }
    }
}
