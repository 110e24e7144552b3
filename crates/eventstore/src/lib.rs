//! An event store with one API over two databases, SQLite (the embedded default) and PostgreSQL.
//!
//! * **Streams** ([`EventStore::append`]): an append carries an [`ExpectedVersion`] checked in
//!   its transaction; a batch is appended atomically; a stale expectation is an
//!   [`Error::Conflict`].
//! * **The global log** ([`EventStore::read_all`], [`EventStore::subscribe`]): every event has a
//!   position, gap-free and in commit order, so a reader never finds an event behind one it has
//!   already seen. A [`Subscription`] catches up and then follows live appends with the same
//!   query, so there is no switch-over where events could be missed or repeated.
//! * **Aggregates** ([`aggregate`]): a state folded from its stream, loaded from the latest
//!   snapshot plus the tail ([`Options::snapshot_every`]), saved with optimistic concurrency,
//!   commands retried on conflict ([`EventStore::execute`]), and read as they were at a version
//!   or an instant ([`AsOf`]).
//! * **Upcasting** ([`Upcasters`]): old schema versions of an event are turned into the current
//!   one on every read, so stored events never need rewriting.
//! * **Projections** ([`projection`]): read models kept from the global log, with their
//!   position stored in the same transaction as their rows, rebuildable from zero.
//! * **Outbox hook** ([`EventStore::begin`]): a [`StoreTx`] appends events and lets the caller
//!   write its own rows (an outbox, an idempotency key) in the same transaction.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flotilla_eventstore::{EventStore, ExpectedVersion, NewEvent, Options};
//! use serde_json::json;
//!
//! let store = EventStore::connect("sqlite::memory:", Options::default()).await.unwrap();
//! store.append("account-1", ExpectedVersion::NoStream, vec![
//!     NewEvent::new("Opened", json!({ "owner": "alice" })),
//!     NewEvent::new("Deposited", json!({ "cents": 500 })),
//! ]).await.unwrap();
//! let events = store.read_stream("account-1", 1).await.unwrap();
//! assert_eq!(events.len(), 2);
//! assert_eq!((events[1].version, events[1].position), (2, 2));
//!
//! // A writer that read version 1 loses to the one that wrote version 2.
//! let stale = store.append("account-1", ExpectedVersion::Exact(1), vec![
//!     NewEvent::new("Withdrawn", json!({ "cents": 100 })),
//! ]).await;
//! assert!(matches!(stale, Err(flotilla_eventstore::Error::Conflict { actual: 2, .. })));
//! # });
//! ```

pub mod aggregate;
mod backend;
mod event;
pub mod projection;
mod subscription;
mod upcast;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{PgConnection, SqliteConnection};
use tokio::sync::watch;

pub use crate::aggregate::{Aggregate, AsOf, EventContext, Loaded};
use crate::backend::Pool;
pub use crate::event::{ExpectedVersion, Metadata, NewEvent, RecordedEvent, category};
pub use crate::projection::{Projection, Projector};
pub use crate::subscription::Subscription;
pub use crate::upcast::Upcasters;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream was not at the expected version: another writer got there first.
    #[error("stream `{stream}` is at version {actual}, expected {expected:?}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append looked.
        actual: u64,
    },
    /// An event with this id is already stored.
    #[error("an event with id {0} is already stored")]
    DuplicateEvent(uuid::Uuid),
    /// A stored event or snapshot could not be turned into what the reader asked for.
    #[error(
        "event at position {position} ({event_type} v{schema_version}) cannot be read: {reason}"
    )]
    Decode {
        /// Its position in the global log.
        position: u64,
        /// Its type.
        event_type: String,
        /// Its stored schema version.
        schema_version: u32,
        /// Why.
        reason: String,
    },
    /// An event could not be encoded (its payload is not a JSON object with a `type`, ...).
    #[error("event cannot be encoded: {0}")]
    Encode(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The schema could not be set up.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// [`EventStore::connect`] was given a URL of neither database.
    #[error("unsupported database URL `{0}`: use sqlite:… or postgres://…")]
    UnsupportedUrl(String),
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// Write a snapshot of an aggregate each time its stream passes a multiple of this many
    /// events (0: never). Default 100.
    pub snapshot_every: u64,
    /// How often a waiting subscription looks for events appended by other processes (appends
    /// through this store wake it at once). Default 100 ms.
    pub poll_interval: Duration,
    /// The upcasters applied to every event read.
    pub upcasters: Upcasters,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            snapshot_every: 100,
            poll_interval: Duration::from_millis(100),
            upcasters: Upcasters::default(),
        }
    }
}

/// The event store: cheap to clone, shared by every task of a process.
#[derive(Debug, Clone)]
pub struct EventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    options: Options,
    /// The highest position this process has committed: wakes subscriptions.
    head: watch::Sender<u64>,
}

