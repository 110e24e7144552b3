//! The process's own connection to a service's database file ([`Writer`]) and the write paths
//! that run on it: [`transaction`], [`call`] and the group commit [`grouped`].
//!
//! It owns `BEGIN` (waiting for another connection's lock without blocking the thread), commit,
//! rollback and the savepoints of a group; it does not touch sqlx's handle except through
//! [`crate::direct`] and the view (`handle`), for an in-memory database and to learn the file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::SqlitePool;

use crate::handle::{DIRECT_STATEMENT_CACHE, direct, view};
use crate::query::sqlx_error;

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
    tracing::debug!(target: "flotilla_sqlite::direct", "direct SQLite call");
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
    tracing::debug!(target: "flotilla_sqlite::direct", "direct SQLite call");
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
/// connection, with 16 tasks contending (`cargo bench -p flotilla-sqlite --bench direct --
/// borrow`), and the one connection is what a service's writes queue for.
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
    pub(crate) db: tokio::sync::Mutex<rusqlite::Connection>,
    /// The work of [`grouped`] calls waiting for the next group.
    waiting: Mutex<Vec<Job>>,
}

/// Every live writer, by its pool's file name.
static WRITERS: LazyLock<Mutex<HashMap<std::path::PathBuf, Weak<Writer>>>> =
    LazyLock::new(Mutex::default);

impl Writer {
    /// The writer of `pool`'s database; `None` for an in-memory one. Made at the first call: a
    /// borrow of sqlx's connection learns the file's path and hands the new writer to it.
    pub(crate) async fn of(pool: &SqlitePool) -> Result<Option<Arc<Self>>, sqlx::Error> {
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
        // The connection's view owns the writer (it is set once, here, and only ever to an
        // `Option<Arc<Writer>>`), so the writer closes with sqlx's connection.
        let known = kept
            .owned
            .get()
            .and_then(|owned| owned.downcast_ref::<Option<Arc<Self>>>());
        let writer = match known {
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
                let _ = kept.owned.set(Box::new(made.clone()));
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
