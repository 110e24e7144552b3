//! The shipping service's part in the **choreographed** order saga: it reacts to the payment's
//! and the order's facts and publishes its own on `shipping.events`, in the same transaction as
//! the shipment change (and the inbox row that makes a redelivered event a no-op).
//!
//! | it hears | it does | it publishes |
//! | --- | --- | --- |
//! | `PaymentAuthorized` | [`carrier::schedule`] | `ShipmentScheduled` or `ShipmentRefused` |
//! | `OrderCancellationRequested` | [`carrier::cancel`] | `ShipmentCancelled` or `ShipmentCancellationRefused` |
//! | `OrderExpired` | [`carrier::expire`]: refuses the order unless already decided | `ShipmentRefused`, or nothing |
//!
//! Other facts on the topics it consumes are none of its business and are acknowledged.

use flotilla_contracts::{
    Event, OrderCancellationRequested, OrderExpired, PaymentAuthorized,
    ShipmentCancellationRefused, ShipmentCancelled, ShipmentRefused, ShipmentScheduled, read,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::carrier::{self, CancelError, Scheduling};

/// Reacts to the payment and order facts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShippingReactions;

impl Handler for ShippingReactions {
    // A group runs on the borrowed handle in one round trip.
    fn handle(&self, tx: &Connection, message: &Message) -> HandlerResult {
        let fact = if let Some(fact) = read::<PaymentAuthorized>(message)? {
            let order = fact.order;
            let id = order.order_id;
            match carrier::schedule(tx, &id, Some(&order.customer_id), &order.destination)? {
                Scheduling::Scheduled { shipment_id } => ShipmentScheduled {
                    order_id: id.clone(),
                    shipment_id,
                }
                .message(&id, Some(message)),
                Scheduling::Refused { reason } => ShipmentRefused {
                    order_id: id.clone(),
                    reason,
                }
                .message(&id, Some(message)),
            }
        } else if let Some(fact) = read::<OrderCancellationRequested>(message)? {
            let id = fact.order_id;
            match carrier::cancel(tx, &id) {
                Ok(_) => ShipmentCancelled {
                    order_id: id.clone(),
                }
                .message(&id, Some(message)),
                Err(too_late @ CancelError::TooLate { .. }) => ShipmentCancellationRefused {
                    order_id: id.clone(),
                    reason: too_late.to_string(),
                }
                .message(&id, Some(message)),
                Err(CancelError::Database(e)) => return Err(HandlerError::Database(e)),
            }
        } else if let Some(fact) = read::<OrderExpired>(message)? {
            let id = fact.order_id;
            match carrier::expire(tx, &id, &fact.reason)? {
                Some(reason) => ShipmentRefused {
                    order_id: id.clone(),
                    reason,
                }
                .message(&id, Some(message)),
                None => return Ok(Vec::new()),
            }
        } else {
            return Ok(Vec::new());
        };
        Ok(vec![fact])
    }
}
