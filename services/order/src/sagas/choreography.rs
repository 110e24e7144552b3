//! The order's side of the **choreographed** sagas: no orchestrator. Placing an order publishes
//! `OrderCreated` (with everything the participants need) and the participants react to each
//! other's facts (`flotilla_contracts`); the order only listens. Every fact about an order is
//! recorded in the order's fact ledger (`flotilla_saga::choreography`), and [`decide`] turns
//! the whole set into the order's events, whatever order the facts arrived in:
//!
//! | facts observed | the order records |
//! | --- | --- |
//! | `StockReserved`, then `PaymentAuthorized`, then `ShipmentScheduled` | `InventoryReserved`, `PaymentAuthorized`, `ShipmentScheduled` |
//! | `PaymentCaptured` and `StockCommitted` (after the shipment) | `OrderApproved` |
//! | `StockRefused` | `OrderRejected` (nothing to undo) |
//! | `PaymentRefused` and `StockReleased` | `OrderRejected` (the stock is back) |
//! | `ShipmentRefused`, `PaymentVoided` and `StockReleased` | `OrderRejected` (both undone) |
//! | `ShipmentCancelled`, `PaymentRefunded` and `StockRestocked` | `OrderCancelled` |
//! | `ShipmentCancellationRefused` | `CancellationRefused` |
//!
//! An order is rejected only once the compensations are done, so that a REJECTED order never
//! holds stock or money, as with the orchestrator.
//!
//! **Deadline.** Nobody coordinates, so the order watches the time itself: placing a
//! choreographed order sets its deadline (`choreography_deadline_ms`, 30 s), cleared when the
//! order ends. [`expire_due`] acts on those past due: unless the shipment is scheduled (the
//! point of no return: capture and commit follow), it records the fact `DeadlinePassed` and
//! publishes `OrderExpired`; shipping refuses the order unless it scheduled it meanwhile, and
//! its `ShipmentRefused` undoes the rest as for an unserviceable destination (payment voids,
//! inventory releases; each leaves a refusal if its step had not happened yet, so a late
//! message cannot hold money or stock for the rejected order). The order is rejected with the
//! deadline's reason once those are done.

use std::sync::Arc;
use std::time::Duration;

use flotilla_contracts::{Event, OrderCancellationRequested, OrderCreated, OrderDetails};
use flotilla_eventstore::EventStore;
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_saga::choreography::{self, Facts};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{Cancellation, Order, OrderError, OrderEvent, Status};
use crate::store::changes::Changes;
use crate::store::{Database, RecordError, notifications, record};

/// The facts the order listens for.
pub const FACTS: [&str; 14] = [
    "StockReserved",
    "StockRefused",
    "StockReleased",
    "StockCommitted",
    "StockRestocked",
    "PaymentAuthorized",
    "PaymentRefused",
    "PaymentVoided",
    "PaymentCaptured",
    "PaymentRefunded",
    "ShipmentScheduled",
    "ShipmentRefused",
    "ShipmentCancelled",
    "ShipmentCancellationRefused",
];

/// The fact the order records when it expires a choreographed order (with its `reason`).
pub const DEADLINE_PASSED: &str = "DeadlinePassed";

/// Choreographed orders expired in one transaction at most.
pub const EXPIRED_AT_ONCE: usize = 256;

/// The time `after` from now, in microseconds since the Unix epoch (a deadline).
pub use flotilla_kit::clock::micros_after;

