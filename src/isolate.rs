//! Everything a worker isolate keeps between requests, in one place: the metric-record batch,
//! the experiment-outcome batch, and the caches of experiment targets and cohorts; and the
//! [`Defer`] seam through which their flushes run off the response path. (The parsed
//! configuration is cached in [`crate::config`].)
//!
//! **Records.** Each proxied request's [`Record`] joins an isolate-local batch that is flushed
//! to one aggregator shard, off the response path. Each settled AI request's [`SpendRecord`]
//! ([`emit_spend`]) joins the same batch: a batch with spend is sent as `Ingest`, one without
//! as `Record` (as before spend existed).
//!
//! The first record of a batch schedules the flush with `ctx.wait_until` after
//! [`FLUSH_DELAY_MS`]; records that arrive meanwhile ride along (the scheduled flush keeps the
//! isolate alive until it has delivered them). A batch that reaches [`MAX_BATCH`] records is
//! flushed at once. The shard is chosen per batch by the shard function over the flushing
//! request's id, so batches spread over every shard and no single object sees every request.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use std::collections::HashMap;

use futures::future::join_all;
use gateway_core::config::Config;
use gateway_core::experiment::{select, ArmParams, Target};
use gateway_core::observe::spend::SpendRecord;
use gateway_core::observe::Record;
use gateway_core::UnixMillis;
use worker::{Context, Delay, Env};

use crate::clients::{Aggregator, Experiments};
use crate::routes::now;

/// How long a batch collects records before it is sent.
pub const FLUSH_DELAY_MS: u64 = 100;
/// Largest batch.
pub const MAX_BATCH: usize = 500;

thread_local! {
    static BATCH: RefCell<Vec<Record>> = const { RefCell::new(Vec::new()) };
    static SPEND: RefCell<Vec<SpendRecord>> = const { RefCell::new(Vec::new()) };
    static SCHEDULED: Cell<bool> = const { Cell::new(false) };
    static FLUSHES: Cell<u64> = const { Cell::new(0) };
    /// A random id for this isolate: batch ids are `{isolate}-{n}`, unique without coordination.
    static ISOLATE: u64 = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
}

async fn send(
    env: &Env,
    shards: u32,
    request_id: &str,
    records: Vec<Record>,
    spend: Vec<SpendRecord>,
) {
    if records.is_empty() && spend.is_empty() {
        return;
    }
    // One retry; the batch id lets the shard recognise a retried delivery that had in fact
    // arrived, so a batch is counted once. Metrics never fail or slow a request.
    let n = FLUSHES.with(|f| {
        let n = f.get();
        f.set(n + 1);
        n
    });
    let batch = format!("{:x}-{n}", ISOLATE.with(|i| *i));
    let client = Aggregator::new(env, shards);
    if spend.is_empty() {
        let _ = client.record(request_id, batch, records, 2).await;
    } else {
        // `ingest` makes the second try itself (as `Record` when `Ingest` failed).
        let _ = client.ingest(request_id, batch, records, spend).await;
    }
}

/// Whether the batch is full (records and spend records together).
fn batch_full() -> bool {
    BATCH.with(|b| b.borrow().len()) + SPEND.with(|s| s.borrow().len()) >= MAX_BATCH
}

fn schedule(ctx: &dyn Defer, env: &Env, shards: u32, request_id: &str) {
    let (env, id) = (env.clone(), request_id.to_string());
    schedule_flush(
        ctx,
        &SCHEDULED,
        batch_full(),
        FLUSH_DELAY_MS,
        move || async move {
            let records = BATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
            let spend = SPEND.with(|s| std::mem::take(&mut *s.borrow_mut()));
            send(&env, shards, &id, records, spend).await;
        },
    );
}

