//! Checkpoints off the writer's path.
//!
//! In WAL mode a commit appends pages to `<file>-wal`; a *checkpoint* copies them back into the
//! database file, and once every page is copied the next writer starts the log over. By default
//! SQLite checkpoints inside the commit that takes the log past 1,000 pages: that commit then
//! syncs the log, copies up to 4 MiB of pages and syncs the database file before it returns,
//! holding the process's [`Writer`] (and the async worker thread it runs on) all along. At 500
//! sagas/s the order service did so some 28 times a second (171 fsyncs in 3 s, two a checkpoint),
//! and an fsync took 0.9 ms at the median and 7 ms at worst (`strace -T`), with every write of
//! the service queued behind it.
//!
//! So the connections of a database opened with [`crate::open`] never checkpoint
//! (`wal_autocheckpoint = 0`), and a thread of its own does, on a third connection:
//!
//! * every [`PASS_INTERVAL`] a *passive* checkpoint copies what was committed since the last
//!   one, while writers go on appending (the two syncs happen on this thread, off every other
//!   path). It also bounds what a power loss can take: the log is synced at least that often
//!   under load (a process crash loses nothing either way);
//! * under continuous writes a passive checkpoint never catches up with the log's end, so the
//!   log would never start over. Once the log holds [`CATCH_UP_FRAMES`] pages, the thread runs
//!   one more pass to copy what came in meanwhile, then a last one holding the writer: a few
//!   milliseconds' pages. The next transaction starts the log over, and cuts the file back to
//!   [`LOG_SIZE_LIMIT`].
//!
//! Another process writing the same file (a second instance of the service) is not held by
//! this process's writer; the last pass may then leave pages behind, and a later catch-up takes
//! them.

use std::path::Path;
use std::sync::Weak;
use std::time::{Duration, Instant};

use crate::writer::Writer;

/// How often the thread copies the log's new pages into the database file.
pub const PASS_INTERVAL: Duration = Duration::from_millis(100);

/// Pages in the log (of 4 KiB) from which the thread makes the log start over.
pub const CATCH_UP_FRAMES: i64 = 8192;

/// The size the log file is cut back to when it starts over (`journal_size_limit`), so that a
/// burst does not leave a large file behind: [`CATCH_UP_FRAMES`] pages.
pub const LOG_SIZE_LIMIT: i64 = CATCH_UP_FRAMES * 4096;

/// What a checkpoint reported: pages in the log, and pages of it copied into the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpointed {
    log: i64,
    copied: i64,
}

/// One passive checkpoint on `db` (`PRAGMA wal_checkpoint(PASSIVE)`).
fn pass(db: &rusqlite::Connection) -> rusqlite::Result<Checkpointed> {
    db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(Checkpointed {
            log: row.get(1)?,
            copied: row.get(2)?,
        })
    })
}

/// Starts the checkpoint thread of the database at `path`, whose process writes through
/// `writer`; it stops once `writer` is gone (its pool closed).
pub(super) fn start(path: &Path, writer: Weak<Writer>) -> std::io::Result<()> {
    let db = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
    // Synced as every connection of the file is (a checkpoint syncs the log before it copies,
    // the file after).
    db.pragma_update(None, "synchronous", "NORMAL")
        .map_err(std::io::Error::other)?;
    db.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(std::io::Error::other)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::thread::Builder::new()
        .name("db-checkpoints".into())
        .spawn(move || run(&db, &writer, &name))
        .map(drop)
}

fn run(db: &rusqlite::Connection, writer: &Weak<Writer>, name: &str) {
    let passes = metrics::counter!("sqlite_checkpoints_total", "database" => name.to_owned(), "kind" => "pass");
    let catch_ups = metrics::counter!("sqlite_checkpoints_total", "database" => name.to_owned(), "kind" => "catch_up");
    let held =
        metrics::histogram!("sqlite_checkpoint_writer_held_seconds", "database" => name.to_owned());
    let mut last = None;
    loop {
        std::thread::sleep(PASS_INTERVAL);
        if writer.strong_count() == 0 {
            return;
        }
        let checkpointed = match pass(db) {
            Ok(checkpointed) => checkpointed,
            Err(error) => {
                tracing::warn!(%error, database = name, "a background checkpoint failed");
                continue;
            }
        };
        if last != Some(checkpointed) && checkpointed.log > 0 {
            passes.increment(1);
        }
        last = Some(checkpointed);
        if checkpointed.log < CATCH_UP_FRAMES {
            continue;
        }
        // What was committed during the pass, without holding anyone…
        if let Err(error) = pass(db) {
            tracing::warn!(%error, database = name, "a background checkpoint failed");
            continue;
        }
        let Some(writer) = writer.upgrade() else {
            return;
        };
        // …and what was committed during that one, holding the process's writer: after it,
        // every page of the log is in the file and the next transaction starts the log over.
        let holding = writer.db.blocking_lock();
        let since = Instant::now();
        let last_pass = pass(db);
        drop(holding);
        held.record(since.elapsed().as_secs_f64());
        match last_pass {
            Ok(checkpointed) => {
                catch_ups.increment(1);
                last = Some(checkpointed);
            }
            Err(error) => {
                tracing::warn!(%error, database = name, "a background checkpoint failed");
            }
        }
    }
}
