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
//! A transaction that runs many statements can run them as direct SQLite calls ([`direct`]): one
//! round trip to sqlx's worker thread (to borrow the handle) instead of one per statement. On
//! this 2-core machine the round trips, not SQLite, were most of the order service's time (two
//! thread switches each; `perf` showed 58 % of its CPU in the kernel, switching). The statements
//! direct calls prepare stay prepared with the connection, from one borrow to the next (parsing
//! is half of a short statement's cost): the connection owns them and finalizes them before sqlx
//! closes it (see `view`).
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
/// `migrations`.
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
        // Every statement a service runs stays prepared: evicting one costs a parse and plan
        // at its next use (sqlx's default keeps 100).
        .statement_cache_capacity(STATEMENT_CACHE);
    let pool = SqlitePoolOptions::new()
        .max_connections(CONNECTIONS)
        .connect_with(options)
        .await?;
    migrations.run(&pool).await?;
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
    let result = work(&view.lock().unwrap_or_else(PoisonError::into_inner));
    // The view before the handle: sqlx's worker may drop the connection once it has it back.
    drop(view);
    drop(handle);
    // One line per borrow, as sqlx logs one per statement (`scripts/statements-per-saga.sh`).
    tracing::debug!(target: "flotilla_kit::database::direct", "direct SQLite call");
    result
}

/// Runs `work` as one write transaction (`BEGIN IMMEDIATE` … `COMMIT`) on a connection of `pool`,
/// entirely as direct SQLite calls ([`direct`]): one round trip to sqlx's worker thread for the
/// whole transaction, where `pool.begin()`, the work and `commit()` take three. The transaction
/// commits when `work` returns `Ok`, and rolls back when it returns `Err` or panics: with no
/// `.await` between its `BEGIN` and its `COMMIT`, a cancelled caller cannot leave it open.
/// `BEGIN`, `COMMIT` and `ROLLBACK` are prepared statements kept with the others.
pub async fn transaction<T, E, F>(pool: &SqlitePool, work: F) -> Result<T, E>
where
    F: FnOnce(&rusqlite::Connection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let mut connection = pool.acquire().await.map_err(E::from)?;
    let mut handle = connection.lock_handle().await.map_err(E::from)?;
    let view = view(&mut handle).map_err(|e| E::from(sqlx_error(e)))?;
    let result = {
        let db = view.lock().unwrap_or_else(PoisonError::into_inner);
        match Open::begin(&db) {
            Ok(open) => match work(&db) {
                Ok(value) => open
                    .commit()
                    .map(|()| value)
                    .map_err(|e| E::from(sqlx_error(e))),
                // Dropping `open` rolls the transaction back (on a panic as well).
                Err(error) => Err(error),
            },
            Err(error) => Err(E::from(sqlx_error(error))),
        }
    };
    drop(view);
    drop(handle);
    tracing::debug!(target: "flotilla_kit::database::direct", "direct SQLite call");
    result
}

/// A write transaction begun on a borrowed handle; rolled back when dropped uncommitted.
struct Open<'c> {
    db: &'c rusqlite::Connection,
    committed: bool,
}

impl<'c> Open<'c> {
    fn begin(db: &'c rusqlite::Connection) -> rusqlite::Result<Self> {
        db.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Self {
            db,
            committed: false,
        })
    }

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

/// A rusqlite view of one sqlx connection's handle, with the statements direct calls prepared.
type View = Arc<Mutex<rusqlite::Connection>>;

/// The view of every live connection, by its handle's address. The connection itself owns its
/// view (see [`view`]); this map only finds it, and forgets it when it is gone.
static VIEWS: LazyLock<Mutex<HashMap<usize, Weak<Mutex<rusqlite::Connection>>>>> =
    LazyLock::new(Mutex::default);

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
    let view = Arc::new(Mutex::new(connection));
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
    mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = db.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(next) = rows.next()? {
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
