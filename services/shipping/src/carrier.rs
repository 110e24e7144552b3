//! The carrier's saga operations: schedule a shipment for an order, cancel it, and check the
//! invariants they keep.
//!
//! Each operation is a plain domain function on the caller's transaction, which should be opened
//! with `BEGIN IMMEDIATE` (`pool.begin_with("BEGIN IMMEDIATE")`): it then holds the write lock
//! from its first statement, so concurrent calls for one order run one after the other. The
//! caller commits, typically together with its inbox and outbox rows, and retries on a database
//! error. Every operation is idempotent per order, so a redelivered message is harmless:
//!
//! - [`schedule`] answers a repeat with its first outcome, a shipment or a refusal, whatever the
//!   destination of the repeat. An order never has two shipments (the database enforces it
//!   too: `shipments_one_per_order`), nor both a shipment and a refusal.
//! - [`cancel`] turns a `SCHEDULED` shipment into `CANCELLED`; a repeat, or an order without a
//!   shipment, changes nothing. Cancelling an order that has no shipment yet also records a
//!   refusal, so that a request to schedule it arriving late (a compensation overtaking the step
//!   it undoes) is refused instead of shipping a rejected order.
//!
//! ```text
//!   schedule ──▶ SCHEDULED ──cancel──▶ CANCELLED
//!      │             │
//!      │             └── (dispatch, deliver: later) ──▶ DISPATCHED ──▶ DELIVERED  (too late to cancel)
//!      └── refused or invalid country ──▶ refusal (stable answer)
//! ```
//!
//! [`check`] reports any breach of these rules, for the system checker.

use flotilla_kit::clock;
use flotilla_sqlite::{execute, query_optional, sqlx_error};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

/// The reason recorded when an order is cancelled before any shipment was scheduled for it.
pub const CANCELLED_BEFORE_SCHEDULING: &str =
    "the order was cancelled before its shipment was scheduled";

/// Where to ship an order: the saga's contract type (the same shape as the order's
/// `ship_to` address).
pub use flotilla_contracts::Destination;

/// The outcome of [`schedule`]: the same for every request about one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheduling {
    /// The order has a shipment (it may have been cancelled since: a repeat still answers with
    /// the first outcome).
    Scheduled {
        /// The shipment's id.
        shipment_id: String,
    },
    /// The carrier does not ship this order: the saga's natural late failure.
    Refused {
        /// Why, for the customer.
        reason: String,
    },
}

/// The outcome of a [`cancel`] that the shipment's state allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cancellation {
    /// The shipment was `SCHEDULED`; it is now `CANCELLED`.
    Cancelled {
        /// The shipment's id.
        shipment_id: String,
    },
    /// The shipment was cancelled already: nothing changed.
    AlreadyCancelled {
        /// The shipment's id.
        shipment_id: String,
    },
    /// The order has no shipment: nothing to cancel. A later [`schedule`] of it is refused.
    NoShipment,
}

/// A [`cancel`] that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The shipment has left (`DISPATCHED` or `DELIVERED`): too late to cancel.
    #[error("shipment `{shipment_id}` is {status}: too late to cancel")]
    TooLate {
        /// The shipment's id.
        shipment_id: String,
        /// Its status.
        status: String,
    },
    /// The database failed; the caller should roll back and may retry.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Schedules the shipment of `order_id` (owned by `customer_id`, when known) to `destination`, or refuses it if the country is not a
/// valid upper-case ISO 3166-1 alpha-2 code or is one the carrier does not serve.
///
/// Idempotent: if the order has a shipment or a refusal already, answers with it and changes
/// nothing (the repeat's `destination` is not looked at). A refusal is recorded, so the answer
/// stays the same even if the refused destinations change.
pub fn schedule(
    db: &Connection,
    order_id: &str,
    customer_id: Option<&str>,
    destination: &Destination,
) -> Result<Scheduling, sqlx::Error> {
    if let Some(outcome) = recorded(db, order_id)? {
        return Ok(outcome);
    }
    let now = clock::now_rfc3339();
    let country = &destination.country;
    let refusal = if is_country_code(country) {
        text(
            db,
            "SELECT reason FROM refused_destinations WHERE country = ?",
            country,
        )?
    } else {
        Some(format!(
            "invalid country code {country:?}: expected an ISO 3166-1 alpha-2 code, upper case"
        ))
    };
    match refusal {
        Some(reason) => execute(
            db,
            "INSERT INTO shipment_refusals (order_id, country, reason, refused_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (order_id) DO NOTHING",
            &[&order_id, country, &reason, &now],
        ),
        None => execute(
            db,
            "INSERT INTO shipments
               (shipment_id, order_id, customer_id, name, street, city, postal_code, country, status, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'SCHEDULED', ?, ?)
             ON CONFLICT (order_id) DO NOTHING",
            &[
                &uuid::Uuid::now_v7().to_string(),
                &order_id,
                &customer_id,
                &destination.name,
                &destination.street,
                &destination.city,
                &destination.postal_code,
                country,
                &now,
                &now,
            ],
        ),
    }
    .map_err(sqlx_error)?;
    // Read back what is stored: the row just written, or the one that won a race.
    recorded(db, order_id)?.ok_or(sqlx::Error::RowNotFound)
}

