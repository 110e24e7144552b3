//! `flotilla_sqlite::grouped`: calls waiting for the writer commit as one transaction, each in a
//! savepoint of its own.

use std::time::Duration;

use flotilla_sqlite::{grouped, sqlx_error};
use sqlx::SqlitePool;
use tokio::task::JoinSet;

async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).expect("migrations dir");
    std::fs::write(
        migrations.join("0001_rows.sql"),
        "CREATE TABLE parents (id INTEGER PRIMARY KEY);
         CREATE TABLE rows (
             id     INTEGER PRIMARY KEY,
             parent INTEGER REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
         );",
    )
    .expect("migration");
    let migrator = sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .expect("migrator");
    flotilla_sqlite::open(&dir.path().join("grouped.db"), &migrator)
        .await
        .expect("open")
        .ready()
}

/// Holds the process's writer for `how_long` from a task of its own; returns once it holds it.
async fn hold_writer(pool: &SqlitePool, how_long: Duration) -> tokio::task::JoinHandle<()> {
    let (holding, held) = tokio::sync::oneshot::channel();
    let pool = pool.clone();
    let holder = tokio::spawn(async move {
        flotilla_sqlite::call(&pool, move |_db| {
            let _ = holding.send(());
            std::thread::sleep(how_long);
            Ok::<_, sqlx::Error>(())
        })
        .await
        .expect("hold");
    });
    held.await.expect("the holder took the writer");
    holder
}

/// Spawns `call` for each of `inputs` (with a clone of the pool) while the writer is held, so
/// that the calls queue behind it and go in one group; their outcomes, in the order they ended.
async fn queued<I, T, Fut>(
    pool: &SqlitePool,
    inputs: impl IntoIterator<Item = I>,
    call: impl Fn(SqlitePool, I) -> Fut,
) -> Vec<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let holder = hold_writer(pool, Duration::from_millis(300)).await;
    let mut calls = JoinSet::new();
    for input in inputs {
        calls.spawn(call(pool.clone(), input));
    }
    holder.await.expect("holder");
    calls.join_all().await
}

async fn ids(pool: &SqlitePool) -> Vec<i64> {
    flotilla_testkit::numbers(pool, "SELECT id FROM rows ORDER BY id").await
}

fn insert(
    id: i64,
    parent: Option<i64>,
) -> impl FnOnce(&rusqlite::Connection) -> Result<(), sqlx::Error> {
    move |db| {
        db.execute(
            "INSERT INTO rows (id, parent) VALUES (?1, ?2)",
            (id, parent),
        )
        .map(drop)
        .map_err(sqlx_error)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_wait_together_commit_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = pool(&dir).await;
    // Queued while the writer is held, three calls go in one group. The first leaves a row whose
    // parent does not exist: a deferred foreign key, checked only at the commit. The commit
    // fails, and with it all three; alone, the two others would have committed.
    let outcomes = queued(
        &pool,
        [(1, Some(99)), (2, None), (3, None)],
        |pool, (id, parent)| async move { grouped(&pool, insert(id, parent)).await },
    )
    .await;
    assert_eq!(outcomes.len(), 3);
    for outcome in &outcomes {
        let error = outcome.as_ref().expect_err("the group's commit failed");
        assert!(
            error.to_string().contains("FOREIGN KEY"),
            "the commit's error, for every call of the group: {error}"
        );
    }
    assert!(
        ids(&pool).await.is_empty(),
        "nothing of the group committed"
    );

    // Alone, a call commits on its own.
    grouped(&pool, insert(4, None)).await.expect("alone");
    assert_eq!(ids(&pool).await, vec![4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_call_is_rolled_back_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = pool(&dir).await;
    let outcomes = queued(&pool, 1..=30_i64, |pool, id| async move {
        let outcome = grouped(&pool, move |db| {
            insert(id, None)(db)?;
            match id % 10 {
                // Its row is written, then the work fails: the savepoint takes it back.
                3 => Err(sqlx::Error::Protocol(format!("call {id} refuses"))),
                7 => panic!("call {id} panics"),
                _ => Ok(id),
            }
        })
        .await;
        (id, outcome)
    })
    .await;
    let mut committed = Vec::new();
    for (id, outcome) in outcomes {
        match id % 10 {
            3 => assert!(
                matches!(&outcome, Err(sqlx::Error::Protocol(message)) if message.contains("refuses")),
                "call {id}: its own error, {outcome:?}"
            ),
            7 => assert!(
                matches!(outcome, Err(sqlx::Error::WorkerCrashed)),
                "call {id}: a panic is its error, {outcome:?}"
            ),
            _ => {
                assert_eq!(outcome.expect("committed"), id);
                committed.push(id);
            }
        }
    }
    committed.sort_unstable();
    assert_eq!(committed.len(), 24);
    assert_eq!(
        ids(&pool).await,
        committed,
        "exactly the calls that succeeded"
    );
}
