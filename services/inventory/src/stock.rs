//! Stock held for orders: the inventory's part in the order saga.
//!
//! ```text
//!   reserve ──▶ RESERVED ──commit──▶ COMMITTED ──restock──▶ RESTOCKED
//!      │            │                 (shipped out)        (an approved order cancelled)
//!      │            └──release──▶ RELEASED  (the saga failed later: compensation)
//!      └──▶ REFUSED (a SKU unknown or short of stock: the saga's natural failure)
//! ```
//!
//! Every operation runs in the caller's transaction, which must be a write transaction from its
//! start (`BEGIN IMMEDIATE` on SQLite), so that checking the stock and taking it cannot be split
//! by another writer: stock is never oversold. Every operation is idempotent per order: a repeat
//! (a redelivered command) returns the first outcome and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{SqliteConnection, SqlitePool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Units of one SKU for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// Units, more than zero.
    pub quantity: i64,
}

/// The outcome of [`reserve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reservation {
    /// The stock is held for the order.
    Reserved,
    /// It could not be (the order's natural failure); nothing is held.
    Refused {
        /// Why, for the customer.
        reason: String,
    },
}

/// What a later step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Change {
    /// The step was applied now.
    Applied,
    /// It had been applied before: nothing changed.
    Repeated,
    /// The order holds no stock (never reserved, or refused): nothing to do.
    Nothing,
    /// The reservation is in a state this step cannot follow (e.g. release after commit).
    Conflict {
        /// The reservation's status.
        status: String,
    },
}

fn now() -> Result<String, sqlx::Error> {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

async fn status(
    conn: &mut SqliteConnection,
    order_id: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT status, reason FROM reservations WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(conn)
        .await
}

async fn refuse(
    conn: &mut SqliteConnection,
    order_id: &str,
    reason: String,
) -> Result<Reservation, sqlx::Error> {
    let now = now()?;
    sqlx::query(
        "INSERT INTO reservations (order_id, status, reason, created_at, updated_at) VALUES ($1, 'REFUSED', $2, $3, $3)",
    )
    .bind(order_id)
    .bind(&reason)
    .bind(&now)
    .execute(conn)
    .await?;
    Ok(Reservation::Refused { reason })
}

/// Holds `lines` for `order_id`: every line or none. Refused when a SKU is unknown or has fewer
/// free units (`on_hand - reserved`) than asked.
pub async fn reserve(
    conn: &mut SqliteConnection,
    order_id: &str,
    lines: &[Line],
) -> Result<Reservation, sqlx::Error> {
    if let Some((status, reason)) = status(conn, order_id).await? {
        return Ok(match status.as_str() {
            "REFUSED" => Reservation::Refused {
                reason: reason.unwrap_or_default(),
            },
            _ => Reservation::Reserved,
        });
    }
    // One quantity per SKU, however the lines came.
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for line in lines {
        if line.quantity <= 0 {
            return refuse(
                conn,
                order_id,
                format!("quantity of {} must be positive", line.sku),
            )
            .await;
        }
        let total = wanted.entry(line.sku.as_str()).or_default();
        *total = total.saturating_add(line.quantity);
    }
    if wanted.is_empty() {
        return refuse(conn, order_id, "no lines to reserve".into()).await;
    }
    let mut unknown = Vec::new();
    let mut short = Vec::new();
    for (sku, quantity) in &wanted {
        let free: Option<i64> =
            sqlx::query_scalar("SELECT on_hand - reserved FROM products WHERE sku = $1")
                .bind(sku)
                .fetch_optional(&mut *conn)
                .await?;
        match free {
            None => unknown.push(*sku),
            Some(free) if free < *quantity => {
                short.push(format!("{sku} ({free} left, {quantity} asked)"))
            }
            Some(_) => {}
        }
    }
    if !unknown.is_empty() {
        return refuse(
            conn,
            order_id,
            format!("unknown SKU {}", unknown.join(", ")),
        )
        .await;
    }
    if !short.is_empty() {
        return refuse(
            conn,
            order_id,
            format!("out of stock: {}", short.join(", ")),
        )
        .await;
    }
    let now = now()?;
    sqlx::query(
        "INSERT INTO reservations (order_id, status, created_at, updated_at) VALUES ($1, 'RESERVED', $2, $2)",
    )
    .bind(order_id)
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    for (sku, quantity) in wanted {
        // Guarded as well: the check above holds only in a write transaction.
        let taken = sqlx::query(
            "UPDATE products SET reserved = reserved + $1 WHERE sku = $2 AND on_hand - reserved >= $1",
        )
        .bind(quantity)
        .bind(sku)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if taken != 1 {
            return Err(sqlx::Error::Protocol(format!(
                "stock of {sku} changed during the reservation: run it in a write transaction (BEGIN IMMEDIATE)"
            )));
        }
        sqlx::query("INSERT INTO reservation_lines (order_id, sku, quantity) VALUES ($1, $2, $3)")
            .bind(order_id)
            .bind(sku)
            .bind(quantity)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Reservation::Reserved)
}

/// Moves the reservation of `order_id` from `from` to `to`, adjusting every line's product with
/// `adjust` (an SQL assignment list over `$1`, the line's quantity).
async fn transition(
    conn: &mut SqliteConnection,
    order_id: &str,
    from: &str,
    to: &str,
    adjust: &'static str,
) -> Result<Change, sqlx::Error> {
    match status(conn, order_id).await? {
        None => return Ok(Change::Nothing),
        Some((status, _)) if status == "REFUSED" => return Ok(Change::Nothing),
        Some((status, _)) if status == to => return Ok(Change::Repeated),
        Some((status, _)) if status != from => return Ok(Change::Conflict { status }),
        Some(_) => {}
    }
    let lines: Vec<(String, i64)> =
        sqlx::query_as("SELECT sku, quantity FROM reservation_lines WHERE order_id = $1")
            .bind(order_id)
            .fetch_all(&mut *conn)
            .await?;
    for (sku, quantity) in lines {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE products SET {adjust} WHERE sku = $2"
        )))
        .bind(quantity)
        .bind(sku)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE reservations SET status = $1, updated_at = $2 WHERE order_id = $3")
        .bind(to)
        .bind(now()?)
        .bind(order_id)
        .execute(conn)
        .await?;
    Ok(Change::Applied)
}

