//! A service's embedded database: one SQLite file per service, shared by its instances.
//!
//! WAL mode lets several instances of one service (`--scale inventory=2`) share the file; the
//! busy timeout makes a writer wait for another process's transaction instead of failing.
//!
//! Within a process the pool has **one connection** ([`CONNECTIONS`]): SQLite runs one writer at
//! a time anyway, and when several connections of one process compete for the write lock, the
//! losers sleep in SQLite's busy handler (1, 2, 5, 10… ms) and the lock stays idle until they
//! wake. With one connection they queue in the pool instead (first come, first served, handed
//! over at once). Measured with `flotilla bench orders --sustained` at 250 orders/s offered: 163
//! sagas/s with 8 connections, 245 with one (docs/benchmarks.md). The price: a slow read delays
//! the writes queued behind it, and code must never hold a transaction while it waits for a
//! second connection (it would wait for itself).
//!
//! A transaction that runs many statements can run them as direct SQLite calls: [`direct`] on a
//! sqlx connection, one round trip to sqlx's worker thread (to borrow the handle) instead of one
//! per statement; or [`transaction`] and [`call`], on the process's own connection to the file
//! ([`Writer`]), with no round trip at all. On this 2-core machine the round trips, not SQLite,
//! were most of the order service's time (two thread switches each; `perf` showed 58 % of its
//! CPU in the kernel, switching). The statements direct calls prepare stay prepared with their
//! connection, from one call to the next (parsing is half of a short statement's cost): a sqlx
//! connection owns them, and the process's writer, and finalizes them before sqlx closes it
//! (see `view`).
//!
//! Checkpoints (copying the write-ahead log back into the file) run on a thread of their own per
//! database, never inside a commit: see `checkpoints` for why and how the log still starts over
//! under continuous writes.
//!
//! Start-up work (migrations, seeding) runs under an exclusive lock on `<file>.lock`, so that
//! instances starting together do not race to create the same tables: SQLite answers such
//! races with `database is locked` at once, without waiting for its busy timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    LockedSqliteHandle, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{SqliteConnection, SqlitePool};

mod checkpoints;
pub use checkpoints::{CATCH_UP_FRAMES, LOG_SIZE_LIMIT, PASS_INTERVAL};

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 1024;

/// Connections of a service's pool: one (see the module's documentation).
pub const CONNECTIONS: u32 = 1;

/// A database being set up: migrated, and locked against other instances until
/// [`Opening::ready`]. Seed it through [`Opening::pool`] in between.
#[derive(Debug)]
pub struct Opening {
    pool: SqlitePool,
    /// Held for the set-up; closing the file releases the lock.
    lock: File,
}

impl Opening {
    /// The pool, for seeding while other instances wait.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Ends the set-up: releases the lock and returns the pool.
    pub fn ready(self) -> SqlitePool {
        drop(self.lock);
        self.pool
    }
}

/// Opens (creating if needed) the database at `path`, takes the set-up lock and applies
/// `migrations`. Its checkpoints run on a thread of their own, never inside a commit
/// (`checkpoints`: every [`PASS_INTERVAL`], and the log starts over from [`CATCH_UP_FRAMES`]
/// pages); the thread stops when the pool closes.
pub async fn open(path: &Path, migrations: &Migrator) -> Result<Opening, sqlx::Error> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = File::create(&lock_path).map_err(sqlx::Error::Io)?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))?
        .map_err(sqlx::Error::Io)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        // Checkpoints run on a thread of their own (`checkpoints`), not inside a commit.
        .pragma("wal_autocheckpoint", "0")
        .pragma(
            "journal_size_limit",
            checkpoints::LOG_SIZE_LIMIT.to_string(),
        )
        // Every statement a service runs stays prepared: evicting one costs a parse and plan
        // at its next use (sqlx's default keeps 100).
        .statement_cache_capacity(STATEMENT_CACHE);
    let pool = SqlitePoolOptions::new()
        .max_connections(CONNECTIONS)
        // A file on this machine does not hang up: no ping on the way out of the pool. And the
        // one connection lives as long as the pool (it owns the process's `Writer`).
        .test_before_acquire(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options)
        .await?;
    migrations.run(&pool).await?;
    if let Some(writer) = Writer::of(&pool).await? {
        let db = writer.db.lock().await;
        db.pragma_update(None, "wal_autocheckpoint", 0)
            .and_then(|()| {
                db.pragma_update(None, "journal_size_limit", checkpoints::LOG_SIZE_LIMIT)
            })
            .map_err(sqlx_error)?;
        drop(db);
        checkpoints::start(path, Arc::downgrade(&writer)).map_err(sqlx::Error::Io)?;
    }
    Ok(Opening { pool, lock })
}

