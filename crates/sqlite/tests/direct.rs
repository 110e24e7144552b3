//! `flotilla_sqlite::direct` under contention and cancellation: many tasks share a service's one
//! connection, each a transaction of sqlx statements and direct calls, many of them cancelled at
//! random points; the connection must stay usable and every committed effect must be whole.

use std::time::Duration;

use flotilla_sqlite::{direct, execute, sqlx_error};
use flotilla_testkit::memory_database;
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
    let whole: i64 = flotilla_testkit::number(&pool, "SELECT COUNT(*) FROM pairs").await;
    assert!(whole > 0, "some transactions committed");
}

/// Values go where sqlx would put them: `$n` and `?n` by number wherever they appear and in any
/// order, a plain `?` by position; a missing value is an error, not a NULL.
#[tokio::test]
async fn parameters_bind_by_number_as_sqlx_binds_them() {
    use sqlx::Connection;
    let mut connection = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .expect("open");
    let rows = direct(&mut connection, |db| {
        let one = |sql: &str, values: &[&dyn rusqlite::ToSql]| {
            flotilla_sqlite::query_optional(db, sql, values, |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
        };
        let numbered = one("SELECT $2 + 0, $1 || '-' || $1", &[&"a", &2i64]).map_err(sqlx_error)?;
        let questioned = one("SELECT ?2 + 0, ?1 || ?1", &[&"b", &3i64]).map_err(sqlx_error)?;
        let plain = one("SELECT ? + 0, ?", &[&4i64, &"c"]).map_err(sqlx_error)?;
        let short = one("SELECT $1 + 0, $2", &[&5i64]);
        Ok::<_, sqlx::Error>((numbered, questioned, plain, short.is_err()))
    })
    .await
    .expect("queries");
    assert_eq!(rows.0, Some((2, "a-a".to_owned())));
    assert_eq!(rows.1, Some((3, "bb".to_owned())));
    assert_eq!(rows.2, Some((4, "c".to_owned())));
    assert!(rows.3, "a missing value is refused");
}

/// `flotilla_sqlite::transaction` commits what its work did on `Ok`, and leaves nothing of it on `Err`
/// or on a panic, the connection usable and out of any transaction afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_transaction_commits_on_ok_and_rolls_back_on_err_and_panic() {
    use flotilla_sqlite::transaction;
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = one_connection_with_a_table(&dir.path().join("tx.db")).await;
    let insert = |n: i64| {
        move |db: &rusqlite::Connection| {
            execute(db, "INSERT INTO t (n) VALUES ($1)", &[&n]).map_err(sqlx_error)
        }
    };
    transaction(&pool, insert(1)).await.expect("committed");
    let failed: Result<(), sqlx::Error> = transaction(&pool, |db| {
        insert(2)(db)?;
        Err(sqlx::Error::Protocol("refused".into()))
    })
    .await;
    assert!(failed.is_err());
    let panicking = pool.clone();
    let panicked = tokio::spawn(async move {
        transaction(&panicking, |db| -> Result<(), sqlx::Error> {
            insert(3)(db)?;
            panic!("the work panics half-way");
        })
        .await
    })
    .await;
    assert!(panicked.is_err(), "the task panicked");
    let kept: Vec<i64> = flotilla_testkit::numbers(&pool, "SELECT n FROM t ORDER BY n").await;
    assert_eq!(kept, [1], "only the committed transaction's row");
    // Out of any transaction: a sqlx transaction of its own begins and commits.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
    sqlx::query("INSERT INTO t (n) VALUES (4)")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
}

/// How many times the statement `sql`, as the direct calls keep it prepared on `connection`,
/// has run; one run more each call.
async fn runs_so_far(connection: &mut sqlx::SqliteConnection, sql: &str) -> i32 {
    direct(connection, |db| {
        let mut statement = db.prepare_cached(sql).map_err(sqlx_error)?;
        let before = statement.get_status(rusqlite::StatementStatus::Run);
        statement.raw_execute().map_err(sqlx_error)?;
        Ok::<_, sqlx::Error>(before)
    })
    .await
    .expect("direct call")
}

