//! [`Ingest`]: one metric shard (`aggregator:{n}`) as a state machine, every rule the
//! Durable Object applies to its ingest side, free of storage. Also [`Role`]: which of the two
//! machines (this one or [`super::root::Root`]) answers a message.
//!
//! The adapter loads the stored rows once ([`Stored`] → [`Ingest::load`]). Per request it reads
//! whether the request's batch id was seen ([`Ingest::batch`]: only a valid id is looked up),
//! makes one call ([`Ingest::handle`]) and persists the returned [`Write`]s in the same
//! synchronous block, so the input gate makes read, decision and writes one atomic step.
//!
//! - **Batches.** A batch id is 1 to [`MAX_BATCH_ID`] bytes (else 400 `invalid-event`), and
//!   every record is validated before anything is counted. A batch id seen in the last
//!   [`BATCH_MEMORY_MS`] is acknowledged as a duplicate without being counted again (a retried
//!   delivery); a new one is merged into the fine-bucket windows ([`Shard::ingest`]: a record
//!   for sealed time counts in the first open bucket, as `late`) and its id remembered.
//! - **Spend.** `Ingest` is `Record` with the batch's [`SpendRecord`]s: the same validation
//!   (every spend record too), the same batch-id dedupe, and spend windows bucketed and sealed
//!   exactly like the metric windows ([`ShardSpend`], same `sealed_before`).
//! - **Collect.** Seals what ended `grace_ms` ago and answers the sealed windows at or after
//!   the root's cursor plus the open ones (which the root uses for alerts, never merges).
//! - **Alarm.** Seals, drops windows past retention and batch ids older than
//!   [`BATCH_MEMORY_MS`], asks for the root to be woken (idempotent: the root's alarm runs
//!   forever once woken) and re-arms while windows remain.

use super::series::Shard;
use super::spend::{ShardSpend, Spend, SpendRecord};
use super::Agg;
use crate::protocol::aggregator::{Collected, Request, Response as Reply, Stats, Windows};
use crate::{GatewayError, UnixMillis};

/// Batch ids are remembered this long (a retried delivery arrives well within it).
pub const BATCH_MEMORY_MS: i64 = 600_000;
/// Longest batch id, in bytes.
pub const MAX_BATCH_ID: usize = 128;

/// Which machine an aggregator object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An ingest shard ([`Ingest`]).
    Shard,
    /// The root ([`super::root::Root`]).
    Root,
}

impl Role {
    /// The stored role: `root`, else (absent or `shard`) a shard.
    pub fn parse(stored: Option<&str>) -> Role {
        if stored == Some("root") {
            Role::Root
        } else {
            Role::Shard
        }
    }

    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Shard => "shard",
            Role::Root => "root",
        }
    }

    /// The role a message makes its object take (stored before the message is handled):
    /// `Record` and `Ingest` make a shard; `Run`, `Wake`, `Summary`, `SpendSummary` and
    /// `Points` make the root.
    pub fn claimed_by(msg: &Request) -> Option<Role> {
        match msg {
            Request::Record { .. } | Request::Ingest { .. } => Some(Role::Shard),
            Request::Run
            | Request::Wake
            | Request::Summary { .. }
            | Request::SpendSummary { .. }
            | Request::Points { .. } => Some(Role::Root),
            Request::Collect { .. }
            | Request::CollectAll { .. }
            | Request::Stats
            | Request::Alerts
            | Request::Report => None,
        }
    }

    /// The machine that answers `msg` in an object whose role is `self`: `Record`, `Ingest`,
    /// `Collect` and `CollectAll` are a shard's, `Stats` follows the role, everything else is
    /// the root's.
    pub fn answering(self, msg: &Request) -> Role {
        match msg {
            Request::Record { .. }
            | Request::Ingest { .. }
            | Request::Collect { .. }
            | Request::CollectAll { .. } => Role::Shard,
            Request::Stats => self,
            _ => Role::Root,
        }
    }
}

/// A shard counter kept in storage (added to, never set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Records accepted.
    Records,
    /// Of which counted late.
    Late,
    /// Batches acknowledged as duplicates.
    DuplicateBatches,
}

