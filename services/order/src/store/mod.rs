//! The store layer: the order database. It holds the event store's tables (the orders
//! themselves), the idempotency keys, the read models the projections keep ([`projections`]),
//! the customer notifications ([`notifications`]) and, in memory, who waits for which order's
//! change ([`changes`]). It depends on the domain only; the sagas and the HTTP API build on it.

pub mod changes;
pub mod notifications;
pub mod projections;

use std::path::Path;

use flotilla_eventstore::{EventStore, Loaded, Metadata, Options};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

use crate::domain::aggregate::{self, Order, OrderError, Status};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Events between two snapshots of an order.
pub const SNAPSHOT_EVERY: u64 = 50;

/// The order service's storage.
#[derive(Debug, Clone)]
pub struct Database {
    /// The SQLite pool (idempotency keys, read models, outbox, inbox, sagas).
    pub pool: SqlitePool,
    /// The event store in the same database.
    pub events: EventStore,
}

/// The event store's settings for orders: snapshots and the order's upcasters.
pub fn options() -> Options {
    Options {
        snapshot_every: SNAPSHOT_EVERY,
        upcasters: aggregate::upcasters(),
        ..Options::default()
    }
}

/// Opens the database at `path` and applies the service's, the event store's, the messaging
/// tables' and the saga engine's migrations.
pub async fn open(path: &Path) -> Result<Database, flotilla_eventstore::Error> {
    let opening = flotilla_sqlite::open(path, &MIGRATIONS).await?;
    let events = EventStore::sqlite(opening.pool().clone(), options()).await?;
    let setup = |e: &dyn std::fmt::Display| flotilla_eventstore::Error::Encode(e.to_string());
    flotilla_messaging::migrate(opening.pool())
        .await
        .map_err(|e| setup(&e))?;
    flotilla_saga::migrate(opening.pool())
        .await
        .map_err(|e| setup(&e))?;
    Ok(Database {
        pool: opening.ready(),
        events,
    })
}

/// Order `order_id` as its events say now, read with direct calls in one turn on the process's
/// connection ([`flotilla_sqlite::call`]) instead of a round trip per statement.
pub async fn load(
    db: &Database,
    order_id: &str,
) -> Result<Loaded<Order>, flotilla_eventstore::Error> {
    flotilla_sqlite::call(&db.pool, |sql| db.events.load_on::<Order>(sql, order_id)).await
}

/// The `(request_hash, order_id)` stored for an idempotency key.
pub async fn find_key(
    pool: &SqlitePool,
    key: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT request_hash, order_id FROM idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
}

/// A row of the `order_summaries` read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Summary {
    /// The order's id.
    pub order_id: String,
    /// The ordering customer.
    pub customer_id: String,
    /// Its status.
    pub status: String,
    /// Its total, in cents.
    pub total_cents: i64,
    /// Its number of lines.
    pub lines: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// The last event folded in.
    pub version: i64,
}

/// Orders from the read model, newest first, optionally of one customer and one status.
pub async fn list(
    pool: &SqlitePool,
    customer_id: Option<&str>,
    status: Option<Status>,
    limit: u32,
) -> Result<Vec<Summary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, customer_id, status, total_cents, lines, created_at, updated_at, version
         FROM order_summaries
         WHERE ($1 IS NULL OR customer_id = $1) AND ($2 IS NULL OR status = $2)
         ORDER BY created_at DESC, order_id DESC LIMIT $3",
    )
    .bind(customer_id)
    .bind(status.map(Status::as_str))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
}

/// A row of the `revenue_per_day` read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DayRevenue {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Orders placed that day.
    pub placed_orders: i64,
    /// Their total, in cents.
    pub placed_cents: i64,
    /// Orders approved that day.
    pub approved_orders: i64,
    /// Their total, in cents.
    pub approved_cents: i64,
    /// Orders rejected that day.
    pub rejected_orders: i64,
    /// Orders cancelled that day.
    pub cancelled_orders: i64,
    /// Their total, in cents.
    pub cancelled_cents: i64,
}

/// Revenue per day from the read model, days `from..=to` (inclusive, `YYYY-MM-DD`).
pub async fn revenue(
    pool: &SqlitePool,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<DayRevenue>, sqlx::Error> {
    sqlx::query_as(
        "SELECT day, placed_orders, placed_cents, approved_orders, approved_cents,
                rejected_orders, cancelled_orders, cancelled_cents
         FROM revenue_per_day
         WHERE ($1 IS NULL OR day >= $1) AND ($2 IS NULL OR day <= $2)
         ORDER BY day",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// Why [`record`] appended nothing.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] flotilla_eventstore::Error),
    /// The order's state refused the change.
    #[error(transparent)]
    Order(#[from] OrderError),
}

/// Loads order `order_id` within the caller's transaction (on its borrowed SQLite handle,
/// [`flotilla_sqlite::direct`]), asks `decide` for the events its state calls for (and
/// whatever else it concludes), and appends them correlated with `correlation`: the way every
/// saga, orchestrated or choreographed, records its steps on the order. Returns the order as it
/// now stands and `decide`'s conclusion.
pub fn record<T>(
    events: &EventStore,
    db: &rusqlite::Connection,
    order_id: &str,
    correlation: &str,
    decide: impl FnOnce(&Order) -> Result<(Vec<aggregate::OrderEvent>, T), OrderError>,
) -> Result<(Loaded<Order>, T), RecordError> {
    let mut order = events.load_on::<Order>(db, order_id)?;
    let (new, conclusion) = decide(&order.state)?;
    if !new.is_empty() {
        events.save_on(db, &mut order, &new, &Metadata::correlated(correlation))?;
    }
    Ok((order, conclusion))
}
