//! The borrowed handle: direct SQLite calls (rusqlite) on an sqlx connection's own handle.
//!
//! The only `unsafe` code of the workspace lives here, in one call:
//! `rusqlite::Connection::from_handle` on the raw `sqlite3*` of an sqlx connection. It owns
//! [`direct`] and the *view* of a connection (a rusqlite connection over sqlx's handle, kept
//! with the statements it prepared); it does not own transactions or the process's writer
//! (`writer`).
//!
//! # Safety argument
//!
//! A rusqlite connection made from a handle it does not own is sound as long as:
//!
//! 1. **no other thread uses the handle meanwhile.** Every use of a view happens while the
//!    caller holds sqlx's [`LockedSqliteHandle`] (in [`direct`], and in `writer`'s `Writer::of`),
//!    which keeps sqlx's worker thread off the handle until it drops; the view's own `Mutex`
//!    serialises the (already exclusive) users within. The one other use is the view's drop,
//!    which sqlx performs while it drops the connection's hooks, on the thread that owns the
//!    connection, before it closes the handle;
//! 2. **the handle outlives the view.** The connection owns its view: the view rides in the
//!    connection's rollback hook (a no-op), which sqlx drops before `sqlite3_close`. Dropping the
//!    view finalizes the statements it prepared (`sqlite3_close` would fail while they live) and
//!    does not close the handle (`from_handle` does not take ownership). [`direct`] drops its
//!    reference to the view before it gives the handle back;
//! 3. **both sides speak to the same library.** sqlx-sqlite and rusqlite link the one
//!    libsqlite3-sys of the build (0.37: the workspace pins rusqlite to match).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use sqlx::SqliteConnection;
use sqlx::sqlite::LockedSqliteHandle;

use crate::query::sqlx_error;

/// Runs `work` on `connection`'s SQLite handle with direct calls (rusqlite), on the calling
/// thread: one round trip to sqlx's worker thread, to borrow the handle, however many statements
/// `work` runs. Within a transaction begun through sqlx, `work` runs inside it; it must not
/// begin, commit or roll back itself.
///
/// `work`'s errors are its own (`E`, which an sqlx error converts into); [`sqlx_error`] turns a
/// rusqlite error into an sqlx one. `work` holds the handle: it must be short (a transaction's statements, not a wait), since it
/// runs on an async worker thread and every other user of the connection queues behind it.
/// Statements `work` prepares with [`rusqlite::Connection::prepare_cached`] (as [`execute`](crate::execute),
/// [`query`](crate::query) and [`query_optional`](crate::query_optional) do) stay prepared with the connection, from one call to the
/// next: a statement is parsed once per connection.
///
/// Run a loop's statements in one call, not one call per iteration: hundreds of calls back to
/// back on one connection, with no sqlx statement between them, were seen to wedge it (sqlx's
/// worker can fall behind on the unlock commands each borrow sends, until its command channel
/// is full while the borrower holds the handle; `flotilla-messaging`'s tests once did so).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use sqlx::Connection;
/// let mut connection = sqlx::SqliteConnection::connect("sqlite::memory:").await.unwrap();
/// let answer = flotilla_sqlite::direct(&mut connection, |db| {
///     db.execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (41), (1);")
///         .and_then(|()| db.query_row("SELECT SUM(n) FROM t", [], |row| row.get::<_, i64>(0)))
///         .map_err(flotilla_sqlite::sqlx_error)
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
    tracing::debug!(target: "flotilla_sqlite::direct", "direct SQLite call");
    result
}

/// Prepared statements kept per connection by direct calls.
pub(crate) const DIRECT_STATEMENT_CACHE: usize = 256;

/// What an sqlx connection keeps for direct calls: a rusqlite view of its handle, with the
/// statements direct calls prepared, and whatever else must live and die with the connection,
/// set once (the process's writer to the file, `writer`'s `Writer::of`). This module does not
/// know what that is, only that it is dropped with the view.
pub(crate) struct Kept {
    pub(crate) db: Mutex<rusqlite::Connection>,
    pub(crate) owned: std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

pub(crate) type View = Arc<Kept>;

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
pub(crate) fn view(handle: &mut LockedSqliteHandle<'_>) -> Result<View, rusqlite::Error> {
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
    let connection = unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) }?;
    connection.set_prepared_statement_cache_capacity(DIRECT_STATEMENT_CACHE);
    let view = Arc::new(Kept {
        db: Mutex::new(connection),
        owned: std::sync::OnceLock::new(),
    });
    let owner = Arc::clone(&view);
    handle.set_rollback_hook(move || {
        let _owned_by_the_connection = &owner;
    });
    views.retain(|_, view| view.strong_count() > 0);
    views.insert(address, Arc::downgrade(&view));
    Ok(view)
}
