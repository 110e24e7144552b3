//! A temporary data directory, removed when dropped, with the SQLite databases and the settings
//! the tests of a crate or a service open in it; and an in-memory database for the tests that
//! need no file.

use std::path::Path;
use std::time::Duration;

use std::fmt::Debug;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// A temporary data directory (removed when dropped).
#[derive(Debug)]
pub struct TempData {
    dir: tempfile::TempDir,
}

impl TempData {
    /// A new, empty directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Opens (creating it) the database `NAME.db` in the directory as the services do: WAL
    /// journal, 10 s busy timeout.
    pub async fn pool(&self, name: &str) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(self.path().join(format!("{name}.db")))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        SqlitePool::connect_with(options).await.expect("sqlite")
    }

    /// A new directory with the database a service opens in it: `open` is the service's
    /// `open(&settings)` (such as `flotilla_inventory::open`). The directory must outlive the
    /// pool.
    pub async fn with_database<E: Debug>(
        open: impl AsyncFnOnce(&flotilla_kit::ServerSettings) -> Result<SqlitePool, E>,
    ) -> (SqlitePool, Self) {
        let data = Self::new();
        let pool = open(&data.settings()).await.expect("database");
        (pool, data)
    }

    /// The default server section of the settings, with this data directory (a service's
    /// `open(&settings)` then creates its database here).
    pub fn settings(&self) -> flotilla_kit::ServerSettings {
        flotilla_kit::ServerSettings {
            data_dir: self.path().to_owned(),
            ..flotilla_kit::ServerSettings::default()
        }
    }
}

/// An empty in-memory SQLite database behind a pool of one connection (a second connection
/// would open a database of its own), gone when the pool closes.
pub async fn memory_database() -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .expect("open")
}

impl Default for TempData {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_and_settings_point_into_the_directory() {
        let data = TempData::new();
        let pool = data.pool("example").await;
        crate::by_hand(&pool, "CREATE TABLE t (x INTEGER)").await;
        assert!(data.path().join("example.db").exists());
        assert_eq!(data.settings().data_dir, data.path());
        pool.close().await;
    }
}
