//! The order's read models (CQRS): kept from the event store's global log by projections that
//! store their position with their rows, and can be rebuilt from zero
//! (`flotilla projections rebuild order`).
//!
//! * `order_summaries`: one row per order, for `GET /v1/orders?customer_id=…&status=…`;
//! * `revenue_per_day`: per UTC day, orders and cents placed, approved, rejected and cancelled,
//!   for `GET /v1/orders/revenue`.

use flotilla_eventstore::{
    Error, EventStore, Projection, Projector, RecordedEvent, StoreTx, aggregate,
};
use flotilla_sqlite::{execute, query_optional, sqlx_error};
use sqlx::SqliteConnection;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::domain::{Order, OrderEvent, Status};

fn connection(tx: &mut StoreTx) -> Result<&mut SqliteConnection, Error> {
    tx.sqlite()
        .ok_or_else(|| Error::Encode("the order read models live in SQLite".into()))
}

fn order_id(event: &RecordedEvent) -> &str {
    event
        .stream_id
        .strip_prefix("order-")
        .unwrap_or(&event.stream_id)
}

fn rfc3339(event: &RecordedEvent) -> Result<String, Error> {
    event
        .recorded_at
        .format(&Rfc3339)
        .map_err(|e| Error::Encode(e.to_string()))
}

/// `order_summaries`: orders by customer and status.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderSummaries;

impl Projection for OrderSummaries {
    fn name(&self) -> &str {
        "order_summaries"
    }

    fn category(&self) -> Option<&str> {
        Some("order")
    }

    const ON_CONNECTION: bool = true;

    fn apply_on(&self, db: &rusqlite::Connection, event: &RecordedEvent) -> Result<(), Error> {
        let typed = aggregate::decode::<Order>(event)?;
        let id = order_id(event);
        let at = rfc3339(event)?;
        let version = i64::try_from(event.version).unwrap_or(i64::MAX);
        match typed {
            OrderEvent::OrderPlaced {
                customer_id,
                items,
                total_cents,
                ..
            } => execute(
                db,
                "INSERT INTO order_summaries (order_id, customer_id, status, total_cents, lines, created_at, updated_at, version)
                 VALUES ($1, $2, 'PENDING', $3, $4, $5, $5, $6)",
                &[&id, &customer_id, &total_cents, &(items.len() as i64), &at, &version],
            ),
            other => {
                let status = match other {
                    OrderEvent::OrderApproved {} => Some(Status::Approved),
                    OrderEvent::OrderRejected { .. } => Some(Status::Rejected),
                    OrderEvent::OrderCancelled { .. } => Some(Status::Cancelled),
                    _ => None,
                };
                execute(
                    db,
                    "UPDATE order_summaries SET status = COALESCE($1, status), updated_at = $2, version = $3
                     WHERE order_id = $4",
                    &[&status.map(Status::as_str), &at, &version, &id],
                )
            }
        }
        .map_err(sqlx_error)?;
        Ok(())
    }

    async fn reset(&self, tx: &mut StoreTx) -> Result<(), Error> {
        sqlx::query("DELETE FROM order_summaries")
            .execute(connection(tx)?)
            .await?;
        Ok(())
    }
}

/// The total the revenue projection recorded for an order when it was placed.
fn order_total(db: &rusqlite::Connection, order_id: &str) -> Result<i64, Error> {
    let total: Option<i64> = query_optional(
        db,
        "SELECT total_cents FROM revenue_order_totals WHERE order_id = $1",
        &[&order_id],
        |row| row.get(0),
    )
    .map_err(sqlx_error)?;
    Ok(total.unwrap_or_default())
}

/// `revenue_per_day`: what was placed, approved, rejected and cancelled each UTC day.
#[derive(Debug, Clone, Copy, Default)]
pub struct RevenuePerDay;

impl Projection for RevenuePerDay {
    fn name(&self) -> &str {
        "revenue_per_day"
    }

    fn category(&self) -> Option<&str> {
        Some("order")
    }

    const ON_CONNECTION: bool = true;

    fn apply_on(&self, db: &rusqlite::Connection, event: &RecordedEvent) -> Result<(), Error> {
        let typed = aggregate::decode::<Order>(event)?;
        let id = order_id(event).to_owned();
        let day = event.recorded_at.date().to_string();
        let (column_orders, column_cents, cents) = match typed {
            OrderEvent::OrderPlaced { total_cents, .. } => {
                execute(
                    db,
                    "INSERT INTO revenue_order_totals (order_id, total_cents) VALUES ($1, $2)
                     ON CONFLICT (order_id) DO UPDATE SET total_cents = excluded.total_cents",
                    &[&id, &total_cents],
                )
                .map_err(sqlx_error)?;
                ("placed_orders", Some("placed_cents"), total_cents)
            }
            OrderEvent::OrderApproved {} => (
                "approved_orders",
                Some("approved_cents"),
                order_total(db, &id)?,
            ),
            OrderEvent::OrderCancelled { .. } => (
                "cancelled_orders",
                Some("cancelled_cents"),
                order_total(db, &id)?,
            ),
            OrderEvent::OrderRejected { .. } => ("rejected_orders", None, 0),
            _ => return Ok(()),
        };
        // Column names come from the match above, never from input.
        match column_cents {
            Some(cents_column) => execute(
                db,
                &format!(
                    "INSERT INTO revenue_per_day (day, {column_orders}, {cents_column}) VALUES ($1, 1, $2)
                     ON CONFLICT (day) DO UPDATE SET {column_orders} = {column_orders} + 1,
                     {cents_column} = {cents_column} + excluded.{cents_column}"
                ),
                &[&day, &cents],
            ),
            None => execute(
                db,
                &format!(
                    "INSERT INTO revenue_per_day (day, {column_orders}) VALUES ($1, 1)
                     ON CONFLICT (day) DO UPDATE SET {column_orders} = {column_orders} + 1"
                ),
                &[&day],
            ),
        }
        .map_err(sqlx_error)?;
        Ok(())
    }

    async fn reset(&self, tx: &mut StoreTx) -> Result<(), Error> {
        let connection = connection(tx)?;
        sqlx::query("DELETE FROM revenue_per_day")
            .execute(&mut *connection)
            .await?;
        sqlx::query("DELETE FROM revenue_order_totals")
            .execute(connection)
            .await?;
        Ok(())
    }
}

/// The names of the order's projections.
pub const NAMES: [&str; 2] = ["order_summaries", "revenue_per_day"];

/// Keeps both read models up to date until `shutdown`.
pub fn spawn(store: &EventStore, shutdown: &CancellationToken) {
    tokio::spawn(Projector::new(store.clone(), OrderSummaries).run(shutdown.clone()));
    tokio::spawn(Projector::new(store.clone(), RevenuePerDay).run(shutdown.clone()));
}

/// Brings both read models up to date now (tests, and a rebuild's final step).
pub async fn catch_up(store: &EventStore) -> Result<u64, Error> {
    let summaries = Projector::new(store.clone(), OrderSummaries)
        .catch_up()
        .await?;
    let revenue = Projector::new(store.clone(), RevenuePerDay)
        .catch_up()
        .await?;
    Ok(summaries + revenue)
}

/// Rebuilds both read models from zero: `(projection, events applied)` for each.
pub async fn rebuild(store: &EventStore) -> Result<Vec<(&'static str, u64)>, Error> {
    let summaries = Projector::new(store.clone(), OrderSummaries)
        .rebuild()
        .await?;
    let revenue = Projector::new(store.clone(), RevenuePerDay)
        .rebuild()
        .await?;
    Ok(vec![(NAMES[0], summaries), (NAMES[1], revenue)])
}
