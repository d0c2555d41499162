//! Metric emission from the front worker: each proxied request's [`Record`] joins an
//! isolate-local batch that is flushed to one aggregator shard, off the response path.
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

use gateway_core::observe::Record;
use gateway_core::protocol::aggregator::{Request as ARequest, Response as AResponse};
use gateway_core::shard::shard_name;
use worker::{Context, Delay, Env};

use crate::stub::{binding, call};

/// How long a batch collects records before it is sent.
pub const FLUSH_DELAY_MS: u64 = 100;
/// Largest batch.
pub const MAX_BATCH: usize = 500;

thread_local! {
    static BATCH: RefCell<Vec<Record>> = const { RefCell::new(Vec::new()) };
    static SCHEDULED: Cell<bool> = const { Cell::new(false) };
    static FLUSHES: Cell<u64> = const { Cell::new(0) };
    /// A random id for this isolate: batch ids are `{isolate}-{n}`, unique without coordination.
    static ISOLATE: u64 = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
}

async fn send(env: &Env, shards: u32, request_id: &str, records: Vec<Record>) {
    if records.is_empty() {
        return;
    }
    let object = shard_name("aggregator", request_id, shards);
    // One retry; the batch id lets the shard recognise a retried delivery that had in fact
    // arrived, so a batch is counted once. Metrics never fail or slow a request.
    let n = FLUSHES.with(|f| {
        let n = f.get();
        f.set(n + 1);
        n
    });
    let msg = ARequest::Record {
        batch: format!("{:x}-{n}", ISOLATE.with(|i| *i)),
        records,
    };
    for _ in 0..2 {
        if let Ok(AResponse::Ingested { .. }) = call(env, binding::AGGREGATOR, &object, &msg).await
        {
            return;
        }
    }
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
    let full = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        b.push(record);
        b.len() >= MAX_BATCH
    });
    let (env, id) = (env.clone(), request_id.to_string());
    schedule_flush(ctx, &SCHEDULED, full, FLUSH_DELAY_MS, move || async move {
        let records = BATCH.with(|b| std::mem::take(&mut *b.borrow_mut()));
        send(&env, shards, &id, records).await;
    });
}
