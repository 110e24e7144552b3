//! The shipping's side of the order saga: it consumes `shipping.commands` and answers each
//! command on its `reply_to` topic, in the same transaction as the shipment change (and the inbox
//! row that makes a redelivered command a no-op).

use flotilla_contracts::{CancelShipment, ScheduleShipment, read, refused, succeeded};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::carrier::{self, CancelError, Cancellation, Scheduling};

/// Handles the shipping commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShippingCommands;

impl Handler for ShippingCommands {
    // A group runs on the borrowed handle in one round trip.
    fn handle(&self, tx: &Connection, message: &Message) -> HandlerResult {
        let reply = if let Some(command) = read::<ScheduleShipment>(message)? {
            match carrier::schedule(
                tx,
                &command.order_id,
                command.customer_id.as_deref(),
                &command.destination,
            )? {
                Scheduling::Scheduled { shipment_id } => {
                    succeeded(message, serde_json::json!({ "shipment_id": shipment_id }))
                }
                Scheduling::Refused { reason } => refused(message, &reason),
            }
        } else if let Some(command) = read::<CancelShipment>(message)? {
            match carrier::cancel(tx, &command.order_id) {
                Ok(
                    Cancellation::Cancelled { shipment_id }
                    | Cancellation::AlreadyCancelled { shipment_id },
                ) => succeeded(message, serde_json::json!({ "shipment_id": shipment_id })),
                Ok(Cancellation::NoShipment) => succeeded(message, serde_json::json!({})),
                Err(too_late @ CancelError::TooLate { .. }) => {
                    refused(message, &too_late.to_string())
                }
                Err(CancelError::Database(e)) => return Err(HandlerError::Database(e)),
            }
        } else {
            return Err(HandlerError::Reject(format!(
                "the shipping service does not handle {}",
                message.message_type
            )));
        };
        Ok(reply.into_iter().collect())
    }
}
