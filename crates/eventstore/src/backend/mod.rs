//! The SQL of the store, written once for both databases where it can be (`$n` parameters work in
//! both) and apart where they differ: how a transaction starts, how positions are assigned, how
//! a page of events is read.
//!
//! | module | what it holds |
//! | --- | --- |
//! | here | the pools, transactions and connections of either database, the statements both run, and each operation's dispatch |
//! | `sqlite` | SQLite's own statements through sqlx, and the store's SQL on a connection (`flotilla_sqlite`: no round trip per statement) |
//! | `postgres` | PostgreSQL's own statements: positions from the head row, locked checkpoints, rows read one by one |

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::{Postgres, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::{from_micros, micros};
use crate::{Error, ExpectedVersion, NewEvent, RecordedEvent, category};

/// A connection pool of either database.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A transaction of either database.
#[derive(Debug)]
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// A connection of either database, borrowed: a transaction of this store's, or a caller's
/// own transaction (appends inside a message handler's transaction, say).
#[derive(Debug)]
pub(crate) enum Conn<'c> {
    Sqlite(&'c mut sqlx::SqliteConnection),
    Postgres(&'c mut sqlx::PgConnection),
}

impl Tx {
    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
            Tx::Postgres(tx) => Conn::Postgres(tx),
        }
    }
}

/// Runs `$body` with `$c` bound to the borrowed connection, whichever database it is.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            Conn::Sqlite($c) => {
                let $c = &mut **$c;
                $body
            }
            Conn::Postgres($c) => {
                let $c = &mut **$c;
                $body
            }
        }
    };
}

/// Runs `$body` with `$p` bound to the pool, whichever database it is.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` with `$c` bound to the transaction's connection, whichever database it is.
macro_rules! on_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match $tx {
            Tx::Sqlite(tx) => {
                let $c = &mut **tx;
                $body
            }
            Tx::Postgres(tx) => {
                let $c = &mut **tx;
                $body
            }
        }
    };
}

/// `SELECT <the columns of an event> FROM eventstore_events <rest>`, as one static string: the
/// columns in the order [`StoredEvent`]'s readers take them.
macro_rules! select_events {
    ($($rest:literal)?) => {
        concat!(
            "SELECT position, stream_id, version, event_id, event_type, schema_version, data, \
             metadata, causation_id, correlation_id, recorded_at FROM eventstore_events ",
            $($rest)?
        )
    };
}

/// The `INSERT` of events with every column, before its values.
macro_rules! insert_events {
    () => {
        "INSERT INTO eventstore_events (position, event_id, stream_id, category, version, \
         event_type, schema_version, data, metadata, causation_id, correlation_id, recorded_at) "
    };
}

/// Creates a projection's checkpoint (`$1`: its name, `$2`: now) at 0, unless it has one.
macro_rules! create_checkpoint {
    () => {
        "INSERT INTO eventstore_checkpoints (name, position, updated_at) VALUES ($1, 0, $2) \
         ON CONFLICT (name) DO NOTHING"
    };
}

/// A projection's checkpoint (`$1`: its name).
macro_rules! checkpoint_position {
    () => {
        "SELECT position FROM eventstore_checkpoints WHERE name = $1"
    };
}

mod postgres;
mod sql;
pub(crate) mod sqlite;
mod stored;

use sql::{
    CHECKPOINT_AND_CATEGORY_HEAD, CHECKPOINT_AND_HEAD, Encoded, SAVE_SNAPSHOT, STREAM_VERSION,
    duplicate_or_first, recorded, repeated, to_i64, to_u64,
};

pub(crate) use sql::Snapshot;
pub(crate) use stored::StoredEvent;

/// Starts a transaction that can write. SQLite takes its write lock at once (`IMMEDIATE`), so
/// that two appends never both read a version and then fail to upgrade their locks.
pub(crate) async fn begin(pool: &Pool) -> Result<Tx, Error> {
    Ok(match pool {
        Pool::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        Pool::Postgres(pool) => Tx::Postgres(pool.begin().await?),
    })
}

pub(crate) async fn commit(tx: Tx) -> Result<(), Error> {
    match tx {
        Tx::Sqlite(tx) => tx.commit().await?,
        Tx::Postgres(tx) => tx.commit().await?,
    }
    Ok(())
}

