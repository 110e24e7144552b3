//! `database::direct` under contention and cancellation: many tasks share a service's one
//! connection, each a transaction of sqlx statements and direct calls, many of them cancelled at
//! random points; the connection must stay usable and every committed effect must be whole.

#![cfg(feature = "sqlite")]

use std::time::Duration;

use flotilla_kit::database::{direct, execute, sqlx_error};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_direct_transactions_never_wedge_the_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("direct.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .expect("open");
    sqlx::query(
        "CREATE TABLE pairs (id INTEGER PRIMARY KEY, a INTEGER NOT NULL, b INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("schema");
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..300u64 {
                // Cancelled after 0 to 300 µs: before, during or after the direct call.
                let limit = Duration::from_micros((task * 37 + round * 101) % 300);
                let _ = tokio::time::timeout(limit, async {
                    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                    let n = i64::try_from(task * 1000 + round).unwrap_or(0);
                    sqlx::query("INSERT INTO pairs (a, b) VALUES ($1, 0)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                    direct(&mut tx, |db| {
                        execute(db, "UPDATE pairs SET b = a WHERE a = $1", &[&n])
                            .map_err(sqlx_error)
                    })
                    .await?;
                    tokio::task::yield_now().await;
                    tx.commit().await?;
                    Ok::<_, sqlx::Error>(())
                })
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    // The connection still answers, and no commit kept half of its transaction.
    let torn: i64 = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query_scalar("SELECT COUNT(*) FROM pairs WHERE a <> b").fetch_one(&pool),
    )
    .await
    .expect("the connection answers")
    .expect("query");
    assert_eq!(torn, 0);
    let whole: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pairs")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert!(whole > 0, "some transactions committed");
}
