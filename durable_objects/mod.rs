//! The five Durable Object adapters and what they share: the SQLite helpers, the migration
//! runner, the reply encoding and the alarm bookkeeping.
//!
//! An adapter does, per request: make sure the schema is migrated, read the time once, make one
//! synchronous call into `gateway-core`, persist what changed with synchronous `sql.exec` calls
//! (no `.await` in between, so the input gate makes it atomic), arm the alarm if none is set, and
//! answer. Business logic lives in the core.

pub mod aggregator;
pub mod cache_shard;
pub mod experiment;
pub mod keys;
pub mod provider_health;
pub mod rate_limiter;
pub mod row;

use std::cell::{Cell, RefCell, RefMut};
use std::future::Future;
use std::rc::Rc;

use gateway_core::config::Config;

use gateway_core::alarm::AlarmStats;
use gateway_core::migrate::{pending, Migration, BOOKKEEPING_SQL};
use gateway_core::protocol::{self, ObjectStats, Reply, WireError};
use gateway_core::{GatewayError, UnixMillis};
use serde::Serialize;
use worker::{
    Env, Request as HttpRequest, Response, ScheduledTime, SqlStorage, SqlStorageValue, State,
};

pub use row::{Blob, FromRow};

/// The migrations of each object, embedded at build time from `migrations/`.
pub mod migrations {
    use gateway_core::migrate::Migration;

    macro_rules! m {
        ($v:expr, $dir:literal, $file:literal) => {
            Migration {
                version: $v,
                name: $file,
                sql: include_str!(concat!("../migrations/", $dir, "/", $file)),
            }
        };
    }

    /// `RateLimiterDO`.
    pub const RATE_LIMITER: &[Migration] = &[
        m!(1, "rate_limiter", "0001_init.sql"),
        m!(2, "rate_limiter", "0002_policies_windows.sql"),
        m!(3, "rate_limiter", "0003_keys.sql"),
    ];
    /// `CacheShardDO`.
    pub const CACHE_SHARD: &[Migration] = &[
        m!(1, "cache_shard", "0001_init.sql"),
        m!(2, "cache_shard", "0002_stale_negative_tags.sql"),
    ];
    /// `ProviderHealthDO`.
    pub const PROVIDER_HEALTH: &[Migration] = &[m!(1, "provider_health", "0001_init.sql")];
    /// `ExperimentDO`.
    pub const EXPERIMENT: &[Migration] = &[
        m!(1, "experiment", "0001_init.sql"),
        m!(2, "experiment", "0002_metrics_decisions_index.sql"),
    ];
    /// `AggregatorDO`.
    pub const AGGREGATOR: &[Migration] = &[
        m!(1, "aggregator", "0001_init.sql"),
        m!(2, "aggregator", "0002_records_root.sql"),
        m!(3, "aggregator", "0003_spend.sql"),
    ];
}

/// Maps a platform error inside an object to a core error.
pub fn platform(e: worker::Error) -> GatewayError {
    GatewayError::Internal(format!("storage: {e}"))
}

/// A thin typed wrapper over the object's SQLite.
pub struct Db(pub SqlStorage);

impl Db {
    /// Runs a statement, consuming any rows.
    pub fn exec(&self, query: &str, binds: Vec<SqlStorageValue>) -> Result<(), GatewayError> {
        let cursor = self.0.exec(query, binds).map_err(platform)?;
        for row in cursor.raw() {
            row.map_err(platform)?;
        }
        Ok(())
    }

    /// Runs a statement and returns how many rows it wrote.
    pub fn exec_count(
        &self,
        query: &str,
        binds: Vec<SqlStorageValue>,
    ) -> Result<u64, GatewayError> {
        let cursor = self.0.exec(query, binds).map_err(platform)?;
        for row in cursor.raw() {
            row.map_err(platform)?;
        }
        Ok(cursor.rows_written() as u64)
    }

    /// Runs a query and returns every row as raw values.
    pub fn rows(
        &self,
        query: &str,
        binds: Vec<SqlStorageValue>,
    ) -> Result<Vec<Vec<SqlStorageValue>>, GatewayError> {
        let cursor = self.0.exec(query, binds).map_err(platform)?;
        cursor.raw().map(|r| r.map_err(platform)).collect()
    }

