//! The payment service's part in the **choreographed** order saga: it reacts to the inventory's
//! and shipping's facts and publishes its own on `payment.events`, in the same transaction as
//! the ledger change (and the inbox row that makes a redelivered event a no-op).
//!
//! | it hears | it does | it publishes |
//! | --- | --- | --- |
//! | `StockReserved` | [`ledger::authorize`] | `PaymentAuthorized` (with the order) or `PaymentRefused` |
//! | `ShipmentRefused` | [`ledger::void`] | `PaymentVoided` |
//! | `ShipmentScheduled` | [`ledger::capture`] | `PaymentCaptured` |
//! | `ShipmentCancelled` | [`ledger::refund`] | `PaymentRefunded` |
//!
//! Other facts on the topics it consumes are none of its business and are acknowledged.

use flotilla_contracts::{
    Event, PaymentAuthorized, PaymentCaptured, PaymentRefunded, PaymentRefused, PaymentVoided,
    ShipmentCancelled, ShipmentRefused, ShipmentScheduled, StockReserved, cannot_follow, read,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::ledger::{self, Authorization, LedgerError, Operation};

/// Reacts to the inventory and shipping facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentReactions;

/// Settles order `order_id` with `operation` and publishes that it did, when applied, repeated
/// or there was nothing to void; the status forbidding it is logged and nothing is published.
fn settle(
    tx: &Connection,
    message: &Message,
    order_id: String,
    operation: Operation,
) -> Result<Message, HandlerError> {
    match operation.apply(tx, &order_id) {
        Ok(_) => {}
        Err(LedgerError::Database(e)) => return Err(HandlerError::Database(e)),
        Err(refusal) => return Err(cannot_follow(message, refusal)),
    }
    let key = order_id.clone();
    Ok(match operation {
        Operation::Void => PaymentVoided { order_id }.message(&key, Some(message)),
        Operation::Capture => PaymentCaptured { order_id }.message(&key, Some(message)),
        Operation::Refund => PaymentRefunded { order_id }.message(&key, Some(message)),
    })
}

impl Handler for PaymentReactions {
    // A group runs on the borrowed handle in one round trip.
    fn handle(&self, tx: &Connection, message: &Message) -> HandlerResult {
        let fact = if let Some(fact) = read::<StockReserved>(message)? {
            let order = fact.order;
            let id = order.order_id.clone();
            match ledger::authorize(tx, &id, &order.customer_id, order.total_cents)? {
                Authorization::Authorized { payment_id, .. } => {
                    PaymentAuthorized { order, payment_id }.message(&id, Some(message))
                }
                Authorization::Refused { reason } => PaymentRefused {
                    order_id: id.clone(),
                    reason,
                }
                .message(&id, Some(message)),
            }
        } else if let Some(fact) = read::<ShipmentRefused>(message)? {
            settle(tx, message, fact.order_id, Operation::Void)?
        } else if let Some(fact) = read::<ShipmentScheduled>(message)? {
            settle(tx, message, fact.order_id, Operation::Capture)?
        } else if let Some(fact) = read::<ShipmentCancelled>(message)? {
            settle(tx, message, fact.order_id, Operation::Refund)?
        } else {
            return Ok(Vec::new());
        };
        Ok(vec![fact])
    }
}