/// Gives the held stock back (compensation of [`reserve`]).
pub async fn release(conn: &mut SqliteConnection, order_id: &str) -> Result<Change, sqlx::Error> {
    transition(
        conn,
        order_id,
        "RESERVED",
        "RELEASED",
        "reserved = reserved - $1",
    )
    .await
}

/// The order is approved: the held units leave the warehouse.
pub async fn commit(conn: &mut SqliteConnection, order_id: &str) -> Result<Change, sqlx::Error> {
    transition(
        conn,
        order_id,
        "RESERVED",
        "COMMITTED",
        "reserved = reserved - $1, on_hand = on_hand - $1",
    )
    .await
}

/// An approved order was cancelled: its units come back to the warehouse.
pub async fn restock(conn: &mut SqliteConnection, order_id: &str) -> Result<Change, sqlx::Error> {
    transition(
        conn,
        order_id,
        "COMMITTED",
        "RESTOCKED",
        "on_hand = on_hand + $1",
    )
    .await
}

/// Violations of the stock invariants (DESIGN.md, invariant 3), empty when all hold: for every
/// SKU, `reserved` equals the units of reservations still `RESERVED`, and `on_hand` equals its
/// initial stock minus the units of `COMMITTED` reservations (restocked ones came back).
pub async fn check(pool: &SqlitePool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.sku, p.on_hand, p.reserved, p.initial_on_hand,
                COALESCE(SUM(CASE WHEN r.status = 'RESERVED' THEN l.quantity END), 0),
                COALESCE(SUM(CASE WHEN r.status = 'COMMITTED' THEN l.quantity END), 0)
         FROM products p
         LEFT JOIN reservation_lines l ON l.sku = p.sku
         LEFT JOIN reservations r ON r.order_id = l.order_id
         GROUP BY p.sku ORDER BY p.sku",
    )
    .fetch_all(pool)
    .await?;
    let mut violations = Vec::new();
    for (sku, on_hand, reserved, initial, held, committed) in rows {
        if reserved != held {
            violations.push(format!(
                "{sku}: reserved is {reserved} but reservations in flight hold {held}"
            ));
        }
        if on_hand != initial - committed {
            violations.push(format!(
                "{sku}: on hand is {on_hand} but {initial} initial - {committed} committed = {}",
                initial - committed
            ));
        }
        if reserved < 0 || reserved > on_hand {
            violations.push(format!("{sku}: reserved {reserved} outside 0..={on_hand}"));
        }
    }
    Ok(violations)
}