/// Expires the choreographed orders past their deadline (at most [`EXPIRED_AT_ONCE`]), in one
/// transaction: each one still pending and not yet shipped gets the fact [`DEADLINE_PASSED`]
/// and its `OrderExpired` goes to the outbox; the others (ended, or past the point of no return)
/// lose their deadline only. Returns how many were expired; the caller wakes the relay.
pub async fn expire_due(
    db: &Database,
    deadline: Duration,
) -> Result<usize, flotilla_eventstore::Error> {
    let encode = |e: &dyn std::fmt::Display| flotilla_eventstore::Error::Encode(e.to_string());
    flotilla_sqlite::transaction(&db.pool, |sql| {
        let now = micros_after(Duration::ZERO);
        let due = choreography::due(sql, now, EXPIRED_AT_ONCE).map_err(|e| encode(&e))?;
        let mut expired = 0;
        for order_id in due {
            choreography::clear_deadline(sql, &order_id).map_err(|e| encode(&e))?;
            let facts = choreography::facts(sql, &order_id).map_err(|e| encode(&e))?;
            if facts.has("ShipmentScheduled") || facts.has(DEADLINE_PASSED) {
                continue;
            }
            // An order that cannot be read stops only its own expiry, not the others'.
            let order = match db.events.load_on::<Order>(sql, &order_id) {
                Ok(order) => order,
                Err(error) => {
                    tracing::error!(%order_id, %error, "cannot read an order past its deadline; it is left as it is");
                    continue;
                }
            };
            if order.state.status != Some(Status::Pending) {
                continue;
            }
            let reason = format!("the order did not complete within {deadline:?}");
            choreography::record(
                sql,
                &order_id,
                DEADLINE_PASSED,
                &json!({ "reason": reason }),
            )
            .map_err(|e| encode(&e))?;
            let message = flotilla_contracts::OrderExpired {
                order_id: order_id.clone(),
                reason,
            }
            .message(&order_id, None);
            flotilla_messaging::outbox::enqueue(sql, &message).map_err(|e| encode(&e))?;
            tracing::warn!(%order_id, ?deadline, "choreographed order expired");
            expired += 1;
        }
        Ok(expired)
    })
    .await
}

/// Runs [`expire_due`] with `deadline` every `interval` until `shutdown`, waking `relay` after
/// it expired any.
pub async fn run_deadlines(
    db: Database,
    deadline: Duration,
    interval: Duration,
    relay: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match expire_due(&db, deadline).await {
            Ok(0) => {}
            Ok(_) => relay.notify_one(),
            Err(error) => tracing::warn!(%error, "could not expire the choreographed orders due"),
        }
    }
}

/// What [`decide`] concluded besides the events: a notification to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still under way.
    Pending,
    /// The order was approved now.
    Approved,
    /// The order was rejected now, for this reason.
    Rejected(String),
    /// The order was cancelled now.
    Cancelled,
    /// Its cancellation was refused now, for this reason.
    CancellationRefused(String),
}

/// The events the order's facts call for, given the order as it stands: the steps not yet
/// recorded, in the saga's order, then its outcome once every fact it needs is in.
///
/// ```
/// use flotilla_order::sagas::choreography::{decide, Outcome};
/// use flotilla_saga::choreography::Facts;
/// let order = flotilla_order::Order { status: Some(flotilla_order::Status::Pending), ..Default::default() };
/// let facts = Facts::from_iter([
///     ("PaymentRefused", serde_json::json!({ "reason": "over the credit limit" })),
///     ("StockReserved", serde_json::json!({})),
/// ]);
/// // The stock is still held: not rejected yet.
/// let (events, outcome) = decide(&order, &facts).unwrap();
/// assert_eq!((events.len(), outcome), (1, Outcome::Pending));
/// ```
pub fn decide(order: &Order, facts: &Facts) -> Result<(Vec<OrderEvent>, Outcome), OrderError> {
    let mut events = Vec::new();
    match order.status {
        Some(Status::Pending) => {
            let mut reserved = order.inventory_reserved;
            let mut authorized = order.payment_id.is_some();
            let mut scheduled = order.shipment_id.is_some();
            if !reserved && facts.has("StockReserved") {
                events.push(OrderEvent::InventoryReserved {});
                reserved = true;
            }
            if reserved && !authorized && facts.has("PaymentAuthorized") {
                let payment_id = facts.text("PaymentAuthorized", "payment_id");
                events.push(OrderEvent::PaymentAuthorized {
                    payment_id: payment_id.unwrap_or_default().to_owned(),
                });
                authorized = true;
            }
            if authorized && !scheduled && facts.has("ShipmentScheduled") {
                let shipment_id = facts.text("ShipmentScheduled", "shipment_id");
                events.push(OrderEvent::ShipmentScheduled {
                    shipment_id: shipment_id.unwrap_or_default().to_owned(),
                });
                scheduled = true;
            }
            // An expired order says so, whichever refusal its expiry caused.
            let reason = |fact: &str| {
                facts
                    .text(DEADLINE_PASSED, "reason")
                    .or_else(|| facts.text(fact, "reason"))
                    .unwrap_or("no reason given")
                    .to_owned()
            };
            let outcome = if scheduled && facts.all(&["PaymentCaptured", "StockCommitted"]) {
                events.push(OrderEvent::OrderApproved {});
                Outcome::Approved
            } else if facts.has("StockRefused") {
                Outcome::Rejected(reason("StockRefused"))
            } else if facts.all(&["PaymentRefused", "StockReleased"]) {
                Outcome::Rejected(reason("PaymentRefused"))
            } else if facts.all(&["ShipmentRefused", "PaymentVoided", "StockReleased"]) {
                Outcome::Rejected(reason("ShipmentRefused"))
            } else {
                Outcome::Pending
            };
            if let Outcome::Rejected(reason) = &outcome {
                events.push(OrderEvent::OrderRejected {
                    reason: reason.clone(),
                });
            }
            Ok((events, outcome))
        }
        Some(Status::Approved) if order.cancelling() => {
            if facts.all(&["ShipmentCancelled", "PaymentRefunded", "StockRestocked"]) {
                let reason = match &order.cancellation {
                    Some(Cancellation::Requested { reason }) => reason.clone(),
                    _ => String::new(),
                };
                Ok((order.cancel(&reason)?, Outcome::Cancelled))
            } else if let Some(reason) = facts.text("ShipmentCancellationRefused", "reason") {
                Ok((
                    order.refuse_cancellation(reason)?,
                    Outcome::CancellationRefused(reason.to_owned()),
                ))
            } else {
                Ok((events, Outcome::Pending))
            }
        }
        None => Err(OrderError::NotFound),
        // Ended, or approved with no cancellation running: late or repeated facts.
        Some(_) => Ok((events, Outcome::Pending)),
    }
}