    /// Every row of a query as `T` (a corrupt row is an error, see [`row`]).
    pub fn all<T: FromRow>(
        &self,
        query: &str,
        binds: Vec<SqlStorageValue>,
    ) -> Result<Vec<T>, GatewayError> {
        let cursor = self.0.exec(query, binds).map_err(platform)?;
        cursor
            .raw()
            .map(|r| T::from_row(&r.map_err(platform)?))
            .collect()
    }

    /// The first row of a query as `T`, if any.
    pub fn one<T: FromRow>(
        &self,
        query: &str,
        binds: Vec<SqlStorageValue>,
    ) -> Result<Option<T>, GatewayError> {
        let cursor = self.0.exec(query, binds).map_err(platform)?;
        let mut rows = cursor.raw();
        let first = rows.next().map(|r| T::from_row(&r.map_err(platform)?));
        for rest in rows {
            rest.map_err(platform)?;
        }
        first.transpose()
    }

    /// The first column of the first row as an integer.
    pub fn scalar(
        &self,
        query: &str,
        binds: Vec<SqlStorageValue>,
    ) -> Result<Option<i64>, GatewayError> {
        Ok(self
            .rows(query, binds)?
            .first()
            .and_then(|r| r.first())
            .and_then(int))
    }

    /// An integer from the `_meta` table (0 when absent).
    pub fn meta(&self, key: &str) -> Result<i64, GatewayError> {
        Ok(self
            .scalar("SELECT value FROM _meta WHERE key = ?", vec![key.into()])?
            .unwrap_or(0))
    }

    /// A `_meta` value as `T` (absent: `None`; of another type: a corruption error).
    pub fn meta_as<T: row::Column>(&self, key: &str) -> Result<Option<T>, GatewayError> {
        let row = self.one::<(T,)>("SELECT value FROM _meta WHERE key = ?", vec![key.into()])?;
        Ok(row.map(|(v,)| v))
    }

    /// Sets an integer in `_meta`.
    pub fn set_meta(&self, key: &str, value: i64) -> Result<(), GatewayError> {
        self.put_meta(key, value.into())
    }

    /// A text value from `_meta`.
    pub fn meta_text(&self, key: &str) -> Result<Option<String>, GatewayError> {
        Ok(self
            .rows("SELECT value FROM _meta WHERE key = ?", vec![key.into()])?
            .first()
            .and_then(|r| r.first())
            .and_then(text))
    }

    /// Sets a text value in `_meta`.
    pub fn set_meta_text(&self, key: &str, value: &str) -> Result<(), GatewayError> {
        self.put_meta(key, value.into())
    }

    fn put_meta(&self, key: &str, value: SqlStorageValue) -> Result<(), GatewayError> {
        self.exec(
            "INSERT INTO _meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            vec![key.into(), value],
        )
    }

    /// Adds to an integer in `_meta`.
    pub fn add_meta(&self, key: &str, delta: i64) -> Result<(), GatewayError> {
        self.exec(
            "INSERT INTO _meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            vec![key.into(), delta.into()],
        )
    }
}

/// An integer column (SQLite integers arrive as JS numbers).
pub fn int(v: &SqlStorageValue) -> Option<i64> {
    match v {
        SqlStorageValue::Integer(i) => Some(*i),
        SqlStorageValue::Float(f) if f.fract() == 0.0 => Some(*f as i64),
        SqlStorageValue::Boolean(b) => Some(i64::from(*b)),
        _ => None,
    }
}