impl EventStore {
    /// A store in an SQLite database, whose tables it creates if needed (migrations recorded in
    /// `_eventstore_migrations`, apart from the owner's own).
    pub async fn sqlite(pool: SqlitePool, options: Options) -> Result<Self, Error> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.dangerous_set_table_name("_eventstore_migrations");
        migrator.run(&pool).await?;
        Self::with_pool(Pool::Sqlite(pool), options).await
    }

    /// A store in a PostgreSQL database (in the connection's `search_path` schema).
    pub async fn postgres(pool: PgPool, options: Options) -> Result<Self, Error> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.dangerous_set_table_name("_eventstore_migrations");
        migrator.run(&pool).await?;
        Self::with_pool(Pool::Postgres(pool), options).await
    }

    /// A store at a database URL: `sqlite:path/to/file.db`, `sqlite::memory:` or
    /// `postgres://user@host/database`.
    pub async fn connect(url: &str, options: Options) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            let memory = url.contains(":memory:");
            let connect: SqliteConnectOptions = url.parse()?;
            let connect = connect
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            // An in-memory database lives as long as its one connection.
            let pool = SqlitePoolOptions::new()
                .max_connections(if memory { 1 } else { 8 })
                .min_connections(if memory { 1 } else { 0 })
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(connect)
                .await?;
            Self::sqlite(pool, options).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect: PgConnectOptions = url.parse()?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .connect_with(connect)
                .await?;
            Self::postgres(pool, options).await
        } else {
            Err(Error::UnsupportedUrl(url.to_owned()))
        }
    }

    async fn with_pool(pool: Pool, options: Options) -> Result<Self, Error> {
        let head = backend::head(&pool).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                options,
                head: watch::Sender::new(head),
            }),
        })
    }

    /// The store's settings.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The SQLite pool, if the store is on SQLite.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.inner.pool {
            Pool::Sqlite(pool) => Some(pool),
            Pool::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, if the store is on PostgreSQL.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.inner.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match &self.inner.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Starts a transaction: append to any number of streams and write the caller's own rows
    /// ([`StoreTx::sqlite`], [`StoreTx::postgres`]), then [`StoreTx::commit`] all at once.
    /// Dropping it without committing rolls everything back.
    pub async fn begin(&self) -> Result<StoreTx, Error> {
        Ok(StoreTx {
            tx: backend::begin(&self.inner.pool).await?,
            store: self.clone(),
            last_position: 0,
        })
    }

    /// Appends `events` to `stream` atomically if it is at `expected`; returns them as
    /// recorded. An empty batch only checks the expectation.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let mut tx = self.begin().await?;
        let recorded = tx.append(stream, expected, events).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// The events of `stream` from version `from` (1 for all), upcast.
    pub async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>, Error> {
        let rows = backend::read_stream(&self.inner.pool, stream, from, u64::MAX).await?;
        self.decode(rows)
    }

    /// The events of `stream` with versions `from..=to`, upcast.
    pub async fn read_stream_range(
        &self,
        stream: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = backend::read_stream(&self.inner.pool, stream, from, to).await?;
        self.decode(rows)
    }

    /// The version of `stream`: its number of events (0 if it has none).
    pub async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        backend::stream_version(&self.inner.pool, stream).await
    }

    /// At most `limit` events of the global log after position `after` (0 for the start), in
    /// order; only those of `category` if one is given.
    pub async fn read_all(
        &self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = backend::read_all(&self.inner.pool, after, limit, category).await?;
        self.decode(rows)
    }

    /// The position of the last event in the global log (of `category` if given); 0 if none.
    pub async fn head(&self, category: Option<&str>) -> Result<u64, Error> {
        match category {
            None => backend::head(&self.inner.pool).await,
            Some(category) => backend::category_head(&self.inner.pool, category).await,
        }
    }

    /// Follows the global log (of `category` if given) from just after `after`: every event
    /// already stored, then every event appended later, each once and in order.
    pub fn subscribe(&self, after: u64, category: Option<&str>) -> Subscription {
        Subscription::new(self.clone(), after, category.map(str::to_owned))
    }

    fn decode(&self, rows: Vec<backend::StoredEvent>) -> Result<Vec<RecordedEvent>, Error> {
        rows.into_iter()
            .map(|row| row.into_recorded(&self.inner.options.upcasters))
            .collect()
    }

    /// Tells this process's subscriptions and projectors that events up to `last_position`
    /// committed: for appends committed on a caller's own transaction (the `_on` paths,
    /// [`EventStore::save_on`]), which the store cannot see commit. A position at or below the known head is
    /// ignored.
    pub fn appended(&self, last_position: u64) {
        self.committed(last_position);
    }

    fn committed(&self, last_position: u64) {
        self.inner.head.send_if_modified(|head| {
            let moved = last_position > *head;
            if moved {
                *head = last_position;
            }
            moved
        });
    }

    fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }
}

/// A transaction of the store: appends and the caller's own writes, committed together.
#[derive(Debug)]
pub struct StoreTx {
    tx: backend::Tx,
    store: EventStore,
    last_position: u64,
}

impl StoreTx {
    /// Appends `events` to `stream` if it is at `expected`, within this transaction. After an
    /// error the transaction must be dropped (rolled back), not committed.
    pub async fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let recorded = backend::append(&mut self.tx.conn(), stream, expected, events).await?;
        if let Some(last) = recorded.last() {
            self.last_position = self.last_position.max(last.position);
        }
        Ok(recorded)
    }

    /// The transaction's SQLite connection, to write the caller's rows in it.
    pub fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        match &mut self.tx {
            backend::Tx::Sqlite(tx) => Some(&mut **tx),
            backend::Tx::Postgres(_) => None,
        }
    }

    /// The transaction's PostgreSQL connection, to write the caller's rows in it.
    pub fn postgres(&mut self) -> Option<&mut PgConnection> {
        match &mut self.tx {
            backend::Tx::Postgres(tx) => Some(&mut **tx),
            backend::Tx::Sqlite(_) => None,
        }
    }

    /// Like [`EventStore::read_all`], but seen from within this transaction.
    pub async fn read_all(
        &mut self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let rows = backend::read_all_in(&mut self.tx, after, limit, category).await?;
        self.store.decode(rows)
    }

    /// The store this transaction belongs to.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Commits, then wakes this process's subscriptions.
    pub async fn commit(self) -> Result<(), Error> {
        backend::commit(self.tx).await?;
        if self.last_position > 0 {
            self.store.committed(self.last_position);
        }
        Ok(())
    }
}
