//! The place-order saga, orchestrated by the order service.
//!
//! ```text
//!  reserve_stock ──▶ authorize_payment ──▶ schedule_shipment ══▶ capture_payment ──▶ commit_stock
//!  (ReleaseStock)    (VoidPayment)         (CancelShipment)  ║   retried until they succeed
//!                                                    point of no return
//! ```
//!
//! Each step is a command to a participant (`flotilla-contracts`) answered on
//! `order.saga-replies`. Every transition is also an event of the order, appended in the same
//! transaction as the saga's state and its next command: `InventoryReserved`,
//! `PaymentAuthorized`, `ShipmentScheduled`, then `OrderApproved` when every step succeeded, or
//! `OrderRejected{reason}` once the compensations of the steps that had succeeded (latest first)
//! are done. The natural failures: stock short (`reserve_stock` refused, nothing to undo), credit
//! limit (`authorize_payment` refused: release the stock), an unserviceable destination
//! (`schedule_shipment` refused: void the payment, release the stock).

use std::sync::Arc;

use flotilla_contracts::{
    AuthorizePayment, CancelShipment, CapturePayment, CommitStock, Destination, Line, ReleaseStock,
    ReserveStock, ScheduleShipment, VoidPayment,
};
use flotilla_eventstore::EventStore;
use flotilla_messaging::Message;
use flotilla_saga::{Command, Error, Saga, Step, Transition};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::participants::{self, STEP_ATTEMPTS, STEP_TIMEOUT, command};
use crate::domain::Order;
use crate::store::changes::Changes;
use crate::store::{notifications, record};

/// What the saga carries from step to step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrderData {
    /// The order (also the saga's id).
    pub order_id: String,
    /// The paying customer.
    pub customer_id: String,
    /// What to reserve.
    pub lines: Vec<Line>,
    /// What to charge, in cents.
    pub total_cents: i64,
    /// Where to ship.
    pub destination: Destination,
    /// The payment, once authorized.
    pub payment_id: Option<String>,
    /// The shipment, once scheduled.
    pub shipment_id: Option<String>,
}

fn text(reply: &Value, field: &str) -> Option<String> {
    reply.get(field).and_then(Value::as_str).map(str::to_owned)
}

fn step(
    name: &'static str,
    action: fn(&PlaceOrderData) -> Command,
    compensation: Option<fn(&PlaceOrderData) -> Command>,
    on_success: fn(&mut PlaceOrderData, &Value),
    retriable: bool,
) -> Step<PlaceOrderData> {
    Step {
        name,
        action,
        compensation,
        on_success,
        timeout: STEP_TIMEOUT,
        attempts: STEP_ATTEMPTS,
        retriable,
    }
}

/// The place-order saga definition.
#[derive(Debug)]
pub struct PlaceOrderSaga {
    changes: Arc<Changes>,
    steps: Vec<Step<PlaceOrderData>>,
    events: EventStore,
}

impl PlaceOrderSaga {
    /// The saga, appending the order's events to `events` (the order's own store) and telling
    /// `changes` when an order's saga ends.
    pub fn new(events: EventStore, changes: Arc<Changes>) -> Self {
        let steps = vec![
            step(
                "reserve_stock",
                |d| {
                    command(&ReserveStock {
                        order_id: d.order_id.clone(),
                        lines: d.lines.clone(),
                    })
                },
                Some(|d| {
                    command(&ReleaseStock {
                        order_id: d.order_id.clone(),
                    })
                }),
                |_, _| {},
                false,
            ),
            step(
                "authorize_payment",
                |d| {
                    command(&AuthorizePayment {
                        order_id: d.order_id.clone(),
                        customer_id: d.customer_id.clone(),
                        amount_cents: d.total_cents,
                    })
                },
                Some(|d| {
                    command(&VoidPayment {
                        order_id: d.order_id.clone(),
                    })
                }),
                |d, reply| d.payment_id = text(reply, "payment_id"),
                false,
            ),
            step(
                "schedule_shipment",
                |d| {
                    command(&ScheduleShipment {
                        order_id: d.order_id.clone(),
                        destination: d.destination.clone(),
                        customer_id: Some(d.customer_id.clone()),
                    })
                },
                Some(|d| {
                    command(&CancelShipment {
                        order_id: d.order_id.clone(),
                    })
                }),
                |d, reply| d.shipment_id = text(reply, "shipment_id"),
                false,
            ),
            step(
                "capture_payment",
                |d| {
                    command(&CapturePayment {
                        order_id: d.order_id.clone(),
                    })
                },
                None,
                |_, _| {},
                true,
            ),
            step(
                "commit_stock",
                |d| {
                    command(&CommitStock {
                        order_id: d.order_id.clone(),
                    })
                },
                None,
                |_, _| {},
                true,
            ),
        ];
        Self {
            changes,
            steps,
            events,
        }
    }
}

