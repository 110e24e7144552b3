//! The payment's side of the order saga: it consumes `payment.commands` and answers each command
//! on its `reply_to` topic, in the same transaction as the ledger change (and the inbox row that
//! makes a redelivered command a no-op).

use flotilla_contracts::{
    AuthorizePayment, CapturePayment, RefundPayment, VoidPayment, read, refused, succeeded,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_sqlite::Connection;

use crate::ledger::{self, Authorization, LedgerError, Settled};

/// Handles the payment commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentCommands;

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
        ) => succeeded(
            command,
            serde_json::json!({ "payment_id": payment_id, "amount_cents": amount_cents }),
        ),
        Ok(Settled::NoPayment) => succeeded(command, serde_json::json!({})),
        Err(LedgerError::Database(e)) => return Err(HandlerError::Database(e)),
        Err(refusal @ (LedgerError::WrongStatus { .. } | LedgerError::NoPayment { .. })) => {
            refused(command, &refusal.to_string())
        }
    })
}

impl Handler for PaymentCommands {
    // A group runs on the borrowed handle in one round trip.
    fn handle(&self, tx: &Connection, message: &Message) -> HandlerResult {
        let reply = if let Some(command) = read::<AuthorizePayment>(message)? {
            match ledger::authorize(
                tx,
                &command.order_id,
                &command.customer_id,
                command.amount_cents,
            )? {
                Authorization::Authorized {
                    payment_id,
                    amount_cents,
                } => succeeded(
                    message,
                    serde_json::json!({ "payment_id": payment_id, "amount_cents": amount_cents }),
                ),
                Authorization::Refused { reason } => refused(message, &reason),
            }
        } else if let Some(command) = read::<VoidPayment>(message)? {
            settled(message, ledger::void(tx, &command.order_id))?
        } else if let Some(command) = read::<CapturePayment>(message)? {
            settled(message, ledger::capture(tx, &command.order_id))?
        } else if let Some(command) = read::<RefundPayment>(message)? {
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
