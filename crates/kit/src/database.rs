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
//! Start-up work (migrations, seeding) runs under an exclusive lock on `<file>.lock`, so that
//! instances starting together do not race to create the same tables: SQLite answers such
//! races with `database is locked` at once, without waiting for its busy timeout.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

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
