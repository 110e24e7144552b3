//! Checkpoints run on a thread of their own, never inside a commit, and the write-ahead log
//! still starts over while writes go on without a pause. One test in this file: it counts the
//! process's checkpoint threads.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_sqlite::{CATCH_UP_FRAMES, LOG_SIZE_LIMIT, sqlx_error};
use flotilla_testkit::eventually;

/// Threads of this process named as the checkpoint threads are.
fn checkpoint_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|name| name.trim() == "db-checkpoints")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits (5 s at most) until there are `expected` checkpoint threads: a thread is named by
/// itself once it runs (std names a spawned thread from inside it), so right after `open` (or
/// the pool's close) the count may not have caught up yet.
async fn checkpoint_threads_become(expected: usize, what: &str) {
    eventually(Duration::from_secs(5), what, || async {
        match checkpoint_threads() {
            now if now == expected => Ok(()),
            now => Err(format!("{now} checkpoint threads, not {expected}")),
        }
    })
    .await;
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_off_the_writer_and_starts_over_under_continuous_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).expect("migrations dir");
    std::fs::write(
        migrations.join("0001_blobs.sql"),
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
         WITH RECURSIVE n(id) AS (SELECT 0 UNION ALL SELECT id + 1 FROM n WHERE id < 15)
         INSERT INTO blobs (id, data) SELECT id, x'' FROM n;",
    )
    .expect("migration");
    let migrator = sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .expect("migrator");
    let file = dir.path().join("blobs.db");
    let log = dir.path().join("blobs.db-wal");
    let before = checkpoint_threads();
    let pool = flotilla_sqlite::open(&file, &migrator)
        .await
        .expect("open")
        .ready();
    checkpoint_threads_become(before + 1, "one checkpoint thread per database").await;

    // Neither of the process's connections checkpoints in its commits.
    let (sqlx_side,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
        .fetch_one(&pool)
        .await
        .expect("pragma");
    let writer_side: i64 = flotilla_sqlite::call(&pool, |db| {
        db.pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .map_err(sqlx_error)
    })
    .await
    .expect("pragma");
    assert_eq!((sqlx_side, writer_side), (0, 0));

    // Writes without a pause, 64 KiB (17 pages) a transaction, until the log file is cut back:
    // only a log that started over is cut. Without the catch-up it would only grow.
    let file_before = size(&file);
    let most_frames = 4 * CATCH_UP_FRAMES;
    let (mut largest, mut frames, mut cut) = (0, 0, false);
    let started = Instant::now();
    while frames < most_frames {
        flotilla_sqlite::transaction(&pool, |db| {
            db.execute(
                "UPDATE blobs SET data = randomblob(65536) WHERE id = ?1",
                [frames % 16],
            )
            .map_err(sqlx_error)
        })
        .await
        .expect("write");
        frames += 17;
        let now = size(&log);
        if now < largest {
            cut = true;
            break;
        }
        largest = now;
    }
    assert!(
        cut,
        "the log never started over: {largest} bytes after {frames} pages in {:?}",
        started.elapsed()
    );
    let limit = u64::try_from(LOG_SIZE_LIMIT).expect("a positive limit");
    assert!(
        largest < 3 * limit,
        "the log reached {largest} bytes (catch-up from {limit})"
    );
    assert!(
        size(&file) > file_before + 512 * 1024,
        "the checkpoints copied the pages into the database file ({} → {} bytes)",
        file_before,
        size(&file)
    );

    // The thread goes with the pool.
    pool.close().await;
    checkpoint_threads_become(before, "the checkpoint thread stopped").await;
}
