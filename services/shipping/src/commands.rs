//! The shipping's side of the order saga: it consumes `shipping.commands` and answers each
//! command on its `reply_to` topic, in the same transaction as the shipment change (and the inbox
//! row that makes a redelivered command a no-op).

use flotilla_contracts::{CancelShipment, ScheduleShipment, decode};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError};

use crate::carrier::{self, CancelError, Cancellation, Scheduling};

/// Handles the shipping commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShippingCommands;

fn unreadable(message: &Message, error: &serde_json::Error) -> HandlerError {
    HandlerError::Reject(format!("{} is unreadable: {error}", message.message_type))
}

impl Handler for ShippingCommands {
    // A group runs on the borrowed handle in one round trip.
    fn handle(
        &self,
        tx: &rusqlite::Connection,
        message: &Message,
    ) -> Result<Vec<Message>, HandlerError> {
        let reply = if let Some(command) = decode::<ScheduleShipment>(message) {
            let command = command.map_err(|e| unreadable(message, &e))?;
            match carrier::schedule(tx, &command.order_id, &command.destination)? {
                Scheduling::Scheduled { shipment_id } => flotilla_saga::succeeded(
                    message,
                    serde_json::json!({ "shipment_id": shipment_id }),
                ),
                Scheduling::Refused { reason } => flotilla_saga::refused(message, &reason),
            }
        } else if let Some(command) = decode::<CancelShipment>(message) {
            let command = command.map_err(|e| unreadable(message, &e))?;
            match carrier::cancel(tx, &command.order_id) {
                Ok(
                    Cancellation::Cancelled { shipment_id }
                    | Cancellation::AlreadyCancelled { shipment_id },
                ) => flotilla_saga::succeeded(
                    message,
                    serde_json::json!({ "shipment_id": shipment_id }),
                ),
                Ok(Cancellation::NoShipment) => {
                    flotilla_saga::succeeded(message, serde_json::json!({}))
                }
                Err(too_late @ CancelError::TooLate { .. }) => {
                    flotilla_saga::refused(message, &too_late.to_string())
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
