//! Opening a service's database: the file, its settings, the set-up lock and the migrations.
//!
//! It owns the pool's settings (one connection, WAL, the busy timeout, the statement cache) and
//! starts the database's checkpoint thread; it does not run a service's statements.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::checkpoints;
use crate::query::sqlx_error;
use crate::writer::Writer;

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
/// (`checkpoints`: every [`PASS_INTERVAL`](crate::PASS_INTERVAL), and the log starts over from [`CATCH_UP_FRAMES`](crate::CATCH_UP_FRAMES)
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