/// Appends a batch in the transaction: takes the positions, checks the stream's version, writes.
pub(crate) async fn append(
    conn: &mut Conn<'_>,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<Vec<RecordedEvent>, Error> {
    let count = events.len() as u64;
    if let Conn::Sqlite(c) = conn
        && events.len() == 1
        && let Some(version) = match expected {
            ExpectedVersion::Exact(version) => Some(version),
            ExpectedVersion::NoStream => Some(0),
            ExpectedVersion::Any => None,
        }
    {
        return sqlite::append_one_in(c, stream, expected, version, events).await;
    }
    // Positions first: on PostgreSQL this locks the head row until commit, which serialises
    // appends and keeps positions in commit order. On SQLite the transaction holds the write
    // lock already; the last position and the stream's version come in one query.
    let (first_position, actual) = match conn {
        Conn::Sqlite(c) => {
            let (last, actual): (i64, i64) = sqlx::query_as(sqlite::HEAD_AND_VERSION)
                .bind(stream)
                .fetch_one(&mut **c)
                .await?;
            (to_u64(last) + 1, actual)
        }
        Conn::Postgres(c) => {
            let first = postgres::reserve_positions(c, count).await?;
            let actual: i64 = sqlx::query_scalar(STREAM_VERSION)
                .bind(stream)
                .fetch_one(&mut **c)
                .await?;
            (first, actual)
        }
    };
    let actual = to_u64(actual);
    if !expected.admits(actual) {
        return Err(Error::Conflict {
            stream: stream.to_owned(),
            expected,
            actual,
        });
    }
    let now = OffsetDateTime::now_utc();
    let recorded_at = micros(now);
    // The stored instant, so that what the caller gets back equals what a reader will get.
    let now = from_micros(recorded_at);
    let category = category(stream);
    let mut rows = Vec::with_capacity(events.len());
    for (offset, event) in (0u64..).zip(&events) {
        rows.push(Row {
            position: to_i64(first_position + offset),
            version: to_i64(actual + 1 + offset),
            encoded: Encoded::new(event)?,
        });
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let inserted = on_conn!(conn, |c| {
            let mut insert = sqlx::QueryBuilder::new(insert_events!());
            insert.push_values(chunk, |mut values, row| {
                let (encoded, metadata) = (&row.encoded, &row.encoded.event.metadata);
                values
                    .push_bind(row.position)
                    .push_bind(encoded.id.as_str())
                    .push_bind(stream)
                    .push_bind(category)
                    .push_bind(row.version)
                    .push_bind(encoded.event.event_type.as_str())
                    .push_bind(encoded.schema_version)
                    .push_bind(encoded.data.as_str())
                    .push_bind(encoded.metadata.as_str())
                    .push_bind(metadata.causation_id.as_deref())
                    .push_bind(metadata.correlation_id.as_deref())
                    .push_bind(recorded_at);
            });
            insert
                .build()
                .execute(&mut *c)
                .await
                .map(|done| done.rows_affected())
        });
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(if e.message().contains("event_id") {
                    Error::DuplicateEvent(duplicate(conn, &events, e.as_ref()).await)
                } else {
                    Error::Conflict {
                        stream: stream.to_owned(),
                        expected,
                        actual,
                    }
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(rows);
    Ok(recorded(events, stream, first_position, actual + 1, now))
}

/// Rows per `INSERT` statement: 12 parameters each, well under SQLite's 32,766 and
/// PostgreSQL's 65,535 parameters per statement.
const ROWS_PER_INSERT: usize = 1000;

/// An event encoded for its row, at its position and version.
struct Row<'a> {
    position: i64,
    version: i64,
    encoded: Encoded<'a>,
}

/// Which event of a batch already has its id stored (or repeats an earlier one of the batch).
async fn duplicate(
    conn: &mut Conn<'_>,
    events: &[NewEvent],
    error: &dyn sqlx::error::DatabaseError,
) -> Uuid {
    if let Some(repeated) = repeated(events) {
        return repeated;
    }
    let found = match conn {
        Conn::Postgres(_) => postgres::duplicate(events, error),
        Conn::Sqlite(c) => sqlite::duplicate_in(c, events).await,
    };
    duplicate_or_first(events, found)
}

/// Runs `$where` (with `$bind`s) as a page query on `$on`, a [`Pool`] (`pool …`) or a [`Tx`]
/// (`tx …`) of either database: the clause is written once for both.
macro_rules! fetch_events {
    (pool $on:expr, $where:literal $(, $bind:expr)*) => {
        match $on {
            Pool::Sqlite(p) => fetch_events!(@sqlite, p, $where $(, $bind)*),
            Pool::Postgres(p) => fetch_events!(@postgres, p, $where $(, $bind)*),
        }
    };
    (tx $on:expr, $where:literal $(, $bind:expr)*) => {
        match $on {
            Tx::Sqlite(tx) => fetch_events!(@sqlite, &mut **tx, $where $(, $bind)*),
            Tx::Postgres(tx) => fetch_events!(@postgres, &mut **tx, $where $(, $bind)*),
        }
    };
    (@sqlite, $executor:expr, $where:literal $(, $bind:expr)*) => {{
        let (page,): (Option<String>,) = sqlx::query_as(sqlite::page!($where))
            $(.bind($bind))*
            .fetch_one($executor)
            .await?;
        sqlite::from_page(page)?
    }};
    (@postgres, $executor:expr, $where:literal $(, $bind:expr)*) => {{
        let rows: Vec<postgres::EventRow> = sqlx::query_as(select_events!($where))
            $(.bind($bind))*
            .fetch_all($executor)
            .await?;
        postgres::from_rows(rows)?
    }};
}

pub(crate) async fn read_stream(
    pool: &Pool,
    stream: &str,
    from: u64,
    to: u64,
) -> Result<Vec<StoredEvent>, Error> {
    let (from, to) = (to_i64(from), to_i64(to));
    Ok(fetch_events!(
        pool pool,
        "WHERE stream_id = $1 AND version >= $2 AND version <= $3 ORDER BY version",
        stream,
        from,
        to
    ))
}

/// The events of `stream` recorded at or before `at` (microseconds).
pub(crate) async fn read_stream_until(
    pool: &Pool,
    stream: &str,
    at: i64,
) -> Result<Vec<StoredEvent>, Error> {
    Ok(fetch_events!(
        pool pool,
        "WHERE stream_id = $1 AND recorded_at <= $2 ORDER BY version",
        stream,
        at
    ))
}

pub(crate) async fn stream_version(pool: &Pool, stream: &str) -> Result<u64, Error> {
    let version: i64 = on_pool!(pool, |p| {
        sqlx::query_scalar(STREAM_VERSION)
            .bind(stream)
            .fetch_one(p)
            .await?
    });
    Ok(to_u64(version))
}

/// A page of the global log (of one category or all) on `$on` (`pool …` or `tx …`): at most
/// `$limit` events after position `$after`.
macro_rules! global_log_page {
    ($kind:ident $on:expr, $after:expr, $limit:expr, $category:expr) => {{
        let (after, limit) = (to_i64($after), i64::try_from($limit).unwrap_or(i64::MAX));
        match $category {
            None => fetch_events!(
                $kind $on,
                "WHERE position > $1 ORDER BY position LIMIT $2",
                after,
                limit
            ),
            Some(category) => fetch_events!(
                $kind $on,
                "WHERE category = $1 AND position > $2 ORDER BY position LIMIT $3",
                category,
                after,
                limit
            ),
        }
    }};
}

pub(crate) async fn read_all(
    pool: &Pool,
    after: u64,
    limit: usize,
    category: Option<&str>,
) -> Result<Vec<StoredEvent>, Error> {
    Ok(global_log_page!(pool pool, after, limit, category))
}

/// [`read_all`] within a transaction (a rebuild reads what it writes beside).
pub(crate) async fn read_all_in(
    tx: &mut Tx,
    after: u64,
    limit: usize,
    category: Option<&str>,
) -> Result<Vec<StoredEvent>, Error> {
    Ok(global_log_page!(tx tx, after, limit, category))
}

pub(crate) async fn head(pool: &Pool) -> Result<u64, Error> {
    let head: i64 = on_pool!(pool, |p| {
        sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM eventstore_events")
            .fetch_one(p)
            .await?
    });
    Ok(to_u64(head))
}

pub(crate) async fn category_head(pool: &Pool, category: &str) -> Result<u64, Error> {
    let head: i64 = on_pool!(pool, |p| {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(position), 0) FROM eventstore_events WHERE category = $1",
        )
        .bind(category)
        .fetch_one(p)
        .await?
    });
    Ok(to_u64(head))
}