/// The shard's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records accepted.
    pub records: u64,
    /// Records counted in a later bucket because theirs had sealed.
    pub late: u64,
    /// Batches acknowledged as duplicates.
    pub duplicate_batches: u64,
}

/// What a shard has stored.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Everything before this is sealed (0 when never sealed).
    pub sealed_before: UnixMillis,
    /// Windows by bucket start, as postcard bytes.
    pub windows: Vec<(UnixMillis, Vec<u8>)>,
    /// Spend windows by bucket start, as postcard bytes.
    pub spend_windows: Vec<(UnixMillis, Vec<u8>)>,
    /// The counters.
    pub counters: Counters,
}

/// A storage change, applied by the adapter in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Upsert the window starting at `at`.
    Window {
        /// Bucket start.
        at: UnixMillis,
        /// Its aggregate.
        agg: Agg,
    },
    /// Upsert the spend window starting at `at`.
    SpendWindow {
        /// Bucket start.
        at: UnixMillis,
        /// Its spend.
        spend: Spend,
    },
    /// The seal moved.
    SealedBefore(UnixMillis),
    /// Remember batch `id`, received at `at`.
    Batch {
        /// Batch id.
        id: String,
        /// When it arrived.
        at: UnixMillis,
    },
    /// Add `delta` to a counter.
    Count(Counter, u64),
    /// Delete windows and spend windows starting before this.
    PruneWindows(UnixMillis),
    /// Forget batch ids received before this.
    PruneBatches(UnixMillis),
}

/// What the shard's alarm asks of the adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// Storage changes, in order.
    pub writes: Vec<Write>,
    /// Wake the root (always: waking it is idempotent).
    pub wake_root: bool,
    /// Run the alarm again (while windows remain).
    pub rearm: bool,
}

/// One ingest shard.
#[derive(Debug, Clone)]
pub struct Ingest {
    shard: Shard,
    spend: ShardSpend,
    grace_ms: i64,
    counters: Counters,
}

impl Ingest {
    /// Builds the shard from storage: fine buckets of `fine_ms`, sealing `grace_ms` after a
    /// bucket ends. A stored window that no longer decodes (an older layout) is dropped rather
    /// than failing every request.
    pub fn load(fine_ms: i64, grace_ms: i64, stored: Stored) -> Ingest {
        let mut shard = Shard::new(fine_ms, stored.sealed_before);
        shard.windows = stored
            .windows
            .into_iter()
            .filter_map(|(at, bytes)| postcard::from_bytes::<Agg>(&bytes).ok().map(|a| (at, a)))
            .collect();
        let spend = ShardSpend {
            windows: stored
                .spend_windows
                .into_iter()
                .filter_map(|(at, b)| postcard::from_bytes::<Spend>(&b).ok().map(|s| (at, s)))
                .collect(),
        };
        Ingest {
            shard,
            spend,
            grace_ms,
            counters: stored.counters,
        }
    }

    /// The batch id whose "seen" flag [`Ingest::handle`] needs for `msg`: only a valid one
    /// (an invalid id is refused without a look-up).
    pub fn batch(msg: &Request) -> Option<&str> {
        match msg {
            Request::Record { batch, .. } | Request::Ingest { batch, .. } if valid_batch(batch) => {
                Some(batch)
            }
            _ => None,
        }
    }

    /// The shard's windows and seal.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The shard's spend windows.
    pub fn spend(&self) -> &ShardSpend {
        &self.spend
    }

    /// Handles `Record`, `Ingest`, `Collect`, `CollectAll` or `Stats` (`seen`: the batch id of a
    /// `Record` or `Ingest` was stored
    /// within [`BATCH_MEMORY_MS`]). Returns the reply, the storage changes and whether the
    /// alarm must be armed. On an error nothing changed. A [`Reply::Stats`] carries default
    /// object stats for the adapter to fill in. Other messages are the root's (an internal
    /// error).
    pub fn handle(
        &mut self,
        msg: Request,
        seen: bool,
        now: UnixMillis,
    ) -> Result<(Reply, Vec<Write>, bool), GatewayError> {
        match msg {
            Request::Record { batch, records } => self.record(batch, records, vec![], seen, now),
            Request::Ingest {
                batch,
                records,
                spend,
            } => self.record(batch, records, spend, seen, now),
            Request::Collect { since } => {
                let writes = self.seal(now);
                Ok((Reply::Windows(self.windows(since)), writes, false))
            }
            Request::CollectAll { since } => {
                let writes = self.seal(now);
                let windows = self.windows(since);
                let sealed = self.shard.sealed_before;
                let c = Collected {
                    windows,
                    spend_sealed: self.spend.sealed(since, sealed),
                    spend_open: self.spend.live_since(sealed.max(since)),
                };
                Ok((Reply::Collected(c), writes, false))
            }
            Request::Stats => Ok((Reply::Stats(self.stats()), Vec::new(), false)),
            _ => Err(GatewayError::Internal(
                "a root request reached the shard machine".into(),
            )),
        }
    }

