//! One SQLite transaction of a saga reply's shape (a read, then five writes) on a service's one
//! connection: through sqlx, one round trip to its worker thread per statement, against
//! `flotilla_sqlite::direct`, one round trip to borrow the handle and direct calls (`direct`; the
//! statements stay prepared with the connection from one call to the next), the same statements
//! run ten times in one call (`direct_x10`, per transaction: what a group commit pays), and
//! `flotilla_sqlite::transaction`, which runs `BEGIN` to `COMMIT` on the process's own connection.
//!
//! The `borrow` group measures what holding the one connection costs a transaction when many
//! tasks want it: borrowed from sqlx's pool, against the process's own connection.
//!
//! `cargo bench -p flotilla-sqlite --bench direct`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_sqlite::{direct, execute, query_optional, sqlx_error};
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
                flotilla_sqlite::transaction(&pool, |db| direct_calls(db, id))
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

/// A short write transaction (a read and five writes) as a borrow of the pool's connection: what
/// `flotilla_sqlite::transaction` did before it had a connection of its own.
async fn through_the_pool(pool: &SqlitePool, id: i64) {
    let mut connection = pool.acquire().await.expect("acquire");
    direct(&mut connection, |db| {
        db.prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]))
            .map_err(sqlx_error)?;
        direct_calls(db, id)?;
        db.prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]))
            .map_err(sqlx_error)
    })
    .await
    .expect("transaction");
}

/// What holding the one connection costs per transaction when `tasks` tasks want it at once:
/// criterion's iterations each run `tasks` transactions concurrently; the time is per
/// transaction.
fn contended<F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &Runtime,
    name: &str,
    tasks: u32,
    one: F,
) where
    F: Fn(i64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    group.bench_function(name, |b| {
        b.to_async(runtime).iter_custom(|iterations| {
            let one = one.clone();
            async move {
                let start = std::time::Instant::now();
                for _ in 0..iterations {
                    let running: Vec<_> = (0..tasks)
                        .map(|task| tokio::spawn(one(i64::from(task) + 1)))
                        .collect();
                    for task in running {
                        task.await.expect("task");
                    }
                }
                start.elapsed() / tasks
            }
        });
    });
}

/// A short write transaction with 16 tasks contending for the one connection: borrowed from
/// sqlx's pool (its ping as it hands the connection out and takes it back, then `lock_handle`:
/// round trips to sqlx's worker thread), from a pool without the first ping (as
/// `flotilla_sqlite::open` makes it), and on the process's own connection (`flotilla_sqlite::transaction`).
fn borrow(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = runtime.block_on(open(dir.path()));
    let without_ping = runtime.block_on(async {
        SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(dir.path().join("bench.db"))
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal),
            )
            .await
            .expect("open")
    });
    let mut group = c.benchmark_group("borrow");
    group.measurement_time(Duration::from_secs(5));
    let tasks = 16;
    let p = pool.clone();
    contended(&mut group, &runtime, "pool", tasks, move |id| {
        let p = p.clone();
        async move { through_the_pool(&p, id).await }
    });
    let p = without_ping.clone();
    contended(
        &mut group,
        &runtime,
        "pool_without_ping",
        tasks,
        move |id| {
            let p = p.clone();
            async move { through_the_pool(&p, id).await }
        },
    );
    let p = pool.clone();
    contended(&mut group, &runtime, "own_connection", tasks, move |id| {
        let p = p.clone();
        async move {
            flotilla_sqlite::transaction(&p, |db| direct_calls(db, id))
                .await
                .expect("transaction");
        }
    });
    group.finish();
}

criterion_group!(benches, transaction, borrow);
criterion_main!(benches);