/// Runs `work` on `connection`'s SQLite handle with direct calls (rusqlite), on the calling
/// thread: one round trip to sqlx's worker thread, to borrow the handle, however many statements
/// `work` runs. Within a transaction begun through sqlx, `work` runs inside it; it must not
/// begin, commit or roll back itself.
///
/// `work`'s errors are its own (`E`, which an sqlx error converts into); [`sqlx_error`] turns a
/// rusqlite error into an sqlx one. `work` holds the handle: it must be short (a transaction's statements, not a wait), since it
/// runs on an async worker thread and every other user of the connection queues behind it.
/// Statements `work` prepares with [`rusqlite::Connection::prepare_cached`] (as [`execute`],
/// [`query`] and [`query_optional`] do) stay prepared with the connection, from one call to the
/// next: a statement is parsed once per connection.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use sqlx::Connection;
/// let mut connection = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
/// let answer = flotilla_kit::database::direct(&mut connection, |db| {
///     db.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (41), (1);")
///         .and_then(|()| db.query_row("SELECT SUM(n) FROM t", [], |row| row.get::<_, i64>(0)))
///         .map_err(flotilla_kit::database::sqlx_error)
/// })
/// .await
/// .unwrap();
/// assert_eq!(answer, 42);
/// # });
/// ```
pub async fn direct<T, E, F>(connection: &mut SqliteConnection, work: F) -> Result<T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let mut handle = connection.lock_handle().await.map_err(E::from)?;
    let view = view(&mut handle).map_err(|e| E::from(sqlx_error(e)))?;
    let result = work(&view.db.lock().unwrap_or_else(PoisonError::into_inner));
    // The view before the handle: sqlx's worker may drop the connection once it has it back.
    drop(view);
    drop(handle);
    // One line per borrow, as sqlx logs one per statement (`scripts/statements-per-saga.sh`).
    tracing::debug!(target: "flotilla_kit::database::direct", "direct SQLite call");
    result
}

/// Runs `work` as one write transaction (`BEGIN IMMEDIATE` … `COMMIT`) on `pool`'s database,
/// entirely as direct SQLite calls, on the process's own connection to the file ([`Writer`]): no
/// round trip to sqlx's worker thread at all. The transaction commits when `work` returns `Ok`,
/// and rolls back when it returns `Err` or panics: with no `.await` between its `BEGIN` and its
/// `COMMIT`, a cancelled caller cannot leave it open. `BEGIN`, `COMMIT` and `ROLLBACK` are
/// prepared statements kept with the others.
///
/// While another connection holds the write lock (another instance of the service, a tool, or
/// this process's sqlx connection), `BEGIN` is retried with a growing pause, for at most the
/// busy timeout (10 s), without blocking the thread. An in-memory database has no file to open
/// a second connection to: there `work` runs on a borrowed sqlx connection ([`direct`]).
pub async fn transaction<T, E, F>(pool: &SqlitePool, work: F) -> Result<T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let Some(writer) = Writer::of(pool).await.map_err(E::from)? else {
        return borrowed_transaction(pool, work).await;
    };
    let (db, begun) = begin_waiting(writer.db.lock().await).await;
    begun.map_err(|e| E::from(sqlx_error(e)))?;
    let result = {
        let open = Open {
            db: &db,
            committed: false,
        };
        match work(&db) {
            Ok(value) => open
                .commit()
                .map(|()| value)
                .map_err(|e| E::from(sqlx_error(e))),
            // Dropping `open` rolls the transaction back (on a panic as well).
            Err(error) => Err(error),
        }
    };
    drop(db);
    tracing::debug!(target: "flotilla_kit::database::direct", "direct SQLite call");
    result
}