/// A statement a direct call prepares stays prepared with the connection, from one borrow to the
/// next; and the connection still closes cleanly, its write-ahead log checkpointed and removed
/// (sqlx's `sqlite3_close` fails, and its worker panics, while a foreign statement lives).
#[tokio::test]
async fn statements_stay_prepared_across_borrows_and_the_connection_still_closes_cleanly() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("kept.db");
    let options = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let mut connection = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("open");
    sqlx::query("CREATE TABLE t (n INTEGER)")
        .execute(&mut connection)
        .await
        .expect("schema");
    let insert = "INSERT INTO t (n) VALUES (1)";
    let runs = [
        runs_so_far(&mut connection, insert).await,
        runs_so_far(&mut connection, insert).await,
        runs_so_far(&mut connection, insert).await,
    ];
    assert_eq!(
        runs,
        [0, 1, 2],
        "one statement, prepared once, run three times"
    );
    // sqlx's own statements in between do not disturb it.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
        .fetch_one(&mut connection)
        .await
        .expect("count");
    assert_eq!(count, 3);
    assert_eq!(runs_so_far(&mut connection, insert).await, 3);

    // Whoever replaces the connection's rollback hook drops the kept statements with it; the
    // next borrow prepares afresh.
    connection
        .lock_handle()
        .await
        .expect("handle")
        .set_rollback_hook(|| {});
    assert_eq!(runs_so_far(&mut connection, insert).await, 0);
    assert_eq!(runs_so_far(&mut connection, insert).await, 1);

    tokio::time::timeout(Duration::from_secs(10), connection.close())
        .await
        .expect("the close ends")
        .expect("the connection closes cleanly");
    assert!(
        !wal_of(&file).exists(),
        "a clean close checkpoints and removes the write-ahead log"
    );
}

/// The same through a pool and `flotilla_sqlite::transaction` (whose `BEGIN`, `COMMIT` and `ROLLBACK`
/// are kept statements too): closing the pool closes its connection cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_connection_kept_statements_closes_cleanly() {
    use flotilla_sqlite::transaction;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pool.db");
    let pool = one_connection_with_a_table(&file).await;
    for n in 0..20i64 {
        let result: Result<(), sqlx::Error> = transaction(&pool, |db| {
            execute(db, "INSERT INTO t (n) VALUES ($1)", &[&n]).map_err(sqlx_error)?;
            if n % 2 == 1 {
                return Err(sqlx::Error::Protocol("odd".into()));
            }
            Ok(())
        })
        .await;
        assert_eq!(result.is_ok(), n % 2 == 0);
    }
    let kept: i64 = flotilla_testkit::number(&pool, "SELECT COUNT(*) FROM t").await;
    assert_eq!(
        kept, 10,
        "the even transactions committed, the odd rolled back"
    );
    tokio::time::timeout(Duration::from_secs(10), pool.close())
        .await
        .expect("the pool closes");
    assert!(
        !wal_of(&file).exists(),
        "the connection closed cleanly: its write-ahead log is gone"
    );
}

/// The write-ahead log of the database at `file`.
fn wal_of(file: &std::path::Path) -> std::path::PathBuf {
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// A pool of one connection to a new WAL database at `file`, with a table `t (n INTEGER)`.
async fn one_connection_with_a_table(file: &std::path::Path) -> sqlx::SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open");
    sqlx::query("CREATE TABLE t (n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("schema");
    pool
}

/// `flotilla_sqlite::transaction` runs on the process's own connection to the file, so sqlx's
/// connection can hold the write lock meanwhile: the transaction then waits for it without
/// blocking its thread (on a one-thread runtime, the holder could not commit otherwise, and the
/// wait would run into the busy timeout), and goes through once the holder commits.
#[tokio::test(flavor = "current_thread")]
async fn a_direct_transaction_waits_for_another_connections_lock_without_blocking_the_thread() {
    use flotilla_sqlite::transaction;
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = one_connection_with_a_table(&dir.path().join("busy.db")).await;
    // Made before the lock is taken (its first call borrows sqlx's connection to find the file).
    transaction(&pool, |db| {
        execute(db, "INSERT INTO t (n) VALUES (1)", &[]).map_err(sqlx_error)
    })
    .await
    .expect("first");
    let mut holder = pool.begin_with("BEGIN IMMEDIATE").await.expect("lock");
    sqlx::query("INSERT INTO t (n) VALUES (2)")
        .execute(&mut *holder)
        .await
        .expect("insert");
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move {
            transaction(&pool, |db| {
                // Sees the holder's row: it began after the holder's commit.
                let seen: i64 = db
                    .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
                    .map_err(sqlx_error)?;
                execute(db, "INSERT INTO t (n) VALUES (3)", &[]).map_err(sqlx_error)?;
                Ok::<_, sqlx::Error>(seen)
            })
            .await
        })
    };
    // The waiting transaction runs on this same thread: it must yield while it waits.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "it waits while the lock is held");
    holder.commit().await.expect("the holder commits");
    let seen = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("it goes through once the lock is free, well before the busy timeout")
        .expect("task")
        .expect("transaction");
    assert_eq!(seen, 2, "it began after the holder's commit");
    let all: Vec<i64> = flotilla_testkit::numbers(&pool, "SELECT n FROM t ORDER BY n").await;
    assert_eq!(all, [1, 2, 3]);
}

