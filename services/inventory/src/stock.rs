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

use flotilla_kit::clock;
use std::collections::BTreeMap;

use flotilla_sqlite::{execute, query, query_optional, sqlx_error};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

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

fn status(
    db: &Connection,
    order_id: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    query_optional(
        db,
        "SELECT status, reason FROM reservations WHERE order_id = $1",
        &[&order_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(sqlx_error)
}

fn refuse(db: &Connection, order_id: &str, reason: String) -> Result<Reservation, sqlx::Error> {
    execute(
        db,
        "INSERT INTO reservations (order_id, status, reason, created_at, updated_at) VALUES ($1, 'REFUSED', $2, $3, $3)",
        &[&order_id, &reason, &clock::now_rfc3339()],
    )
    .map_err(sqlx_error)?;
    Ok(Reservation::Refused { reason })
}

/// Holds `lines` for `order_id`: every line or none. Refused when a SKU is unknown or has fewer
/// free units (`on_hand - reserved`) than asked.
pub fn reserve(
    db: &Connection,
    order_id: &str,
    lines: &[Line],
) -> Result<Reservation, sqlx::Error> {
    if let Some((status, reason)) = status(db, order_id)? {
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
                db,
                order_id,
                format!("quantity of {} must be positive", line.sku),
            );
        }
        let total = wanted.entry(line.sku.as_str()).or_default();
        *total = total.saturating_add(line.quantity);
    }
    if wanted.is_empty() {
        return refuse(db, order_id, "no lines to reserve".into());
    }
    let mut unknown = Vec::new();
    let mut short = Vec::new();
    for (sku, quantity) in &wanted {
        let free: Option<i64> = query_optional(
            db,
            "SELECT on_hand - reserved FROM products WHERE sku = $1",
            &[sku],
            |row| row.get(0),
        )
        .map_err(sqlx_error)?;
        match free {
            None => unknown.push(*sku),
            Some(free) if free < *quantity => {
                short.push(format!("{sku} ({free} left, {quantity} asked)"))
            }
            Some(_) => {}
        }
    }
    if !unknown.is_empty() {
        return refuse(db, order_id, format!("unknown SKU {}", unknown.join(", ")));
    }
    if !short.is_empty() {
        return refuse(db, order_id, format!("out of stock: {}", short.join(", ")));
    }
    execute(
        db,
        "INSERT INTO reservations (order_id, status, created_at, updated_at) VALUES ($1, 'RESERVED', $2, $2)",
        &[&order_id, &clock::now_rfc3339()],
    )
    .map_err(sqlx_error)?;
    for (sku, quantity) in wanted {
        // Guarded as well: the check above holds only in a write transaction.
        let taken = execute(
            db,
            "UPDATE products SET reserved = reserved + $1 WHERE sku = $2 AND on_hand - reserved >= $1",
            &[&quantity, &sku],
        )
        .map_err(sqlx_error)?;
        if taken != 1 {
            return Err(sqlx::Error::Protocol(format!(
                "stock of {sku} changed during the reservation: run it in a write transaction (BEGIN IMMEDIATE)"
            )));
        }
        execute(
            db,
            "INSERT INTO reservation_lines (order_id, sku, quantity) VALUES ($1, $2, $3)",
            &[&order_id, &sku, &quantity],
        )
        .map_err(sqlx_error)?;
    }
    Ok(Reservation::Reserved)
}

/// Moves the reservation of `order_id` from `from` to `to`, adjusting every line's product with
/// `adjust` (an SQL assignment list over `$1`, the line's quantity).
fn transition(
    db: &Connection,
    order_id: &str,
    from: &str,
    to: &str,
    adjust: &'static str,
) -> Result<Change, sqlx::Error> {
    match status(db, order_id)? {
        None => return Ok(Change::Nothing),
        Some((status, _)) if status == "REFUSED" => return Ok(Change::Nothing),
        Some((status, _)) if status == to => return Ok(Change::Repeated),
        Some((status, _)) if status != from => return Ok(Change::Conflict { status }),
        Some(_) => {}
    }
    let lines: Vec<(String, i64)> = query(
        db,
        "SELECT sku, quantity FROM reservation_lines WHERE order_id = $1",
        &[&order_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(sqlx_error)?;
    for (sku, quantity) in lines {
        execute(
            db,
            &format!("UPDATE products SET {adjust} WHERE sku = $2"),
            &[&quantity, &sku],
        )
        .map_err(sqlx_error)?;
    }
    execute(
        db,
        "UPDATE reservations SET status = $1, updated_at = $2 WHERE order_id = $3",
        &[&to, &clock::now_rfc3339(), &order_id],
    )
    .map_err(sqlx_error)?;
    Ok(Change::Applied)
}

/// What a reservation asked for after its release is told: the release overtook it.
pub const RELEASED_BEFORE_RESERVED: &str = "the stock was released before it was reserved";

/// Gives the held stock back (compensation of [`reserve`]).
pub fn release(db: &Connection, order_id: &str) -> Result<Change, sqlx::Error> {
    if status(db, order_id)?.is_none() {
        refuse(db, order_id, RELEASED_BEFORE_RESERVED.to_owned())?;
        return Ok(Change::Nothing);
    }
    transition(
        db,
        order_id,
        "RESERVED",
        "RELEASED",
        "reserved = reserved - $1",
    )
}

/// The order is approved: the held units leave the warehouse.
pub fn commit(db: &Connection, order_id: &str) -> Result<Change, sqlx::Error> {
    transition(
        db,
        order_id,
        "RESERVED",
        "COMMITTED",
        "reserved = reserved - $1, on_hand = on_hand - $1",
    )
}

/// An approved order was cancelled: its units come back to the warehouse.
pub fn restock(db: &Connection, order_id: &str) -> Result<Change, sqlx::Error> {
    transition(
        db,
        order_id,
        "COMMITTED",
        "RESTOCKED",
        "on_hand = on_hand + $1",
    )
}

/// Violations of the stock invariants (docs/DESIGN.md, invariant 3), empty when all hold: for every
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
