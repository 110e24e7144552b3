//! One SQLite transaction of a saga reply's shape (a read, then five writes) on a service's one
//! connection: through sqlx, one round trip to its worker thread per statement, against
//! `database::direct`, one round trip to borrow the handle and direct calls (`direct`; the
//! statements stay prepared with the connection from one call to the next), the same statements
//! run ten times in one call (`direct_x10`, per transaction: what a group commit pays), and
//! `database::transaction`, whose `BEGIN` and `COMMIT` run inside the one borrow too.
//!
//! `cargo bench -p flotilla-kit --features sqlite --bench direct`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_kit::database::{direct, execute, query_optional, sqlx_error};
use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::runtime::Runtime;

const READ: &str = "SELECT a, b FROM items WHERE id = $1";
const WRITES: [&str; 5] = [
    "UPDATE items SET a = a + 1, b = $2 WHERE id = $1",
    "INSERT INTO log (item, entry) VALUES ($1, $2)",
    "INSERT INTO log (item, entry) VALUES ($1, $2 || '-2')",
    "INSERT INTO outbox (item, envelope) VALUES ($1, $2)",
    "UPDATE items SET b = b || '.' WHERE id = $1 AND $2 IS NOT NULL",
];

async fn open(dir: &std::path::Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("bench.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open");
    sqlx::raw_sql(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, a INTEGER NOT NULL, b TEXT NOT NULL);
         CREATE TABLE log (seq INTEGER PRIMARY KEY, item INTEGER NOT NULL, entry TEXT NOT NULL);
         CREATE TABLE outbox (seq INTEGER PRIMARY KEY, item INTEGER NOT NULL, envelope TEXT NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO items SELECT i, 0, '' FROM n;",
    )
    .execute(&pool)
    .await
    .expect("schema");
    pool
}

async fn through_sqlx(tx: &mut SqliteConnection, id: i64) {
    let _: Option<(i64, String)> = sqlx::query_as(READ)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .expect("read");
    for write in WRITES {
        sqlx::query(write)
            .bind(id)
            .bind("entry")
            .execute(&mut *tx)
            .await
            .expect("write");
    }
}

fn direct_calls(db: &rusqlite::Connection, id: i64) -> Result<(), sqlx::Error> {
    let _: Option<(i64, String)> =
        query_optional(db, READ, &[&id], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sqlx_error)?;
    for write in WRITES {
        execute(db, write, &[&id, &"entry"]).map_err(sqlx_error)?;
    }
    Ok(())
}

fn transaction(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = runtime.block_on(open(dir.path()));
    let mut group = c.benchmark_group("reply_transaction");
    group.measurement_time(Duration::from_secs(5));
    let mut id = 0i64;
    let mut next = move || {
        id = id % 1000 + 1;
        id
    };
    group.bench_function("sqlx", |b| {
        b.to_async(&runtime).iter(|| {
            let (pool, id) = (pool.clone(), next());
            async move {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
                through_sqlx(&mut tx, id).await;
                tx.commit().await.expect("commit");
            }
        });
    });
    group.bench_function("direct", |b| {
        b.to_async(&runtime).iter(|| {
            let (pool, id) = (pool.clone(), next());
            async move {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
                direct(&mut tx, |db| direct_calls(db, id))
                    .await
                    .expect("direct");
                tx.commit().await.expect("commit");
            }
        });
    });
    group.bench_function("transaction", |b| {
        b.to_async(&runtime).iter(|| {
            let (pool, id) = (pool.clone(), next());
            async move {
                flotilla_kit::database::transaction(&pool, |db| direct_calls(db, id))
                    .await
                    .expect("transaction");
            }
        });
    });
    group.bench_function("direct_x10", |b| {
        b.to_async(&runtime).iter(|| {
            let (pool, id) = (pool.clone(), next());
            async move {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
                direct(&mut tx, |db| {
                    (0..10).try_for_each(|k| direct_calls(db, (id + k) % 1000 + 1))
                })
                .await
                .expect("direct");
                tx.commit().await.expect("commit");
            }
        });
    });
    group.finish();
}

criterion_group!(benches, transaction);
criterion_main!(benches);