/// A numeric column as a float (REAL columns holding whole numbers may arrive as integers).
pub fn real(v: &SqlStorageValue) -> Option<f64> {
    match v {
        SqlStorageValue::Float(f) => Some(*f),
        SqlStorageValue::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// A text column.
pub fn text(v: &SqlStorageValue) -> Option<String> {
    match v {
        SqlStorageValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A blob column.
pub fn blob(v: &SqlStorageValue) -> Option<&[u8]> {
    match v {
        SqlStorageValue::Blob(b) => Some(b),
        _ => None,
    }
}

/// Column `i` of `row`, or a corruption error.
pub fn col(row: &[SqlStorageValue], i: usize) -> Result<&SqlStorageValue, GatewayError> {
    row.get(i)
        .ok_or_else(|| GatewayError::Internal(format!("row is missing column {i}")))
}

/// Decodes a postcard blob persisted by this code.
pub fn decode_blob<T: serde::de::DeserializeOwned>(v: &SqlStorageValue) -> Result<T, GatewayError> {
    let bytes = blob(v).ok_or_else(|| GatewayError::Internal("expected a blob".into()))?;
    Ok(postcard::from_bytes(bytes)?)
}

/// Encodes a value as a postcard blob.
pub fn encode_blob<T: Serialize>(v: &T) -> Result<SqlStorageValue, GatewayError> {
    Ok(SqlStorageValue::Blob(postcard::to_allocvec(v)?))
}

/// The migration runner: creates the bookkeeping tables, applies pending migrations in order
/// (each with its bookkeeping row, synchronously, so a crash never leaves one half-recorded),
/// and returns the schema version. Running it again is a no-op.
pub fn migrate(db: &Db, all: &[Migration], now: UnixMillis) -> Result<u32, GatewayError> {
    db.exec(BOOKKEEPING_SQL, vec![])?;
    db.exec(
        "CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        vec![],
    )?;
    let applied: Vec<u32> = db
        .rows("SELECT version FROM _migrations", vec![])?
        .iter()
        .filter_map(|r| r.first().and_then(int))
        .filter_map(|v| u32::try_from(v).ok())
        .collect();
    for m in pending(all, &applied)? {
        db.exec(m.sql, vec![])?;
        db.exec(
            "INSERT INTO _migrations (version, name, applied_at) VALUES (?, ?, ?)",
            vec![i64::from(m.version).into(), m.name.into(), now.0.into()],
        )?;
    }
    Ok(all.len() as u32)
}

/// The time, read once per request or alarm.
pub fn now() -> UnixMillis {
    UnixMillis(js_sys::Date::now() as i64)
}

/// An adapter's in-memory copy of its state, loaded from SQLite on first use and kept for the
/// life of the instance (storage stays the source of truth: [`Lazy::forget`] after a failed write
/// makes the next request reload).
pub struct Lazy<T>(RefCell<Option<T>>);

impl<T> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(RefCell::new(None))
    }
}

impl<T> Lazy<T> {
    /// The loaded value, borrowed for one synchronous step (never across an `.await`).
    pub fn get(
        &self,
        load: impl FnOnce() -> Result<T, GatewayError>,
    ) -> Result<RefMut<'_, T>, GatewayError> {
        let mut slot = self.0.borrow_mut();
        if slot.is_none() {
            *slot = Some(load()?);
        }
        // Always `Ok`: the slot was filled just above.
        RefMut::filter_map(slot, Option::as_mut)
            .map_err(|_| GatewayError::Internal("state failed to load".into()))
    }

    /// The value if it is loaded (for reads that must not load, e.g. an alarm deadline).
    pub fn peek<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.0.borrow().as_ref().map(f)
    }

    /// Replaces the copy (after the storage it mirrors was written).
    pub fn set(&self, value: T) {
        *self.0.borrow_mut() = Some(value);
    }

    /// Drops the copy: the next [`Lazy::get`] reloads from storage.
    pub fn forget(&self) {
        *self.0.borrow_mut() = None;
    }

    /// Runs a step that writes storage; if it fails, the copy (which may have run ahead of
    /// storage) is dropped so the next request reloads.
    pub fn write<R>(
        &self,
        step: impl FnOnce() -> Result<R, GatewayError>,
    ) -> Result<R, GatewayError> {
        let out = step();
        if out.is_err() {
            self.forget();
        }
        out
    }
}

/// What a handled request asks of the alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Nothing changed that needs the alarm.
    Idle,
    /// State changed: make sure the periodic alarm is armed.
    Periodic,
    /// State changed with a deadline of its own: arm for it or the period, whichever is sooner.
    By(Option<UnixMillis>),
}

impl From<bool> for Wake {
    fn from(changed: bool) -> Self {
        if changed {
            Wake::Periodic
        } else {
            Wake::Idle
        }
    }
}