impl Saga for PlaceOrderSaga {
    type Data = PlaceOrderData;

    fn name(&self) -> &'static str {
        "place_order"
    }

    fn steps(&self) -> &[Step<PlaceOrderData>] {
        &self.steps
    }

    fn reply_topic(&self) -> &str {
        flotilla_contracts::ORDER_SAGA_REPLIES
    }

    /// Capturing the payment and committing the stock go out together once the shipment is
    /// scheduled (as in the choreography, where both react to `ShipmentScheduled`): neither
    /// depends on the other, and the order is approved when both are done.
    fn concurrent_tail(&self) -> bool {
        true
    }

    /// A saga failed at a deadline ended in that transaction: wake the requests waiting for the
    /// order (the saga's id is the order's).
    fn timed_out(&self, saga_id: &str) {
        self.changes.committed(saga_id);
    }

    fn on_transition(
        &self,
        db: &rusqlite::Connection,
        saga_id: &str,
        data: &PlaceOrderData,
        transition: &Transition,
    ) -> Result<Vec<Message>, Error> {
        // Capturing and committing are the participants' facts; the order records the approval
        // that follows them. Other transitions leave the order as it is (no need to load it).
        if !matches!(
            transition,
            Transition::StepSucceeded {
                step: "reserve_stock" | "authorize_payment" | "schedule_shipment"
            } | Transition::Completed
                | Transition::Failed { .. }
        ) {
            return Ok(Vec::new());
        }
        record(&self.events, db, &data.order_id, saga_id, |state| {
            let events = match transition {
                Transition::StepSucceeded {
                    step: "reserve_stock",
                } => state.reserve_inventory()?,
                Transition::StepSucceeded {
                    step: "authorize_payment",
                } => state.authorize_payment(data.payment_id.as_deref().unwrap_or_default())?,
                Transition::StepSucceeded {
                    step: "schedule_shipment",
                } => state.schedule_shipment(data.shipment_id.as_deref().unwrap_or_default())?,
                Transition::Completed => state.approve()?,
                Transition::Failed { reason } => state.reject(reason)?,
                _ => Vec::new(),
            };
            Ok((events, ()))
        })
        .map_err(|e| Error::Transition(e.to_string()))?;
        if matches!(
            transition,
            Transition::Completed | Transition::Failed { .. }
        ) {
            self.changes.ending(&data.order_id);
        }
        Ok(match transition {
            Transition::Completed => vec![notification(data, "OrderConfirmed", json!({}))],
            Transition::Failed { reason } => vec![notification(
                data,
                "OrderRejected",
                json!({ "reason": reason }),
            )],
            _ => Vec::new(),
        })
    }
}

fn notification(data: &PlaceOrderData, kind: &str, extra: Value) -> Message {
    notifications::message(
        &data.order_id,
        &data.customer_id,
        data.total_cents,
        kind,
        extra,
    )
}

/// The saga's data for a placed order (the same details the choreographed saga carries).
pub fn data_of(order_id: &str, order: &Order) -> Option<PlaceOrderData> {
    let details = participants::details(order_id, order)?;
    Some(PlaceOrderData {
        order_id: details.order_id,
        customer_id: details.customer_id,
        lines: details.lines,
        total_cents: details.total_cents,
        destination: details.destination,
        payment_id: None,
        shipment_id: None,
    })
}
