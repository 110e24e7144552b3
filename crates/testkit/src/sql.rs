//! A test's own look at a database: the rows and values it selects ([`row`], [`rows`],
//! [`value`], and for numbers [`number`], [`numbers`]), a statement it runs by hand ([`by_hand`]), a step run in a write transaction of
//! its own ([`in_transaction`]), and a checker that must find nothing ([`assert_no_violations`]).
//!
//! Every helper panics, saying which statement failed, where a test would `expect`.

use std::fmt::Debug;

use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{FromRow, SqlitePool};

/// `sql` with `binds` bound to its parameters, in order.
fn bound<'q, T>(
    sql: &'static str,
    binds: &[&'q str],
) -> sqlx::query::QueryAs<'q, Sqlite, T, sqlx::sqlite::SqliteArguments>
where
    T: for<'r> FromRow<'r, SqliteRow>,
{
    binds
        .iter()
        .fold(sqlx::query_as(sql), |query, bind| query.bind(*bind))
}

/// What running `sql` gave; panics, naming the statement, if it failed.
fn ran<T>(sql: &str, result: Result<T, sqlx::Error>) -> T {
    result.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The one row `sql` selects from `pool` (a tuple or a `FromRow` type), its parameters bound to
/// `binds` in order.
pub async fn row<T>(pool: &SqlitePool, sql: &'static str, binds: &[&str]) -> T
where
    T: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    ran(sql, bound(sql, binds).fetch_one(pool).await)
}

/// Every row `sql` selects from `pool`, its parameters bound to `binds` in order.
pub async fn rows<T>(pool: &SqlitePool, sql: &'static str, binds: &[&str]) -> Vec<T>
where
    T: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    ran(sql, bound(sql, binds).fetch_all(pool).await)
}

/// The one value `sql` selects from `pool` (a count, a column of one row), its parameters bound
/// to `binds` in order.
pub async fn value<T>(pool: &SqlitePool, sql: &'static str, binds: &[&str]) -> T
where
    (T,): for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    let (value,) = row::<(T,)>(pool, sql, binds).await;
    value
}

/// The number `sql` selects from `pool` (`SELECT COUNT(*) …`, a sequence), without parameters:
/// [`value`] for the commonest case.
pub async fn number(pool: &SqlitePool, sql: &'static str) -> i64 {
    value(pool, sql, &[]).await
}

/// The first column of every row `sql` selects from `pool`, as numbers, in the order selected.
pub async fn numbers(pool: &SqlitePool, sql: &'static str) -> Vec<i64> {
    let rows: Vec<(i64,)> = rows(pool, sql, &[]).await;
    rows.into_iter().map(|(n,)| n).collect()
}

/// Runs `sql` on `pool` by hand: a table of the test's own, a state no API reaches, or damage
/// for a checker to find.
pub async fn by_hand(pool: &SqlitePool, sql: &'static str) {
    ran(sql, sqlx::query(sql).execute(pool).await);
}

/// Runs `step` with direct SQLite calls in a write transaction of its own (`BEGIN IMMEDIATE`)
/// on one of `pool`'s connections, as a handler runs its effect: committed when `step` returns
/// `Ok`, rolled back otherwise. Concurrent calls take the write lock in turn, as separate
/// connections do.
pub async fn in_transaction<T, E, F>(pool: &SqlitePool, step: F) -> Result<T, E>
where
    F: FnOnce(&flotilla_sqlite::Connection) -> Result<T, E>,
    E: From<sqlx::Error>,
{
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
    let outcome = flotilla_sqlite::direct(&mut tx, step).await;
    if outcome.is_ok() {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    outcome
}

/// Asserts that a checker of a database's invariants ran and found no violation: `check` is
/// what it returned (one sentence per violation).
pub fn assert_no_violations<E: Debug>(check: Result<Vec<String>, E>) {
    let violations = check.expect("the check runs");
    assert!(violations.is_empty(), "{violations:#?}");
}
