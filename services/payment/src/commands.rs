//! The payment's side of the order saga: it consumes `payment.commands` and answers each command
//! on its `reply_to` topic, in the same transaction as the ledger change (and the inbox row that
//! makes a redelivered command a no-op).

use flotilla_contracts::{AuthorizePayment, CapturePayment, RefundPayment, VoidPayment, decode};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError};

use crate::ledger::{self, Authorization, LedgerError, Settled};

/// Handles the payment commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentCommands;

fn unreadable(message: &Message, error: &serde_json::Error) -> HandlerError {
    HandlerError::Reject(format!("{} is unreadable: {error}", message.message_type))
}

/// The reply to a void, capture or refund: success when applied, repeated or nothing to void; a
/// refusal when the payment's status forbids the operation or there is no payment to settle. A
/// database failure is returned, so the command is retried.
fn settled(
    command: &Message,
    settled: Result<Settled, LedgerError>,
) -> Result<Option<Message>, HandlerError> {
    Ok(match settled {
        Ok(
            Settled::Applied {
                payment_id,
                amount_cents,
            }
            | Settled::AlreadyApplied {
                payment_id,
                amount_cents,
            },
        ) => flotilla_saga::succeeded(
            command,
            serde_json::json!({ "payment_id": payment_id, "amount_cents": amount_cents }),
        ),
        Ok(Settled::NoPayment) => flotilla_saga::succeeded(command, serde_json::json!({})),
        Err(LedgerError::Database(e)) => return Err(HandlerError::Database(e)),
        Err(refusal @ (LedgerError::WrongStatus { .. } | LedgerError::NoPayment { .. })) => {
            flotilla_saga::refused(command, &refusal.to_string())
        }
    })
}

impl Handler for PaymentCommands {
    // A group runs on the borrowed handle in one round trip.
    fn handle(
        &self,
        tx: &rusqlite::Connection,
        message: &Message,
    ) -> Result<Vec<Message>, HandlerError> {
        let reply = if let Some(command) = decode::<AuthorizePayment>(message) {
            let command = command.map_err(|e| unreadable(message, &e))?;
            match ledger::authorize(
                tx,
                &command.order_id,
                &command.customer_id,
                command.amount_cents,
            )? {
                Authorization::Authorized {
                    payment_id,
                    amount_cents,
                } => flotilla_saga::succeeded(
                    message,
                    serde_json::json!({ "payment_id": payment_id, "amount_cents": amount_cents }),
                ),
                Authorization::Refused { reason } => flotilla_saga::refused(message, &reason),
            }
        } else if let Some(command) = decode::<VoidPayment>(message) {
            let command = command.map_err(|e| unreadable(message, &e))?;
            settled(message, ledger::void(tx, &command.order_id))?
        } else if let Some(command) = decode::<CapturePayment>(message) {
            let command = command.map_err(|e| unreadable(message, &e))?;
            settled(message, ledger::capture(tx, &command.order_id))?
        } else if let Some(command) = decode::<RefundPayment>(message) {
            let command = command.map_err(|e| unreadable(message, &e))?;
            settled(message, ledger::refund(tx, &command.order_id))?
        } else {
            return Err(HandlerError::Reject(format!(
                "the payment service does not handle {}",
                message.message_type
            )));
        };
        Ok(reply.into_iter().collect())
    }
}