/// A task run off the response path.
pub type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Where off-the-response-path work goes: the request's `ctx.wait_until`, or an [`Inline`]
/// list awaited by a task that is already kept alive (a streamed answer's settlement, which
/// runs after the handler returned and holds no `Context`).
pub trait Defer {
    /// Runs `task` after the response, keeping the isolate alive until it is done.
    fn defer(&self, task: Task);
}

impl Defer for Context {
    fn defer(&self, task: Task) {
        self.wait_until(task);
    }
}

/// Deferred work collected to be awaited in place (see [`Defer`]).
#[derive(Default)]
pub struct Inline(RefCell<Vec<Task>>);

impl Defer for Inline {
    fn defer(&self, task: Task) {
        self.0.borrow_mut().push(task);
    }
}

impl Inline {
    /// Awaits everything deferred so far.
    pub async fn run(self) {
        futures::future::join_all(self.0.into_inner()).await;
    }
}

/// The batching both record and experiment-outcome queues use: a full batch is flushed now; the
/// first item of a batch schedules its flush `delay_ms` later (the flag remembers that one is
/// scheduled, and the scheduled `wait_until` keeps the isolate alive until it has delivered).
pub fn schedule_flush<F>(
    ctx: &dyn Defer,
    scheduled: &'static std::thread::LocalKey<Cell<bool>>,
    full: bool,
    delay_ms: u64,
    flush: impl FnOnce() -> F + 'static,
) where
    F: std::future::Future<Output = ()> + 'static,
{
    if full {
        ctx.defer(Box::pin(flush()));
        return;
    }
    if scheduled.with(|s| s.replace(true)) {
        return;
    }
    ctx.defer(Box::pin(async move {
        Delay::from(Duration::from_millis(delay_ms)).await;
        scheduled.with(|s| s.set(false));
        flush().await;
    }));
}

/// Queues a record; a batch goes to one shard when full or [`FLUSH_DELAY_MS`] after it began.
pub fn emit(ctx: &dyn Defer, env: &Env, shards: u32, request_id: &str, record: Record) {
    BATCH.with(|b| b.borrow_mut().push(record));
    schedule(ctx, env, shards, request_id);
}

/// Queues a settled AI request's spend record in the same batch as the records.
pub fn emit_spend(ctx: &dyn Defer, env: &Env, shards: u32, request_id: &str, spend: SpendRecord) {
    SPEND.with(|s| s.borrow_mut().push(spend));
    schedule(ctx, env, shards, request_id);
}

/// How long a worker isolate reuses the list of proxy targets before asking the index again
/// (an experiment created or deleted by an admin reaches proxy traffic within this time).
pub const TARGETS_TTL_MS: i64 = 10_000;

/// Experiments with a proxy target, as (name, target).
type Targets = Vec<(String, Target)>;

thread_local! {
    /// This isolate's copy of the proxy targets and when it was fetched.
    static TARGETS: RefCell<Option<(UnixMillis, Targets)>> = const { RefCell::new(None) };
}

/// Drops this isolate's copy of the proxy targets (after an admin change through it).
pub fn forget_targets() {
    TARGETS.with(|t| *t.borrow_mut() = None);
}

/// The experiment that applies to a proxied request to `group` and `path`, if any.
pub async fn target_for(env: &Env, cfg: &Config, group: &str, path: &str) -> Option<String> {
    let at = now();
    let cached = TARGETS.with(|t| {
        t.borrow()
            .as_ref()
            .filter(|(fetched, _)| at.since(*fetched) < TARGETS_TTL_MS)
            .map(|(_, v)| select(v, group, path).map(str::to_string))
    });
    if let Some(hit) = cached {
        return hit;
    }
    let targets: Vec<(String, Target)> = match Experiments::new(env).catalogue(cfg).await {
        Ok(all) => all
            .into_iter()
            .filter_map(|(n, t)| t.map(|t| (n, t)))
            .collect(),
        // The index is unreachable: configured experiments still apply.
        Err(_) => cfg
            .experiments
            .iter()
            .filter_map(|(n, d)| d.target.clone().map(|t| (n.clone(), t)))
            .collect(),
    };
    let chosen = select(&targets, group, path).map(str::to_string);
    TARGETS.with(|t| *t.borrow_mut() = Some((at, targets)));
    chosen
}

