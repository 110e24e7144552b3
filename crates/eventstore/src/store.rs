//! The store itself: [`EventStore`] (streams, the global log, the transaction hook) over the
//! backend its URL names, its [`Options`], and [`StoreTx`], a transaction that appends events
//! beside the caller's own rows.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{PgConnection, SqliteConnection};
use tokio::sync::watch;

use crate::backend::{self, Pool};
use crate::error::Error;
use crate::event::{ExpectedVersion, NewEvent, RecordedEvent};
use crate::upcast::Upcasters;

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
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) options: Options,
    /// The highest position this process has committed: wakes subscriptions.
    pub(crate) head: watch::Sender<u64>,
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

    pub(crate) fn decode(
        &self,
        rows: Vec<backend::StoredEvent>,
    ) -> Result<Vec<RecordedEvent>, Error> {
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

    pub(crate) fn committed(&self, last_position: u64) {
        self.inner.head.send_if_modified(|head| {
            let moved = last_position > *head;
            if moved {
                *head = last_position;
            }
            moved
        });
    }

    pub(crate) fn watch_head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }
}

/// A transaction of the store: appends and the caller's own writes, committed together.
#[derive(Debug)]
pub struct StoreTx {
    pub(crate) tx: backend::Tx,
    pub(crate) store: EventStore,
    pub(crate) last_position: u64,
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