/// A snapshot row: `(version, state_version, state)`.
pub(crate) async fn snapshot(
    pool: &Pool,
    stream: &str,
) -> Result<Option<(u64, u32, String)>, Error> {
    let row: Option<(i64, i32, String)> = on_pool!(pool, |p| {
        sqlx::query_as(
            "SELECT version, state_version, state FROM eventstore_snapshots WHERE stream_id = $1",
        )
        .bind(stream)
        .fetch_optional(p)
        .await?
    });
    Ok(row.map(|(version, state_version, state)| {
        (
            to_u64(version),
            u32::try_from(state_version).unwrap_or(0),
            state,
        )
    }))
}

pub(crate) async fn save_snapshot(conn: &mut Conn<'_>, snapshot: &Snapshot) -> Result<(), Error> {
    let (stream, version, state_version, state, now) = snapshot.values()?;
    on_conn!(conn, |c| {
        sqlx::query(SAVE_SNAPSHOT)
            .bind(stream)
            .bind(version)
            .bind(state_version)
            .bind(state)
            .bind(now)
            .execute(&mut *c)
            .await?
            .rows_affected()
    });
    Ok(())
}

pub(crate) async fn checkpoint(pool: &Pool, name: &str) -> Result<u64, Error> {
    let position: Option<i64> = on_pool!(pool, |p| {
        sqlx::query_scalar(checkpoint_position!())
            .bind(name)
            .fetch_optional(p)
            .await?
    });
    Ok(position.map_or(0, to_u64))
}