/// A unit's cohort on the proxy path.
#[derive(Debug, Clone)]
pub struct Cohort {
    /// Experiment name.
    pub experiment: String,
    /// The arm whose parameters apply.
    pub variant: String,
    /// Those parameters, as the gateway applies them.
    pub params: ArmParams,
    /// Whether outcomes are recorded.
    pub counted: bool,
}

/// How long an isolate reuses a unit's cohort before asking the experiment again (a promotion,
/// rollback or pause reaches a returning caller within this time).
pub const COHORT_TTL_MS: i64 = 5_000;
/// Cohorts an isolate remembers (the cache is cleared when full).
const COHORT_CACHE_MAX: usize = 10_000;
/// Outcomes wait this long to be sent together.
const OUTCOME_FLUSH_MS: u64 = 100;
/// Largest outcome batch.
const OUTCOME_BATCH_MAX: usize = 500;

/// Outcomes waiting for delivery: experiment → (unit, values).
type Outcomes = HashMap<String, Vec<(String, Vec<(String, f64)>)>>;

thread_local! {
    static COHORTS: RefCell<HashMap<(String, String), (UnixMillis, Cohort)>> =
        RefCell::new(HashMap::new());
    static OUTCOMES: RefCell<Outcomes> = RefCell::new(Outcomes::new());
    static FLUSH_SCHEDULED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Assigns `unit` in `experiment` for the proxy path; `None` on any failure (an experiment
/// never fails a proxied request). Answers are reused for [`COHORT_TTL_MS`] per isolate:
/// assignments are sticky, so only a status change can make a cached answer stale.
pub async fn cohort(env: &Env, experiment: &str, unit: &str) -> Option<Cohort> {
    let key = (experiment.to_string(), unit.to_string());
    let at = now();
    let cached = COHORTS.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|(t, _)| at.since(*t) < COHORT_TTL_MS)
            .map(|(_, c)| c.clone())
    });
    if cached.is_some() {
        return cached;
    }
    let a = Experiments::new(env).assign(experiment, unit).await.ok()?;
    let fresh = Cohort {
        experiment: experiment.into(),
        variant: a.variant,
        params: ArmParams::parse(&a.params).unwrap_or_default(),
        counted: a.counted,
    };
    COHORTS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= COHORT_CACHE_MAX {
            c.clear();
        }
        c.insert(key, (at, fresh.clone()));
    });
    Some(fresh)
}

async fn flush_outcomes(env: &Env) {
    let batches = OUTCOMES.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let client = Experiments::new(env);
    let sends = batches.into_iter().map(|(name, events)| {
        let client = &client;
        async move {
            let _ = client.events(&name, events).await;
        }
    });
    join_all(sends).await;
}

/// Queues a proxied request's outcome for its cohort. Outcomes are sent per experiment in
/// batches, [`OUTCOME_FLUSH_MS`] after the first one (or at [`OUTCOME_BATCH_MAX`]), through
/// `ctx.wait_until`: one object write per batch instead of one per request.
pub fn record_outcome(
    ctx: &dyn Defer,
    env: &Env,
    experiment: &str,
    unit: &str,
    values: Vec<(String, f64)>,
) {
    let full = OUTCOMES.with(|o| {
        let mut o = o.borrow_mut();
        let list = o.entry(experiment.to_string()).or_default();
        list.push((unit.to_string(), values));
        list.len() >= OUTCOME_BATCH_MAX
    });
    let env = env.clone();
    schedule_flush(
        ctx,
        &FLUSH_SCHEDULED,
        full,
        OUTCOME_FLUSH_MS,
        move || async move {
            flush_outcomes(&env).await;
        },
    );
}