/// The part of an adapter [`adapter!`] writes: its [`Base`] and its alarm period (owned by the
/// configuration).
pub trait Shell {
    /// The shared state.
    fn base(&self) -> &Base;
    /// The alarm period.
    fn interval(&self) -> u64;
}

/// What an adapter supplies; [`adapter!`] writes its `DurableObject` impl from it, so every
/// object is constructed, served and woken the same way.
#[allow(async_fn_in_trait)] // implemented and awaited only in this crate, never boxed
pub trait Adapter: Shell {
    /// The message its objects take.
    type Msg: serde::de::DeserializeOwned;
    /// The reply they answer.
    type Reply: Serialize;
    /// One request: the reply and what it asks of the alarm.
    async fn handle(
        &self,
        msg: Self::Msg,
        now: UnixMillis,
    ) -> Result<(Self::Reply, Wake), GatewayError>;
    /// The alarm's work: when to run again (`Idle`: not until a request arms it).
    async fn on_alarm(&self, now: UnixMillis) -> Result<Wake, GatewayError>;
}

/// `fetch`: [`Base::serve`] over [`Adapter::handle`].
pub async fn serve<A: Adapter>(a: &A, mut req: HttpRequest) -> worker::Result<Response> {
    a.base()
        .serve(&mut req, a.interval(), |msg, now| a.handle(msg, now))
        .await
}

/// `alarm`: [`Adapter::on_alarm`], then re-arm as it asks (a failed run returns an error, which
/// the platform retries).
pub async fn alarm<A: Adapter>(a: &A) -> worker::Result<Response> {
    let now = now();
    let wake = a
        .on_alarm(now)
        .await
        .map_err(|e| worker::Error::RustError(e.to_string()))?;
    let at = match wake {
        Wake::Idle => None,
        Wake::Periodic => Some(gateway_core::alarm::next_alarm(now, a.interval(), None)),
        Wake::By(at) => Some(gateway_core::alarm::next_alarm(now, a.interval(), at)),
    };
    a.base().rearm(at).await?;
    Response::ok("ok")
}

/// The `DurableObject` and [`Shell`] impls of an [`Adapter`]: its fields besides `base` start
/// as `Default`, its alarm period is the named `Config` field.
macro_rules! adapter {
    ($ty:ident { $($field:ident),* $(,)? }, interval: $interval:ident) => {
        impl $crate::durable_objects::Shell for $ty {
            fn base(&self) -> &$crate::durable_objects::Base {
                &self.base
            }

            fn interval(&self) -> u64 {
                self.base.interval(|c| c.$interval)
            }
        }

        impl worker::DurableObject for $ty {
            fn new(state: worker::State, env: worker::Env) -> Self {
                $ty {
                    base: $crate::durable_objects::Base::new(state, env),
                    $($field: Default::default()),*
                }
            }

            async fn fetch(&self, req: worker::Request) -> worker::Result<worker::Response> {
                $crate::durable_objects::serve(self, req).await
            }

            async fn alarm(&self) -> worker::Result<worker::Response> {
                $crate::durable_objects::alarm(self).await
            }
        }
    };
}
pub(crate) use adapter;

/// State every adapter carries besides its component: environment, schema and alarm flags.
pub struct Base {
    /// The platform state.
    pub state: State,
    /// The bindings (configuration is read through [`Base::cfg`]).
    pub env: Env,
    /// Schema version once migrated (0 before).
    schema: Cell<u32>,
    /// Whether an alarm is known to be set.
    alarm_armed: Cell<bool>,
}

impl Base {
    /// Wraps the object's state and bindings.
    pub fn new(state: State, env: Env) -> Self {
        Base {
            state,
            env,
            schema: Cell::new(0),
            alarm_armed: Cell::new(false),
        }
    }

    /// The configuration (parsed once per isolate).
    pub fn cfg(&self) -> Result<Rc<Config>, GatewayError> {
        crate::config::config(&self.env)
    }

    /// An alarm period from the configuration. If the configuration does not parse (every
    /// request then answers that error), the default of the same setting is used so the alarm
    /// keeps running: the period has one source, `Config`.
    pub fn interval(&self, pick: fn(&Config) -> u64) -> u64 {
        match self.cfg() {
            Ok(c) => pick(&c),
            Err(_) => Config::from_lookup(&|_| None).map_or(60_000, |c| pick(&c)),
        }
    }

