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
    ShipmentCancelled, ShipmentRefused, ShipmentScheduled, StockReserved, read,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::ledger::{self, Authorization, LedgerError, Settled};

/// Reacts to the inventory and shipping facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentReactions;

/// The fact to publish after a void, capture or refund: `fact` when applied, repeated or there
/// was nothing to void; the status forbidding it is logged and nothing is published.
fn settled(
    message: &Message,
    settled: Result<Settled, LedgerError>,
    fact: Message,
) -> Result<Message, HandlerError> {
    match settled {
        Ok(_) => Ok(fact),
        Err(LedgerError::Database(e)) => Err(HandlerError::Database(e)),
        Err(refusal) => Err(HandlerError::Reject(format!(
            "{} for order {}: {refusal}",
            message.message_type, message.key
        ))),
    }
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
            let id = fact.order_id;
            let done = PaymentVoided {
                order_id: id.clone(),
            };
            settled(
                message,
                ledger::void(tx, &id),
                done.message(&id, Some(message)),
            )?
        } else if let Some(fact) = read::<ShipmentScheduled>(message)? {
            let id = fact.order_id;
            let done = PaymentCaptured {
                order_id: id.clone(),
            };
            settled(
                message,
                ledger::capture(tx, &id),
                done.message(&id, Some(message)),
            )?
        } else if let Some(fact) = read::<ShipmentCancelled>(message)? {
            let id = fact.order_id;
            let done = PaymentRefunded {
                order_id: id.clone(),
            };
            settled(
                message,
                ledger::refund(tx, &id),
                done.message(&id, Some(message)),
            )?
        } else {
            return Ok(Vec::new());
        };
        Ok(vec![fact])
    }
}