/// Cancels the shipment of `order_id`: `SCHEDULED` becomes `CANCELLED`.
///
/// Idempotent: a shipment cancelled already, or an order without a shipment, changes nothing and
/// is reported as such; in the latter case a refusal is recorded (unless the order has one), so
/// that a request to schedule the order arriving after its compensation is refused.
/// A `DISPATCHED` or `DELIVERED` shipment is [`CancelError::TooLate`].
pub fn cancel(db: &Connection, order_id: &str) -> Result<Cancellation, CancelError> {
    let shipment: Option<(String, String)> = query_optional(
        db,
        "SELECT shipment_id, status FROM shipments WHERE order_id = ?",
        &[&order_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(sqlx_error)?;
    let now = clock::now_rfc3339();
    match shipment {
        None => {
            execute(
                db,
                "INSERT INTO shipment_refusals (order_id, country, reason, refused_at) VALUES (?, NULL, ?, ?)
                 ON CONFLICT (order_id) DO NOTHING",
                &[&order_id, &CANCELLED_BEFORE_SCHEDULING, &now],
            )
            .map_err(sqlx_error)?;
            Ok(Cancellation::NoShipment)
        }
        Some((shipment_id, status)) => match status.as_str() {
            "SCHEDULED" => {
                execute(
                    db,
                    "UPDATE shipments SET status = 'CANCELLED', updated_at = ?
                     WHERE shipment_id = ? AND status = 'SCHEDULED'",
                    &[&now, &shipment_id],
                )
                .map_err(sqlx_error)?;
                Ok(Cancellation::Cancelled { shipment_id })
            }
            "CANCELLED" => Ok(Cancellation::AlreadyCancelled { shipment_id }),
            _ => Err(CancelError::TooLate {
                shipment_id,
                status,
            }),
        },
    }
}

/// Refuses to ship `order_id` from now on, for `reason`, unless the carrier has decided about it
/// already: the choreographed order expired (`OrderExpired`). Returns the refusal recorded now;
/// `None` when the order has a shipment (the saga is past its point of no return and goes on) or
/// a refusal already (published when it was made).
pub fn expire(
    db: &Connection,
    order_id: &str,
    reason: &str,
) -> Result<Option<String>, sqlx::Error> {
    if recorded(db, order_id)?.is_some() {
        return Ok(None);
    }
    execute(
        db,
        "INSERT INTO shipment_refusals (order_id, country, reason, refused_at) VALUES (?, NULL, ?, ?)",
        &[&order_id, &reason, &clock::now_rfc3339()],
    )
    .map_err(sqlx_error)?;
    Ok(Some(reason.to_owned()))
}

/// Checks the carrier's invariants and describes every breach; empty when all hold:
///
/// - at most one shipment per order;
/// - no order with both a shipment and a refusal;
/// - no `SCHEDULED` shipment to a refused destination or to an invalid country code.
///
/// Reads one consistent snapshot of the database.
pub async fn check(pool: &SqlitePool) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut violations = Vec::new();

    let duplicated: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id, COUNT(*) FROM shipments GROUP BY order_id HAVING COUNT(*) > 1 ORDER BY order_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    violations.extend(
        duplicated
            .into_iter()
            .map(|(order, count)| format!("order `{order}` has {count} shipments")),
    );

    let both: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT s.order_id, s.shipment_id, r.reason
         FROM shipments s JOIN shipment_refusals r ON r.order_id = s.order_id
         ORDER BY s.order_id, s.shipment_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    violations.extend(both.into_iter().map(|(order, shipment, reason)| {
        format!("order `{order}` has shipment `{shipment}` and was refused: {reason}")
    }));

    let scheduled: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT shipment_id, order_id, country FROM shipments WHERE status = 'SCHEDULED'
         ORDER BY order_id, shipment_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let refused: Vec<(String, String)> =
        sqlx::query_as("SELECT country, reason FROM refused_destinations")
            .fetch_all(&mut *tx)
            .await?;
    for (shipment, order, country) in scheduled {
        if !is_country_code(&country) {
            violations.push(format!(
                "SCHEDULED shipment `{shipment}` of order `{order}` has an invalid country code {country:?}"
            ));
        } else if let Some((_, reason)) = refused.iter().find(|(c, _)| *c == country) {
            violations.push(format!(
                "SCHEDULED shipment `{shipment}` of order `{order}` goes to refused destination {country} ({reason})"
            ));
        }
    }
    tx.rollback().await?;
    Ok(violations)
}

/// The outcome recorded for `order_id`, if any: its shipment, else its refusal.
fn recorded(db: &Connection, order_id: &str) -> Result<Option<Scheduling>, sqlx::Error> {
    let shipment = text(
        db,
        "SELECT shipment_id FROM shipments WHERE order_id = ?",
        order_id,
    )?;
    if let Some(shipment_id) = shipment {
        return Ok(Some(Scheduling::Scheduled { shipment_id }));
    }
    let refusal = text(
        db,
        "SELECT reason FROM shipment_refusals WHERE order_id = ?",
        order_id,
    )?;
    Ok(refusal.map(|reason| Scheduling::Refused { reason }))
}

/// The text `sql` selects (its first column) for `key` (its one parameter), if a row has it.
fn text(db: &Connection, sql: &str, key: &str) -> Result<Option<String>, sqlx::Error> {
    query_optional(db, sql, &[&key], |row| row.get::<_, String>(0)).map_err(sqlx_error)
}

/// Whether `country` has the shape of an ISO 3166-1 alpha-2 code: two upper-case ASCII letters
/// (the order service validates `ship_to.country` the same way).
fn is_country_code(country: &str) -> bool {
    country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::is_country_code;

    #[test]
    fn country_codes_are_two_upper_case_letters() {
        assert!(is_country_code("FR"));
        assert!(is_country_code("AQ"));
        for bad in ["", "F", "fr", "Fr", "FRA", "F1", "ÉÉ", " F"] {
            assert!(!is_country_code(bad), "{bad:?}");
        }
    }
}
