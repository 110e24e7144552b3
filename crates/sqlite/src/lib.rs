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
//! (see `handle`).
//!
//! Checkpoints (copying the write-ahead log back into the file) run on a thread of their own per
//! database, never inside a commit: see `checkpoints` for why and how the log still starts over
//! under continuous writes.
//!
//! Start-up work (migrations, seeding) runs under an exclusive lock on `<file>.lock`, so that
//! instances starting together do not race to create the same tables: SQLite answers such
//! races with `database is locked` at once, without waiting for its busy timeout.
//!
//! Every operation is one function on a connection (`&`[`Connection`]); callers choose where it
//! runs: [`transaction`], [`grouped`] or [`call`] on the process's own connection, or [`direct`]
//! inside a transaction begun through sqlx.
//!
//! | module | what it owns |
//! | --- | --- |
//! | `open` | [`open`]: the file, its settings, the set-up lock, the migrations |
//! | `writer` | the process's [`Writer`] and [`transaction`], [`call`], [`grouped`] |
//! | `handle` | [`direct`] on an sqlx connection's borrowed handle: the workspace's only `unsafe` |
//! | `query` | [`execute`], [`query`], [`query_at_most`], [`query_optional`], [`bind_numbered`], [`sqlx_error`] |
//! | `checkpoints` | the checkpoint thread, off every writer's path |
//!
//! It does not know what a service stores: schemas and statements are the callers'.

mod checkpoints;
// The workspace's one `unsafe` block: its safety argument is the module's documentation.
#[allow(unsafe_code)]
mod handle;
mod open;
mod query;
mod writer;

pub use checkpoints::{CATCH_UP_FRAMES, LOG_SIZE_LIMIT, PASS_INTERVAL};
pub use handle::direct;

/// Registers the HELP text and unit of every SQLite engine metric (call it once the process's
/// recorder exists).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "sqlite_checkpoints_total",
        Unit::Count,
        "WAL checkpoints run off the writer, by database and kind (pass, catch_up)"
    );
    describe_histogram!(
        "sqlite_checkpoint_writer_held_seconds",
        Unit::Seconds,
        "Time a checkpoint held the writer, by database"
    );
    describe_counter!(
        "sqlite_grouped_commits_total",
        Unit::Count,
        "Commits of the writer's groups of calls"
    );
    describe_counter!(
        "sqlite_grouped_calls_total",
        Unit::Count,
        "Calls the writer ran inside grouped commits"
    );
}
pub use open::{CONNECTIONS, Opening, open};
pub use query::{
    DirectError, bind_numbered, execute, query, query_at_most, query_optional, sqlx_error,
};
pub use writer::{Writer, call, grouped, transaction};

/// A connection for direct calls: every operation on a service's database takes one.
pub type Connection = rusqlite::Connection;