/// Runs `work` with direct SQLite calls on the process's own connection to `pool`'s database
/// ([`Writer`]), outside any transaction: each statement is its own. For reads (which never wait
/// in WAL mode); a write that must wait for the lock belongs in [`transaction`], whose `BEGIN`
/// waits without blocking the thread. `work` holds the connection: it must be short. On an
/// in-memory database `work` runs on a borrowed sqlx connection ([`direct`]).
pub async fn call<T, E, F>(pool: &SqlitePool, work: F) -> Result<T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let Some(writer) = Writer::of(pool).await.map_err(E::from)? else {
        let mut connection = pool.acquire().await.map_err(E::from)?;
        return direct(&mut connection, work).await;
    };
    let db = writer.db.lock().await;
    let result = work(&db);
    drop(db);
    tracing::debug!(target: "flotilla_kit::database::direct", "direct SQLite call");
    result
}

/// Hands a grouped call its outcome once its group's fate is known: the commit's result (or
/// why the group could not begin).
type Settle = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;

/// A [`grouped`] call's work: runs it in the open group transaction (or learns why there is
/// none), and says how to settle it.
type Job = Box<dyn FnOnce(Result<&rusqlite::Connection, &rusqlite::Error>) -> Settle + Send>;

/// Runs `work` as part of a write transaction shared with the other [`grouped`] calls waiting
/// for the process's writer ([`Writer`]): one `BEGIN` … `COMMIT` for all of them, each call's
/// work inside a savepoint of its own. Work that returns `Err` is rolled back to its savepoint
/// alone and the others commit; if the commit fails, every call of the group gets its error.
/// A call returns once its group committed (or failed).
///
/// Group commit for requests, as the consumer's groups of messages have it: the pages the calls
/// share (the last page of a log, of an index) are written once per group, and one commit
/// replaces many. Under load the work that waits while the writer is busy goes together; alone,
/// a call costs what [`transaction`] does plus a savepoint.
///
/// `work` runs on whichever task leads its group, perhaps after its caller went away: once
/// called, the work happens (so it must own what it needs). A panic in `work` rolls back its
/// savepoint and is that call's error (`sqlx::Error::WorkerCrashed`). On an in-memory database
/// it is [`transaction`].
pub async fn grouped<T, E, F>(pool: &SqlitePool, work: F) -> Result<T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    let Some(writer) = Writer::of(pool).await.map_err(E::from)? else {
        return transaction(pool, work).await;
    };
    let (answer, answered) = tokio::sync::oneshot::channel::<Result<T, E>>();
    let job: Job = Box::new(move |group| {
        let db = match group {
            Ok(db) => db,
            Err(error) => {
                let error = E::from(sqlx_error(same_error(error)));
                return Box::new(move |_| drop(answer.send(Err(error))));
            }
        };
        let outcome = in_savepoint(db, work);
        Box::new(move |committed| {
            let outcome = match (outcome, committed) {
                (Ok(value), Ok(())) => Ok(value),
                (Ok(_), Err(error)) => Err(E::from(sqlx_error(same_error(error)))),
                (Err(error), _) => Err(error),
            };
            // The caller may have gone away; the work is done either way.
            let _ = answer.send(outcome);
        })
    });
    writer
        .waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(job);
    // The group is led from a task of its own, so that a caller going away cannot strand the
    // work it queued; whichever leader takes the writer first commits everything waiting.
    tokio::spawn(async move { writer.lead().await });
    answered
        .await
        .unwrap_or_else(|_| Err(E::from(sqlx::Error::WorkerCrashed)))
}

/// `work` inside a savepoint on `db`: released when it succeeds, rolled back when it fails or
/// panics.
fn in_savepoint<T, E, F>(db: &rusqlite::Connection, work: F) -> Result<T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let step = |sql: &str| {
        db.prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
            .map(drop)
    };
    step("SAVEPOINT grouped").map_err(|e| E::from(sqlx_error(e)))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(db)))
        .unwrap_or_else(|_| Err(E::from(sqlx::Error::WorkerCrashed)));
    let closed = match &outcome {
        Ok(_) => step("RELEASE grouped"),
        Err(_) => step("ROLLBACK TO grouped").and_then(|()| step("RELEASE grouped")),
    };
    match closed {
        Ok(()) => outcome,
        Err(error) => Err(E::from(sqlx_error(error))),
    }
}