    fn windows(&self, since: UnixMillis) -> Windows {
        let s = &self.shard;
        Windows {
            sealed: s.sealed_since(since),
            open: s.live_since(s.sealed_before.max(since)),
            sealed_before: s.sealed_before,
        }
    }

    /// A batch of records and spend records: validated whole, deduplicated by id.
    fn record(
        &mut self,
        batch: String,
        records: Vec<super::Record>,
        spend: Vec<SpendRecord>,
        seen: bool,
        now: UnixMillis,
    ) -> Result<(Reply, Vec<Write>, bool), GatewayError> {
        if !valid_batch(&batch) {
            return Err(GatewayError::bad_request("invalid-event", "bad batch id"));
        }
        for r in &records {
            r.validate()?;
        }
        for r in &spend {
            r.validate()?;
        }
        if seen {
            self.counters.duplicate_batches += 1;
            let reply = Reply::Ingested {
                accepted: 0,
                late: 0,
                duplicate: true,
            };
            return Ok((
                reply,
                vec![Write::Count(Counter::DuplicateBatches, 1)],
                false,
            ));
        }
        let (touched, late) = self.shard.ingest(&records);
        let mut writes: Vec<Write> = touched
            .iter()
            .filter_map(|at| {
                let agg = self.shard.windows.get(at)?.clone();
                Some(Write::Window { at: *at, agg })
            })
            .collect();
        let fine_ms = self.shard.fine_ms;
        for at in self.spend.ingest(&spend, fine_ms, self.shard.sealed_before) {
            if let Some(s) = self.spend.windows.get(&at) {
                writes.push(Write::SpendWindow {
                    at,
                    spend: s.clone(),
                });
            }
        }
        let accepted = records.len() as u64;
        self.counters.records += accepted;
        self.counters.late += u64::from(late);
        writes.push(Write::Batch { id: batch, at: now });
        writes.push(Write::Count(Counter::Records, accepted));
        writes.push(Write::Count(Counter::Late, u64::from(late)));
        let reply = Reply::Ingested {
            accepted: records.len() as u32,
            late,
            duplicate: false,
        };
        Ok((reply, writes, true))
    }

    /// The shard's statistics (object stats left default).
    pub fn stats(&self) -> Stats {
        Stats {
            role: Role::Shard.name().into(),
            windows: self.shard.windows.len() as u64,
            sealed_before: self.shard.sealed_before,
            records: self.counters.records,
            late: self.counters.late,
            duplicate_batches: self.counters.duplicate_batches,
            ..Stats::default()
        }
    }

    /// The alarm: seal, prune windows past retention and old batch ids, wake the root, re-arm
    /// while windows remain.
    pub fn on_alarm(&mut self, now: UnixMillis) -> Effects {
        let mut writes = self.seal(now);
        let cut = self.shard.prune(now);
        self.spend.prune(cut);
        writes.push(Write::PruneWindows(cut));
        writes.push(Write::PruneBatches(now.plus_ms(-BATCH_MEMORY_MS)));
        Effects {
            writes,
            wake_root: true,
            rearm: !self.shard.windows.is_empty() || !self.spend.windows.is_empty(),
        }
    }

    fn seal(&mut self, now: UnixMillis) -> Vec<Write> {
        let before = self.shard.sealed_before;
        let after = self.shard.seal(now, self.grace_ms);
        if after == before {
            Vec::new()
        } else {
            vec![Write::SealedBefore(after)]
        }
    }
}

fn valid_batch(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_BATCH_ID
}
