//! The inventory's side of the order saga: it consumes `inventory.commands` and answers each
//! command on its `reply_to` topic, in the same transaction as the stock change (and the inbox
//! row that makes a redelivered command a no-op).

use flotilla_contracts::{
    CommitStock, ReleaseStock, ReserveStock, RestockStock, read, refused, succeeded,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::stock::{self, Change, Line, Reservation};

/// Handles the stock commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct StockCommands;

/// The reply to a later step: success when applied, repeated or nothing to do; a refusal
/// when the reservation is in a state the step cannot follow.
fn settled(command: &Message, change: &Change) -> Option<Message> {
    match change {
        Change::Conflict { status } => refused(command, &format!("the reservation is {status}")),
        _ => succeeded(command, serde_json::json!({})),
    }
}

impl Handler for StockCommands {
    // A group of commands runs on the borrowed handle in one round trip.
    fn handle(&self, tx: &Connection, message: &Message) -> HandlerResult {
        let reply = if let Some(command) = read::<ReserveStock>(message)? {
            let lines: Vec<Line> = command
                .lines
                .into_iter()
                .map(|l| Line {
                    sku: l.sku,
                    quantity: l.quantity,
                })
                .collect();
            match stock::reserve(tx, &command.order_id, &lines)? {
                Reservation::Reserved => succeeded(message, serde_json::json!({})),
                Reservation::Refused { reason } => refused(message, &reason),
            }
        } else if let Some(command) = read::<ReleaseStock>(message)? {
            settled(message, &stock::release(tx, &command.order_id)?)
        } else if let Some(command) = read::<CommitStock>(message)? {
            settled(message, &stock::commit(tx, &command.order_id)?)
        } else if let Some(command) = read::<RestockStock>(message)? {
            settled(message, &stock::restock(tx, &command.order_id)?)
        } else {
            return Err(HandlerError::Reject(format!(
                "the inventory does not handle {}",
                message.message_type
            )));
        };
        Ok(reply.into_iter().collect())
    }
}
