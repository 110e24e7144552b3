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
    StockCommitted, StockRefused, StockReleased, StockReserved, StockRestocked, read,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::stock::{self, Change, Line, Reservation};

/// Reacts to the order, payment and shipping facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct StockReactions;

/// The fact to publish after a later step: `fact` unless the reservation cannot follow.
fn settled(message: &Message, change: &Change, fact: Message) -> Result<Message, HandlerError> {
    match change {
        Change::Conflict { status } => Err(HandlerError::Reject(format!(
            "{} for order {}: the reservation is {status}",
            message.message_type, message.key
        ))),
        _ => Ok(fact),
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
            let change = stock::release(tx, &order_id)?;
            let fact = StockReleased {
                order_id: order_id.clone(),
            };
            settled(message, &change, fact.message(&order_id, Some(message)))?
        } else if let Some(fact) = read::<ShipmentScheduled>(message)? {
            let order_id = fact.order_id;
            let change = stock::commit(tx, &order_id)?;
            let fact = StockCommitted {
                order_id: order_id.clone(),
            };
            settled(message, &change, fact.message(&order_id, Some(message)))?
        } else if let Some(fact) = read::<ShipmentCancelled>(message)? {
            let order_id = fact.order_id;
            let change = stock::restock(tx, &order_id)?;
            let fact = StockRestocked {
                order_id: order_id.clone(),
            };
            settled(message, &change, fact.message(&order_id, Some(message)))?
        } else {
            return Ok(Vec::new());
        };
        Ok(vec![fact])
    }
}