/// The message that starts the choreographed place-order saga of a new order.
pub fn created(order: OrderDetails) -> Message {
    let id = order.order_id.clone();
    OrderCreated { order }.message(&id, None)
}

/// The message that starts the choreographed cancel-order saga.
pub fn cancellation_requested(order_id: &str, reason: &str) -> Message {
    OrderCancellationRequested {
        order_id: order_id.to_owned(),
        reason: reason.to_owned(),
    }
    .message(order_id, None)
}

/// The order's consumer of the participants' facts.
#[derive(Debug, Clone)]
pub struct Listener {
    events: EventStore,
    changes: Arc<Changes>,
}

impl Listener {
    /// The listener, appending to the order's event store `events` and telling `changes` when
    /// an order's saga ends.
    pub fn new(events: EventStore, changes: Arc<Changes>) -> Self {
        Self { events, changes }
    }
}

impl Handler for Listener {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        if !FACTS.contains(&message.message_type.as_str()) {
            return Ok(Vec::new());
        }
        let failed = |e: &dyn std::fmt::Display| HandlerError::Reject(e.to_string());
        let order_id = message.key.as_str();
        let saga = |e: flotilla_saga::Error| match e {
            flotilla_saga::Error::Database(e) => HandlerError::Database(e),
            other => failed(&other),
        };
        // The fact, the ledger and the order's events.
        choreography::record(db, order_id, &message.message_type, &message.payload)
            .map_err(saga)?;
        let facts = choreography::facts(db, order_id).map_err(saga)?;
        let (order, outcome) = record(&self.events, db, order_id, order_id, |order| {
            decide(order, &facts)
        })
        .map_err(|e| match e {
            // The store failed (busy, I/O): try again later.
            RecordError::Store(e) => HandlerError::Retry(e.to_string()),
            RecordError::Order(e) => failed(&format!(
                "{} about order {order_id}: {e}",
                message.message_type
            )),
        })?;
        if outcome != Outcome::Pending {
            self.changes.ending(order_id);
            choreography::clear_deadline(db, order_id).map_err(saga)?;
        }
        let state = &order.state;
        let notify = |kind: &str, extra| {
            vec![notifications::message(
                order_id,
                &state.customer_id,
                state.total_cents,
                kind,
                extra,
            )]
        };
        Ok(match outcome {
            Outcome::Pending => Vec::new(),
            Outcome::Approved => notify("OrderConfirmed", json!({})),
            Outcome::Rejected(reason) => notify("OrderRejected", json!({ "reason": reason })),
            Outcome::Cancelled => notify("OrderCancelled", json!({})),
            Outcome::CancellationRefused(reason) => {
                notify("OrderCancellationRefused", json!({ "reason": reason }))
            }
        })
    }
}
