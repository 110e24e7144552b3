//! The cancel-order saga, orchestrated: a customer cancels an approved order.
//!
//! ```text
//!  cancel_shipment ══▶ refund_payment ──▶ restock_stock ──▶ OrderCancelled
//!   refused (the shipment left): CancellationRefused, the order stays APPROVED
//! ```
//!
//! Cancelling the shipment is the saga's pivot: it is the only step that can be refused, so it
//! goes first; once it succeeded, refunding and restocking are retried until they succeed. A
//! shipment that does not answer is asked again until it does (its step has no attempt limit):
//! giving up would leave the order approved while the carrier might have cancelled after all.
//! The saga's id is `cancel-<order id>` (an order is cancelled at most once).

use std::time::Duration;

use flotilla_contracts::{CancelShipment, RefundPayment, RestockStock};
use flotilla_eventstore::EventStore;
use flotilla_messaging::Message;
use flotilla_saga::{Error, Saga, Step, Transition};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::participants::{STEP_TIMEOUT, command};
use crate::store::changes::Changes;
use crate::store::{notifications, record};

/// The saga id of order `order_id`'s cancellation.
pub fn saga_id(order_id: &str) -> String {
    format!("cancel-{order_id}")
}

/// What the saga carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrderData {
    /// The order.
    pub order_id: String,
    /// Its customer (for the notification).
    pub customer_id: String,
    /// Its total, in cents (for the notification).
    pub total_cents: i64,
    /// The customer's reason.
    pub reason: String,
}

fn step(
    name: &'static str,
    action: fn(&CancelOrderData) -> flotilla_saga::Command,
    attempts: u32,
    retriable: bool,
) -> Step<CancelOrderData> {
    Step {
        name,
        action,
        compensation: None,
        on_success: |_, _| {},
        timeout: STEP_TIMEOUT,
        attempts,
        retriable,
    }
}

/// The cancel-order saga definition.
#[derive(Debug)]
pub struct CancelOrderSaga {
    changes: std::sync::Arc<Changes>,
    steps: Vec<Step<CancelOrderData>>,
    events: EventStore,
}

impl CancelOrderSaga {
    /// The saga, appending the order's events to `events` and telling `changes` when an
    /// order's cancellation ends.
    pub fn new(events: EventStore, changes: std::sync::Arc<Changes>) -> Self {
        let steps = vec![
            step(
                "cancel_shipment",
                |d| {
                    command(&CancelShipment {
                        order_id: d.order_id.clone(),
                    })
                },
                u32::MAX,
                false,
            ),
            step(
                "refund_payment",
                |d| {
                    command(&RefundPayment {
                        order_id: d.order_id.clone(),
                    })
                },
                u32::MAX,
                true,
            ),
            step(
                "restock_stock",
                |d| {
                    command(&RestockStock {
                        order_id: d.order_id.clone(),
                    })
                },
                u32::MAX,
                true,
            ),
        ];
        Self {
            changes,
            steps,
            events,
        }
    }

    /// How long a participant has to answer (the same as the place-order saga's).
    pub fn step_timeout(&self) -> Duration {
        STEP_TIMEOUT
    }
}

impl Saga for CancelOrderSaga {
    type Data = CancelOrderData;

    fn name(&self) -> &'static str {
        "cancel_order"
    }

    fn steps(&self) -> &[Step<CancelOrderData>] {
        &self.steps
    }

    fn reply_topic(&self) -> &str {
        flotilla_contracts::ORDER_SAGA_REPLIES
    }

    /// Once the shipment is cancelled, the refund and the restock go out together (as in the
    /// choreography); the order is cancelled when both are done.
    fn concurrent_tail(&self) -> bool {
        true
    }

    /// A cancellation failed at a deadline ended in that transaction: wake the requests waiting
    /// for the order.
    fn timed_out(&self, saga_id: &str) {
        self.changes
            .committed(saga_id.strip_prefix("cancel-").unwrap_or(saga_id));
    }

    fn on_transition(
        &self,
        db: &rusqlite::Connection,
        _saga_id: &str,
        data: &CancelOrderData,
        transition: &Transition,
    ) -> Result<Vec<Message>, Error> {
        if !matches!(
            transition,
            Transition::Completed | Transition::Failed { .. }
        ) {
            return Ok(Vec::new());
        }
        let correlation = saga_id(&data.order_id);
        record(&self.events, db, &data.order_id, &correlation, |order| {
            let events = match transition {
                Transition::Completed => order.cancel(&data.reason)?,
                Transition::Failed { reason } => order.refuse_cancellation(reason)?,
                _ => Vec::new(),
            };
            Ok((events, ()))
        })
        .map_err(|e| Error::Transition(e.to_string()))?;
        self.changes.ending(&data.order_id);
        let notify = |kind: &str, extra| {
            notifications::message(
                &data.order_id,
                &data.customer_id,
                data.total_cents,
                kind,
                extra,
            )
        };
        Ok(match transition {
            Transition::Completed => vec![notify("OrderCancelled", json!({}))],
            Transition::Failed { reason } => vec![notify(
                "OrderCancellationRefused",
                json!({ "reason": reason }),
            )],
            _ => Vec::new(),
        })
    }
}