    /// The object's SQLite, migrated on first use.
    pub fn db(&self, all: &[Migration], now: UnixMillis) -> Result<Db, GatewayError> {
        let db = Db(self.state.storage().sql());
        if self.schema.get() == 0 {
            self.schema.set(migrate(&db, all, now)?);
        }
        Ok(db)
    }

    /// Common stats: alarm runs and schema version.
    pub fn object_stats(&self, db: &Db) -> Result<ObjectStats, GatewayError> {
        let runs = db.meta("alarm_runs")?;
        let last = db.meta("alarm_last_run_at")?;
        Ok(ObjectStats {
            alarm: AlarmStats {
                runs: u64::try_from(runs).unwrap_or(0),
                last_run_at: (last > 0).then_some(UnixMillis(last)),
            },
            schema_version: self.schema.get(),
        })
    }

    /// Records a completed alarm run (call last in the alarm handler, in the same synchronous
    /// block as the alarm's writes).
    pub fn record_alarm_run(&self, db: &Db, now: UnixMillis) -> Result<(), GatewayError> {
        db.add_meta("alarm_runs", 1)?;
        db.set_meta("alarm_last_run_at", now.0)
    }

    /// Arms the alarm at `at` unless one is already set (checked once per object instance; the
    /// defensive re-arm DESIGN.md asks for).
    pub async fn ensure_alarm(&self, at: UnixMillis) -> worker::Result<()> {
        if self.alarm_armed.get() {
            return Ok(());
        }
        let storage = self.state.storage();
        if storage.get_alarm().await?.is_none() {
            storage.set_alarm(scheduled(at)).await?;
        }
        self.alarm_armed.set(true);
        Ok(())
    }

    /// The request shape every adapter shares: read the body, read the time once, decode, make
    /// the call (`handle` returns the reply and what it asks of the alarm; it may await, e.g. a
    /// cache read that waits for a fill or a root that collects its shards), arm the alarm when
    /// asked and none is set, answer.
    pub async fn serve<M, R, W, F, Fut>(
        &self,
        req: &mut HttpRequest,
        interval_ms: u64,
        handle: F,
    ) -> worker::Result<Response>
    where
        M: serde::de::DeserializeOwned,
        R: Serialize,
        W: Into<Wake>,
        F: FnOnce(M, UnixMillis) -> Fut,
        Fut: Future<Output = Result<(R, W), GatewayError>>,
    {
        let bytes = req.bytes().await?;
        let now = now();
        let result = match decode_request(&bytes) {
            Ok(msg) => handle(msg, now).await.map(|(r, w)| (r, w.into())),
            Err(e) => Err(e),
        };
        let deadline = match &result {
            Ok((_, Wake::Periodic)) => Some(None),
            Ok((_, Wake::By(at))) => Some(*at),
            _ => None,
        };
        if let Some(at) = deadline {
            self.ensure_alarm(gateway_core::alarm::next_alarm(now, interval_ms, at))
                .await?;
        }
        respond(result.map(|(r, _)| r))
    }

    /// Sets the next alarm (from the alarm handler), or clears the flag when there is none.
    pub async fn rearm(&self, at: Option<UnixMillis>) -> worker::Result<()> {
        match at {
            Some(at) => {
                self.state.storage().set_alarm(scheduled(at)).await?;
                self.alarm_armed.set(true);
            }
            None => self.alarm_armed.set(false),
        }
        Ok(())
    }
}

fn scheduled(at: UnixMillis) -> ScheduledTime {
    ScheduledTime::new(js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(
        at.0 as f64,
    )))
}

/// Encodes a reply as the response body. If even encoding fails, the error is encoded instead.
pub fn respond<T: Serialize>(reply: Result<T, GatewayError>) -> worker::Result<Response> {
    let wire: Reply<T> = reply.map_err(WireError::from);
    let bytes = match protocol::encode(&wire) {
        Ok(b) => b,
        Err(e) => protocol::encode(&Reply::<()>::Err(WireError::from(e))).unwrap_or_default(),
    };
    Response::from_bytes(bytes)
}

/// Decodes a request body into the object's message type.
pub fn decode_request<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    protocol::decode(bytes)
}