/// The process's own connection is set up as `flotilla_sqlite::open`'s (foreign keys enforced, commits
/// written to the log without an fsync each: `synchronous = NORMAL`), and a direct call outside
/// a transaction (`flotilla_sqlite::call`) reads what was committed.
#[tokio::test]
async fn the_direct_connection_enforces_foreign_keys() {
    use flotilla_sqlite::{call, transaction};
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = one_connection_with_a_table(&dir.path().join("fk.db")).await;
    sqlx::raw_sql(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);
         CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parent (id));
         INSERT INTO parent (id) VALUES (1);",
    )
    .execute(&pool)
    .await
    .expect("schema");
    let orphan = transaction(&pool, |db| {
        execute(db, "INSERT INTO child (id, parent) VALUES (1, 2)", &[]).map_err(sqlx_error)
    })
    .await;
    let error = orphan.expect_err("a child without its parent is refused");
    assert_eq!(
        error.as_database_error().map(|e| e.kind()),
        Some(sqlx::error::ErrorKind::ForeignKeyViolation),
        "{error}"
    );
    transaction(&pool, |db| {
        execute(db, "INSERT INTO child (id, parent) VALUES (2, 1)", &[]).map_err(sqlx_error)
    })
    .await
    .expect("a child with its parent");
    let children: i64 = call(&pool, |db| {
        db.query_row("SELECT COUNT(*) FROM child", [], |row| row.get(0))
            .map_err(sqlx_error)
    })
    .await
    .expect("read");
    assert_eq!(children, 1);
    let (foreign_keys, synchronous): (i64, i64) = call(&pool, |db| {
        let foreign_keys = db.query_row("PRAGMA foreign_keys", [], |row| row.get(0));
        let synchronous = db.query_row("PRAGMA synchronous", [], |row| row.get(0));
        Ok::<_, sqlx::Error>((
            foreign_keys.map_err(sqlx_error)?,
            synchronous.map_err(sqlx_error)?,
        ))
    })
    .await
    .expect("pragmas");
    assert_eq!(
        (foreign_keys, synchronous),
        (1, 1),
        "foreign keys on, NORMAL"
    );
}

/// An in-memory database has no file for a second connection: `transaction` and `call` run on
/// the pool's own connection there, and still commit and roll back.
#[tokio::test]
async fn direct_transactions_work_on_an_in_memory_database() {
    use flotilla_sqlite::{call, transaction};
    let pool = memory_database().await;
    sqlx::query("CREATE TABLE t (n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("schema");
    transaction(&pool, |db| {
        execute(db, "INSERT INTO t (n) VALUES (1)", &[]).map_err(sqlx_error)
    })
    .await
    .expect("committed");
    let refused: Result<(), sqlx::Error> = transaction(&pool, |db| {
        execute(db, "INSERT INTO t (n) VALUES (2)", &[]).map_err(sqlx_error)?;
        Err(sqlx::Error::Protocol("refused".into()))
    })
    .await;
    assert!(refused.is_err());
    let all: Vec<i64> = call(&pool, |db| {
        let mut statement = db.prepare("SELECT n FROM t").map_err(sqlx_error)?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .map_err(sqlx_error)?;
        rows.collect::<Result<Vec<i64>, _>>().map_err(sqlx_error)
    })
    .await
    .expect("read");
    assert_eq!(
        all,
        [1],
        "the same database as sqlx's, rolled back where it failed"
    );
}

/// `query_at_most` stops at its bound, and its statement stays prepared from one run to the
/// next; the same read with a bound `LIMIT $1` is prepared again at every run (SQLite's planner
/// uses the value): the reason the relay and the projector read without `LIMIT`.
#[tokio::test]
async fn a_bounded_read_stays_prepared_where_a_bound_limit_is_prepared_again() {
    use flotilla_sqlite::{call, query, query_at_most};
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = one_connection_with_a_table(&dir.path().join("limit.db")).await;
    sqlx::query(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 50) \
         INSERT INTO t (n) SELECT i FROM k",
    )
    .execute(&pool)
    .await
    .expect("rows");
    let (firsts, bounded, limited) = call(&pool, |db| {
        let unbounded = "SELECT n FROM t WHERE n > $1 ORDER BY rowid";
        let limited = "SELECT n FROM t WHERE n > $1 ORDER BY rowid LIMIT $2";
        let mut firsts = Vec::new();
        for run in 0..3i64 {
            let got = query_at_most(db, unbounded, &[&(run * 10)], 3, |row| row.get::<_, i64>(0))
                .map_err(sqlx_error)?;
            firsts.push(got);
            query(db, limited, &[&(run * 10), &3i64], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(sqlx_error)?;
        }
        let status = |sql: &str| {
            db.prepare_cached(sql)
                .map(|statement| statement.get_status(rusqlite::StatementStatus::RePrepare))
                .map_err(sqlx_error)
        };
        Ok::<_, sqlx::Error>((firsts, status(unbounded)?, status(limited)?))
    })
    .await
    .expect("reads");
    assert_eq!(firsts, [vec![1, 2, 3], vec![11, 12, 13], vec![21, 22, 23]]);
    assert_eq!(bounded, 0, "the bounded read was prepared once");
    assert_eq!(
        limited, 3,
        "the bound LIMIT was prepared again at each of its 3 runs"
    );
}