/// An error like `error`, for each call of a group that shares it.
fn same_error(error: &rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(failure, message) => {
            rusqlite::Error::SqliteFailure(*failure, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

impl Writer {
    /// Commits every [`grouped`] call waiting, as one transaction, once this task holds the
    /// writer; nothing if another leader took them first.
    async fn lead(&self) {
        let db = self.db.lock().await;
        let jobs =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        if jobs.is_empty() {
            return;
        }
        metrics::counter!("sqlite_grouped_commits_total").increment(1);
        metrics::counter!("sqlite_grouped_calls_total").increment(jobs.len() as u64);
        let (db, begun) = begin_waiting(db).await;
        if let Err(error) = begun {
            for job in jobs {
                job(Err(&error))(Err(&error));
            }
            return;
        }
        let open = Open {
            db: &db,
            committed: false,
        };
        let settles: Vec<Settle> = jobs.into_iter().map(|job| job(Ok(&db))).collect();
        // Dropping `open` uncommitted rolls the whole group back.
        let committed = open.commit();
        drop(db);
        let committed = committed.as_ref().map(|_| ());
        for settle in settles {
            settle(committed);
        }
    }
}

/// How long a direct transaction waits for another connection's write lock, as sqlx's
/// connections do (`busy_timeout`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn begin(db: &rusqlite::Connection) -> rusqlite::Result<()> {
    db.prepare_cached("BEGIN IMMEDIATE")?.execute([]).map(drop)
}

/// `BEGIN IMMEDIATE` on `db`; while another connection holds the write lock, tried again with
/// a growing pause (without blocking the thread), for at most [`BUSY_TIMEOUT`].
async fn begin_waiting(
    db: tokio::sync::MutexGuard<'_, rusqlite::Connection>,
) -> (
    tokio::sync::MutexGuard<'_, rusqlite::Connection>,
    rusqlite::Result<()>,
) {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_micros(500);
    loop {
        match begin(&db) {
            Ok(()) => return (db, Ok(())),
            Err(error) if is_busy(&error) && tokio::time::Instant::now() < deadline => {}
            Err(error) => return (db, Err(error)),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

/// [`transaction`] on a borrowed sqlx connection (an in-memory database).
async fn borrowed_transaction<T, E, F>(pool: &SqlitePool, work: F) -> Result<T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let mut connection = pool.acquire().await.map_err(E::from)?;
    direct(&mut connection, |db| {
        begin(db).map_err(|e| E::from(sqlx_error(e)))?;
        let open = Open {
            db,
            committed: false,
        };
        match work(db) {
            Ok(value) => open
                .commit()
                .map(|()| value)
                .map_err(|e| E::from(sqlx_error(e))),
            Err(error) => Err(error),
        }
    })
    .await
}

/// The process's own connection to a service's database file, for [`transaction`] and
/// [`call`]: a rusqlite connection behind an async, first-come-first-served lock. Borrowing
/// sqlx's connection costs round trips to its worker thread (the pool's ping when it hands the
/// connection out and again when it takes it back, and the handle's lock): measured on this
/// machine, 88 µs a short write transaction through the pool against 33 µs on an owned
/// connection, with 16 tasks contending (`cargo bench -p flotilla-kit --features sqlite --bench
/// direct -- borrow`), and the one connection is what a service's writes queue for.
///
/// A service's hot paths all write through here, so within a process they still queue in one
/// line and never compete for SQLite's write lock; sqlx's connection keeps the rest (reads,
/// migrations, the statement-by-statement paths shared with PostgreSQL), and where it does write
/// meanwhile, the other side waits for the lock as between two instances of a service.
///
/// One writer per database file and process, found by the pool's file name. It lives as long as
/// the sqlx connection it was made from: that connection owns it (as it owns its view of the
/// handle), so closing the pool closes it, before sqlx closes its own handle.
pub struct Writer {
    db: tokio::sync::Mutex<rusqlite::Connection>,
    /// The work of [`grouped`] calls waiting for the next group.
    waiting: Mutex<Vec<Job>>,
}

/// Every live writer, by its pool's file name.
static WRITERS: LazyLock<Mutex<HashMap<std::path::PathBuf, Weak<Writer>>>> =
    LazyLock::new(Mutex::default);

impl Writer {
    /// The writer of `pool`'s database; `None` for an in-memory one. Made at the first call: a
    /// borrow of sqlx's connection learns the file's path and hands the new writer to it.
    async fn of(pool: &SqlitePool) -> Result<Option<Arc<Self>>, sqlx::Error> {
        let key = pool.connect_options().get_filename().to_owned();
        if let Some(writer) = WRITERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .and_then(Weak::upgrade)
        {
            return Ok(Some(writer));
        }
        let mut connection = pool.acquire().await?;
        let mut handle = connection.lock_handle().await?;
        let kept = view(&mut handle).map_err(sqlx_error)?;
        let writer = match kept.writer.get() {
            Some(writer) => writer.clone(),
            None => {
                let path = kept
                    .db
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .path()
                    .filter(|path| !path.is_empty())
                    .map(std::path::PathBuf::from);
                let made = match path {
                    None => None,
                    Some(path) => Some(Arc::new(Self::open(&path).map_err(sqlx_error)?)),
                };
                // The handle's lock keeps other borrowers out: this is the first and only set.
                let _ = kept.writer.set(made.clone());
                made
            }
        };
        drop(handle);
        if let Some(writer) = &writer {
            let mut writers = WRITERS.lock().unwrap_or_else(PoisonError::into_inner);
            writers.retain(|_, writer| writer.strong_count() > 0);
            writers.insert(key, Arc::downgrade(writer));
        }
        Ok(writer)
    }

    /// Opens the connection with the settings of [`open`]'s (WAL is the file's already).
    fn open(path: &Path) -> rusqlite::Result<Self> {
        let db = rusqlite::Connection::open(path)?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        // `transaction` waits for the lock itself, without blocking the thread.
        db.busy_timeout(Duration::ZERO)?;
        db.set_prepared_statement_cache_capacity(DIRECT_STATEMENT_CACHE);
        Ok(Self {
            db: tokio::sync::Mutex::new(db),
            waiting: Mutex::default(),
        })
    }
}

/// A write transaction begun on a borrowed handle; rolled back when dropped uncommitted.
struct Open<'c> {
    db: &'c rusqlite::Connection,
    committed: bool,
}

impl Open<'_> {
    fn commit(mut self) -> rusqlite::Result<()> {
        self.db.prepare_cached("COMMIT")?.execute([])?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.db.is_autocommit() {
            let rolled_back = self
                .db
                .prepare_cached("ROLLBACK")
                .and_then(|mut statement| statement.execute([]));
            if let Err(error) = rolled_back {
                tracing::error!(%error, "a direct transaction could not roll back");
            }
        }
    }
}

/// Prepared statements kept per connection by direct calls.
const DIRECT_STATEMENT_CACHE: usize = 256;

/// What an sqlx connection keeps for direct calls: a rusqlite view of its handle, with the
/// statements direct calls prepared, and the process's [`Writer`] to its file, once made.
struct Kept {
    db: Mutex<rusqlite::Connection>,
    writer: std::sync::OnceLock<Option<Arc<Writer>>>,
}

type View = Arc<Kept>;

/// The view of every live connection, by its handle's address. The connection itself owns its
/// view (see [`view`]); this map only finds it, and forgets it when it is gone.
static VIEWS: LazyLock<Mutex<HashMap<usize, Weak<Kept>>>> = LazyLock::new(Mutex::default);

/// The view of `handle`'s connection, made at its first borrow and kept across borrows, so that a
/// statement is prepared once per connection, not once per borrow (preparing was half the cost
/// of a short statement, `perf` on the order service).
///
/// sqlx closes a connection with `sqlite3_close`, which fails (and sqlx panics) while statements
/// prepared outside it live. So the connection itself owns its view: the view rides in the
/// connection's rollback hook (a no-op), and sqlx drops its hooks before it closes the handle,
/// on the thread that holds it. Dropping the view finalizes its statements; the handle then
/// closes cleanly. Whoever replaces the rollback hook drops the view the same way, and the next
/// borrow makes a new one.
fn view(handle: &mut LockedSqliteHandle<'_>) -> Result<View, rusqlite::Error> {
    let raw = handle.as_raw_handle();
    let address = raw.as_ptr() as usize;
    let mut views = VIEWS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(view) = views.get(&address).and_then(Weak::upgrade) {
        return Ok(view);
    }
    // SAFETY: `handle` keeps sqlx's worker thread off this database handle until it drops, and
    // every use of the view happens under such a lock (`direct`, `transaction`), or while sqlx
    // drops the connection's hooks on the thread that owns it. `from_handle` does not take
    // ownership: dropping the view finalizes only the statements it prepared and leaves the
    // handle open. Both crates link the one libsqlite3-sys of the build (0.37).
    #[allow(unsafe_code)]
    let connection = unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) }?;
    connection.set_prepared_statement_cache_capacity(DIRECT_STATEMENT_CACHE);
    let view = Arc::new(Kept {
        db: Mutex::new(connection),
        writer: std::sync::OnceLock::new(),
    });
    let owner = Arc::clone(&view);
    handle.set_rollback_hook(move || {
        let _owned_by_the_connection = &owner;
    });
    views.retain(|_, view| view.strong_count() > 0);
    views.insert(address, Arc::downgrade(&view));
    Ok(view)
}