/// A projection's checkpoint and the last position of its category (of the whole log if
/// `None`), in one round trip.
pub(crate) async fn checkpoint_and_head(
    pool: &Pool,
    name: &str,
    category: Option<&str>,
) -> Result<(u64, u64), Error> {
    let (checkpoint, head): (i64, i64) = on_pool!(pool, |p| {
        match category {
            Some(category) => {
                sqlx::query_as(CHECKPOINT_AND_CATEGORY_HEAD)
                    .bind(name)
                    .bind(category)
                    .fetch_one(p)
                    .await?
            }
            None => {
                sqlx::query_as(CHECKPOINT_AND_HEAD)
                    .bind(name)
                    .fetch_one(p)
                    .await?
            }
        }
    });
    Ok((to_u64(checkpoint), to_u64(head)))
}

/// Takes a projection's checkpoint for this transaction and returns it: on PostgreSQL the row
/// is locked (`FOR UPDATE`), so that a projector and a rebuild never interleave (under READ
/// COMMITTED a rebuild's `DELETE` would miss rows a projector inserted meanwhile, and the
/// replay would count them twice); on SQLite the `IMMEDIATE` transaction already excludes
/// every other writer.
pub(crate) async fn lock_checkpoint(tx: &mut Tx, name: &str) -> Result<u64, Error> {
    let now = micros(OffsetDateTime::now_utc());
    let position: i64 = match tx {
        // Both statements in one round trip.
        Tx::Sqlite(tx) => sqlite::lock_checkpoint_in(tx, name, now).await?,
        Tx::Postgres(tx) => postgres::lock_checkpoint(tx, name, now).await?,
    };
    Ok(to_u64(position))
}

/// Sets a checkpoint (taken first with [`lock_checkpoint`]).
pub(crate) async fn set_checkpoint(tx: &mut Tx, name: &str, to: u64) -> Result<(), Error> {
    let now = micros(OffsetDateTime::now_utc());
    on_tx!(tx, |c| {
        sqlx::query(
            "INSERT INTO eventstore_checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(to_i64(to))
        .bind(now)
        .execute(&mut *c)
        .await?
        .rows_affected()
    });
    Ok(())
}
