//! The inventory's part in the **choreographed** order saga: it reacts to the other services'
//! facts and publishes its own on `inventory.events`, in the same transaction as the stock
//! change (and the inbox row that makes a redelivered event a no-op).
//!
//! | it hears | it does | it publishes |
//! | --- | --- | --- |
//! | `OrderCreated` | [`stock::reserve`] | `StockReserved` (with the order) or `StockRefused` |
//! | `PaymentRefused`, `ShipmentRefused` | [`stock::release`] | `StockReleased` |
//! | `ShipmentScheduled` | [`stock::commit`] | `StockCommitted` |
//! | `ShipmentCancelled` | [`stock::restock`] | `StockRestocked` |
//!
//! Other facts on the topics it consumes are none of its business and are acknowledged.

use flotilla_contracts::{
    Event, OrderCreated, PaymentRefused, ShipmentCancelled, ShipmentRefused, ShipmentScheduled,
    StockCommitted, StockRefused, StockReleased, StockReserved, StockRestocked, cannot_follow,
    read,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::stock::{self, Change, Line, Reservation};

/// Reacts to the order, payment and shipping facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct StockReactions;

/// A later step of an order's reservation, which the order's facts ask for.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// [`stock::release`], published as `StockReleased`.
    Release,
    /// [`stock::commit`], published as `StockCommitted`.
    Commit,
    /// [`stock::restock`], published as `StockRestocked`.
    Restock,
}

impl Step {
    /// Takes the step for order `order_id` and returns the fact to publish, unless the
    /// reservation cannot follow (`message`, the fact that asked for it, is rejected).
    fn take(
        self,
        tx: &Connection,
        message: &Message,
        order_id: String,
    ) -> Result<Message, HandlerError> {
        let change = match self {
            Step::Release => stock::release(tx, &order_id)?,
            Step::Commit => stock::commit(tx, &order_id)?,
            Step::Restock => stock::restock(tx, &order_id)?,
        };
        if let Change::Conflict { status } = change {
            return Err(cannot_follow(
                message,
                format!("the reservation is {status}"),
            ));
        }
        let key = order_id.clone();
        Ok(match self {
            Step::Release => StockReleased { order_id }.message(&key, Some(message)),
            Step::Commit => StockCommitted { order_id }.message(&key, Some(message)),
            Step::Restock => StockRestocked { order_id }.message(&key, Some(message)),
        })
    }
}

impl Handler for StockReactions {
    // A group of facts runs on the borrowed handle in one round trip.
    fn handle(&self, tx: &Connection, message: &Message) -> HandlerResult {
        let fact = if let Some(fact) = read::<OrderCreated>(message)? {
            let order = fact.order;
            let lines: Vec<Line> = order
                .lines
                .iter()
                .map(|l| Line {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                })
                .collect();
            match stock::reserve(tx, &order.order_id, &lines)? {
                Reservation::Reserved => {
                    let id = order.order_id.clone();
                    StockReserved { order }.message(&id, Some(message))
                }
                Reservation::Refused { reason } => StockRefused {
                    order_id: order.order_id.clone(),
                    reason,
                }
                .message(&order.order_id, Some(message)),
            }
        } else if let Some(order_id) = match read::<PaymentRefused>(message)? {
            Some(fact) => Some(fact.order_id),
            None => read::<ShipmentRefused>(message)?.map(|fact| fact.order_id),
        } {
            Step::Release.take(tx, message, order_id)?
        } else if let Some(fact) = read::<ShipmentScheduled>(message)? {
            Step::Commit.take(tx, message, fact.order_id)?
        } else if let Some(fact) = read::<ShipmentCancelled>(message)? {
            Step::Restock.take(tx, message, fact.order_id)?
        } else {
            return Ok(Vec::new());
        };
        Ok(vec![fact])
    }
}