/// Binds `values` to `statement`'s parameters the way sqlx binds them, so that the SQL text sqlx
/// runs runs here unchanged: value *n* goes to `$n` or `?n` wherever it appears (whatever order
/// they first appear in), or else to the *n*-th parameter (a plain `?`). Every parameter must
/// get a value.
pub fn bind_numbered(
    statement: &mut rusqlite::Statement<'_>,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    if statement.parameter_count() != values.len() {
        return Err(rusqlite::Error::InvalidParameterCount(
            values.len(),
            statement.parameter_count(),
        ));
    }
    for index in 1..=values.len() {
        // `$n` and `?n` name value n; a plain `?` (no name) takes the value of its position.
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .map_or(Ok(index), str::parse::<usize>)
            .map_err(|_| rusqlite::Error::InvalidParameterName(format!("parameter {index}")))?;
        let value = values
            .get(number.wrapping_sub(1))
            .ok_or(rusqlite::Error::InvalidParameterCount(number, values.len()))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Runs one statement (`$n` parameters, [`bind_numbered`]), prepared once per connection
/// ([`direct`]); returns the rows it changed.
pub fn execute(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<usize> {
    let mut statement = db.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    statement.raw_execute()
}

/// Runs one query (`$n` parameters, [`bind_numbered`]) and maps every row with `row`.
pub fn query<T>(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    query_at_most(db, sql, values, usize::MAX, row)
}

/// [`query`] for at most `max` rows: it stops stepping the statement there.
///
/// Use it instead of a `LIMIT $n`: SQLite prepares a statement whose `LIMIT` is a bound
/// parameter again every time it runs (its planner uses the value, so binding one expires the
/// plan), which made parsing the largest cost of the relay's read (`perf`; the statement's
/// `StatementStatus::RePrepare` counts one per run). Without `LIMIT`, in an order an index gives
/// (no sort), SQLite produces rows only as they are stepped, and a read stopped here costs what
/// a limited one does.
pub fn query_at_most<T>(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
    max: usize,
    mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = db.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while out.len() < max
        && let Some(next) = rows.next()?
    {
        out.push(row(next)?);
    }
    Ok(out)
}

/// [`query`] for at most one row.
pub fn query_optional<T>(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut statement = db.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    let mut rows = statement.raw_query();
    rows.next()?.map(row).transpose()
}

/// A rusqlite error as an sqlx one, keeping SQLite's code and its kind (a unique violation stays
/// one), so callers handle both alike.
pub fn sqlx_error(error: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Database(Box::new(DirectError(error)))
}

/// An error of a direct SQLite call ([`direct`]), carried as an sqlx database error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DirectError(pub rusqlite::Error);

impl DatabaseError for DirectError {
    fn message(&self) -> &str {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message,
            rusqlite::Error::SqliteFailure(failure, None) => {
                rusqlite::ffi::code_to_str(failure.extended_code)
            }
            _ => "direct SQLite call failed",
        }
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.0
            .sqlite_error()
            .map(|failure| Cow::Owned(failure.extended_code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.0.sqlite_error().map(|failure| failure.extended_code) {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                ErrorKind::UniqueViolation
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
