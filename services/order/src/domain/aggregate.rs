//! The order aggregate: its state is a fold of its events; commands check the invariants and
//! answer with the events to append (nothing is changed by a refused command).
//!
//! ```text
//!                       InventoryReserved, PaymentAuthorized, ShipmentScheduled
//!                                 (in any order, each once)
//!   OrderPlaced ──▶ PENDING ──────────────────────────────────────▶ OrderApproved ──▶ APPROVED
//!                      │                                                                │
//!                      └── OrderRejected{reason} ──▶ REJECTED                           │
//!                                                                                       ▼
//!                                             APPROVED, for good ◀── CancellationRequested
//!                                          (CancellationRefused)             │
//!                                                                            ▼
//!                                                        OrderCancelled ──▶ CANCELLED
//! ```
//!
//! Schema history: `OrderPlaced` v1 stored each line's price as `price_cents` and no total;
//! v2 (current) names it `unit_price_cents`, as the API does, and stores `total_cents`, so that
//! read models need not recompute it. [`upcasters`] turns v1 events into v2 on every read.

use flotilla_eventstore::{Aggregate, EventContext, Upcasters};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::input::Address;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Placed; the saga has not finished.
    Pending,
    /// Every step succeeded: stock committed, payment captured.
    Approved,
    /// A step failed; the earlier ones were compensated.
    Rejected,
    /// Cancelled by the customer after approval.
    Cancelled,
}

impl Status {
    /// The status as stored and shown (`PENDING`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Approved => "APPROVED",
            Status::Rejected => "REJECTED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// The status named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Status::Pending,
            Status::Approved,
            Status::Rejected,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Product SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// Unit price when ordered, in cents.
    pub unit_price_cents: i64,
}

/// What happens to an order. Serialised with its name in `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OrderEvent {
    /// The order was accepted and priced (schema v2).
    OrderPlaced {
        /// The ordering customer.
        customer_id: String,
        /// The priced lines.
        items: Vec<OrderLine>,
        /// Where to ship.
        ship_to: Address,
        /// Sum of the lines, in cents.
        total_cents: i64,
    },
    /// The inventory holds the order's stock.
    InventoryReserved {},
    /// The payment service holds the amount.
    PaymentAuthorized {
        /// The payment's id at the payment service.
        payment_id: String,
    },
    /// Shipping accepted the destination.
    ShipmentScheduled {
        /// The shipment's id at the shipping service.
        shipment_id: String,
    },
    /// Every step succeeded.
    OrderApproved {},
    /// A step failed.
    OrderRejected {
        /// Why, for the customer.
        reason: String,
    },
    /// The customer cancelled after approval.
    OrderCancelled {
        /// Why.
        reason: String,
    },
    /// The customer asked to cancel the approved order; the cancel-order saga runs.
    CancellationRequested {
        /// Why.
        reason: String,
    },
    /// The order could not be cancelled (its shipment left already); it stays approved.
    CancellationRefused {
        /// Why.
        reason: String,
    },
}

/// Where a customer's cancellation of an approved order stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Cancellation {
    /// The cancel-order saga runs.
    Requested {
        /// The customer's reason.
        reason: String,
    },
    /// It could not be done (the shipment left): the order stays approved, for good.
    Refused {
        /// Why.
        reason: String,
    },
}

/// An order as folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// `None` until placed.
    pub status: Option<Status>,
    /// The ordering customer.
    pub customer_id: String,
    /// The priced lines.
    pub items: Vec<OrderLine>,
    /// Where to ship.
    pub ship_to: Option<Address>,
    /// Sum of the lines, in cents.
    pub total_cents: i64,
    /// Whether the stock is reserved.
    pub inventory_reserved: bool,
    /// The authorised payment, if any.
    pub payment_id: Option<String>,
    /// The scheduled shipment, if any.
    pub shipment_id: Option<String>,
    /// Why it was rejected or cancelled.
    pub reason: Option<String>,
    /// The latest cancellation asked of the approved order, if any.
    #[serde(default)]
    pub cancellation: Option<Cancellation>,
    /// When it was placed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

/// A command the order's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The order exists already.
    #[error("the order exists already")]
    AlreadyPlaced,
    /// There is no such order.
    #[error("there is no such order")]
    NotFound,
    /// The command needs another status.
    #[error("the order is {status}; this needs it {needed}")]
    WrongStatus {
        /// Its status.
        status: &'static str,
        /// What the command needs.
        needed: &'static str,
    },
    /// The order's cancellation was refused before.
    #[error("the order cannot be cancelled: {reason}")]
    NotCancellable {
        /// Why.
        reason: String,
    },
    /// Approval before every step succeeded.
    #[error("the order cannot be approved before stock, payment and shipment are all in place")]
    Incomplete,
}

impl Order {
    /// Places a new order.
    pub fn place(
        &self,
        customer_id: &str,
        items: Vec<OrderLine>,
        ship_to: Address,
    ) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status.is_some() {
            return Err(OrderError::AlreadyPlaced);
        }
        let total_cents = items
            .iter()
            .map(|line| line.quantity.saturating_mul(line.unit_price_cents))
            .fold(0i64, i64::saturating_add);
        Ok(vec![OrderEvent::OrderPlaced {
            customer_id: customer_id.to_owned(),
            items,
            ship_to,
            total_cents,
        }])
    }

    fn pending(&self) -> Result<(), OrderError> {
        match self.status {
            None => Err(OrderError::NotFound),
            Some(Status::Pending) => Ok(()),
            Some(other) => Err(OrderError::WrongStatus {
                status: other.as_str(),
                needed: "PENDING",
            }),
        }
    }

    /// Records the stock reservation (once: a repeat changes nothing).
    pub fn reserve_inventory(&self) -> Result<Vec<OrderEvent>, OrderError> {
        self.pending()?;
        Ok(if self.inventory_reserved {
            vec![]
        } else {
            vec![OrderEvent::InventoryReserved {}]
        })
    }

    /// Records the payment authorisation (once).
    pub fn authorize_payment(&self, payment_id: &str) -> Result<Vec<OrderEvent>, OrderError> {
        self.pending()?;
        Ok(if self.payment_id.is_some() {
            vec![]
        } else {
            vec![OrderEvent::PaymentAuthorized {
                payment_id: payment_id.to_owned(),
            }]
        })
    }

    /// Records the scheduled shipment (once).
    pub fn schedule_shipment(&self, shipment_id: &str) -> Result<Vec<OrderEvent>, OrderError> {
        self.pending()?;
        Ok(if self.shipment_id.is_some() {
            vec![]
        } else {
            vec![OrderEvent::ShipmentScheduled {
                shipment_id: shipment_id.to_owned(),
            }]
        })
    }

    /// Approves a pending order whose steps all succeeded; approving again changes nothing.
    pub fn approve(&self) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status == Some(Status::Approved) {
            return Ok(vec![]);
        }
        self.pending()?;
        if !self.inventory_reserved || self.payment_id.is_none() || self.shipment_id.is_none() {
            return Err(OrderError::Incomplete);
        }
        Ok(vec![OrderEvent::OrderApproved {}])
    }

    /// Rejects a pending order; rejecting again changes nothing.
    pub fn reject(&self, reason: &str) -> Result<Vec<OrderEvent>, OrderError> {
        if self.status == Some(Status::Rejected) {
            return Ok(vec![]);
        }
        self.pending()?;
        Ok(vec![OrderEvent::OrderRejected {
            reason: reason.to_owned(),
        }])
    }

    /// Asks to cancel an approved order (the cancel-order saga starts); asking again while a
    /// cancellation runs, or once the order is cancelled, changes nothing. A cancellation that
    /// was refused stays refused (a shipment that left does not come back).
    pub fn request_cancellation(&self, reason: &str) -> Result<Vec<OrderEvent>, OrderError> {
        match (self.status, &self.cancellation) {
            (Some(Status::Approved), Some(Cancellation::Refused { reason })) => {
                Err(OrderError::NotCancellable {
                    reason: reason.clone(),
                })
            }
            (Some(Status::Cancelled), _)
            | (Some(Status::Approved), Some(Cancellation::Requested { .. })) => Ok(vec![]),
            (Some(Status::Approved), _) => Ok(vec![OrderEvent::CancellationRequested {
                reason: reason.to_owned(),
            }]),
            (None, _) => Err(OrderError::NotFound),
            (Some(other), _) => Err(OrderError::WrongStatus {
                status: other.as_str(),
                needed: "APPROVED",
            }),
        }
    }

    /// Records that the running cancellation could not be done; anything else changes nothing.
    pub fn refuse_cancellation(&self, reason: &str) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(match (self.status, &self.cancellation) {
            (Some(Status::Approved), Some(Cancellation::Requested { .. })) => {
                vec![OrderEvent::CancellationRefused {
                    reason: reason.to_owned(),
                }]
            }
            _ => vec![],
        })
    }

    /// Whether a cancellation of the approved order is running.
    pub fn cancelling(&self) -> bool {
        self.status == Some(Status::Approved)
            && matches!(self.cancellation, Some(Cancellation::Requested { .. }))
    }

    /// Cancels an approved order; cancelling again changes nothing.
    pub fn cancel(&self, reason: &str) -> Result<Vec<OrderEvent>, OrderError> {
        match self.status {
            Some(Status::Cancelled) => Ok(vec![]),
            Some(Status::Approved) => Ok(vec![OrderEvent::OrderCancelled {
                reason: reason.to_owned(),
            }]),
            None => Err(OrderError::NotFound),
            Some(other) => Err(OrderError::WrongStatus {
                status: other.as_str(),
                needed: "APPROVED",
            }),
        }
    }
}

impl Aggregate for Order {
    type Event = OrderEvent;
    const CATEGORY: &'static str = "order";

    fn apply(&mut self, event: &OrderEvent, context: &EventContext) {
        match event {
            OrderEvent::OrderPlaced {
                customer_id,
                items,
                ship_to,
                total_cents,
            } => {
                self.status = Some(Status::Pending);
                self.customer_id.clone_from(customer_id);
                self.items.clone_from(items);
                self.ship_to = Some(ship_to.clone());
                self.total_cents = *total_cents;
                self.created_at = Some(context.recorded_at);
            }
            OrderEvent::InventoryReserved {} => self.inventory_reserved = true,
            OrderEvent::PaymentAuthorized { payment_id } => {
                self.payment_id = Some(payment_id.clone());
            }
            OrderEvent::ShipmentScheduled { shipment_id } => {
                self.shipment_id = Some(shipment_id.clone());
            }
            OrderEvent::OrderApproved {} => self.status = Some(Status::Approved),
            OrderEvent::OrderRejected { reason } => {
                self.status = Some(Status::Rejected);
                self.reason = Some(reason.clone());
            }
            OrderEvent::OrderCancelled { reason } => {
                self.status = Some(Status::Cancelled);
                self.reason = Some(reason.clone());
            }
            OrderEvent::CancellationRequested { reason } => {
                self.cancellation = Some(Cancellation::Requested {
                    reason: reason.clone(),
                });
            }
            OrderEvent::CancellationRefused { reason } => {
                self.cancellation = Some(Cancellation::Refused {
                    reason: reason.clone(),
                });
            }
        }
        self.updated_at = Some(context.recorded_at);
    }

    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            "OrderPlaced" => 2,
            _ => 1,
        }
    }
}

/// The upcasters of the order's events (see the module's schema history).
pub fn upcasters() -> Upcasters {
    Upcasters::default().with("OrderPlaced", 1, order_placed_v1_to_v2)
}

/// `OrderPlaced` v1 → v2: `items[].price_cents` becomes `unit_price_cents`, `total_cents` is
/// added (the sum of quantity × unit price).
fn order_placed_v1_to_v2(mut data: Value) -> Result<Value, String> {
    let object = data.as_object_mut().ok_or("not an object")?;
    let items = object
        .get_mut("items")
        .and_then(Value::as_array_mut)
        .ok_or("no `items` array")?;
    let mut total: i64 = 0;
    for (index, item) in items.iter_mut().enumerate() {
        let line = item
            .as_object_mut()
            .ok_or_else(|| format!("items[{index}] is not an object"))?;
        let price = line
            .remove("price_cents")
            .and_then(|p| p.as_i64())
            .ok_or_else(|| format!("items[{index}].price_cents is missing"))?;
        let quantity = line
            .get("quantity")
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("items[{index}].quantity is missing"))?;
        line.insert("unit_price_cents".into(), price.into());
        total = total.saturating_add(quantity.saturating_mul(price));
    }
    object.insert("total_cents".into(), total.into());
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> Address {
        Address {
            name: "Alice".into(),
            street: "1 Main St".into(),
            city: "Springfield".into(),
            postal_code: "12345".into(),
            country: "US".into(),
        }
    }

    fn fold(events: &[OrderEvent]) -> Order {
        let mut order = Order::default();
        for (version, event) in (1u64..).zip(events) {
            order.apply(
                event,
                &EventContext {
                    version,
                    recorded_at: OffsetDateTime::UNIX_EPOCH,
                },
            );
        }
        order
    }

    fn placed() -> Vec<OrderEvent> {
        let line = OrderLine {
            sku: "SKU-1".into(),
            quantity: 3,
            unit_price_cents: 250,
        };
        Order::default()
            .place("alice", vec![line], address())
            .expect("a new order can be placed")
    }

    #[test]
    fn placing_prices_the_total_and_only_once() {
        let events = placed();
        let order = fold(&events);
        assert_eq!(order.status, Some(Status::Pending));
        assert_eq!(order.total_cents, 750);
        assert_eq!(
            order.place("bob", vec![], address()),
            Err(OrderError::AlreadyPlaced)
        );
    }

    #[test]
    fn approval_needs_every_step_and_steps_are_recorded_once() {
        let mut events = placed();
        assert_eq!(fold(&events).approve(), Err(OrderError::Incomplete));
        events.extend(fold(&events).reserve_inventory().expect("pending"));
        assert!(
            fold(&events)
                .reserve_inventory()
                .expect("pending")
                .is_empty()
        );
        events.extend(fold(&events).authorize_payment("pay-1").expect("pending"));
        assert_eq!(fold(&events).approve(), Err(OrderError::Incomplete));
        events.extend(fold(&events).schedule_shipment("ship-1").expect("pending"));
        events.extend(fold(&events).approve().expect("complete"));
        let order = fold(&events);
        assert_eq!(order.status, Some(Status::Approved));
        assert!(order.approve().expect("idempotent").is_empty());
        assert!(matches!(
            order.reject("late"),
            Err(OrderError::WrongStatus {
                status: "APPROVED",
                ..
            })
        ));
        events.extend(order.cancel("changed my mind").expect("approved"));
        let order = fold(&events);
        assert_eq!(order.status, Some(Status::Cancelled));
        assert!(order.cancel("again").expect("idempotent").is_empty());
    }

    #[test]
    fn only_approved_orders_can_be_cancelled_and_rejection_is_final() {
        assert_eq!(Order::default().cancel("x"), Err(OrderError::NotFound));
        let mut events = placed();
        assert!(matches!(
            fold(&events).cancel("x"),
            Err(OrderError::WrongStatus {
                status: "PENDING",
                needed: "APPROVED"
            })
        ));
        events.extend(fold(&events).reject("out of stock").expect("pending"));
        let order = fold(&events);
        assert_eq!(order.reason.as_deref(), Some("out of stock"));
        assert!(order.reserve_inventory().is_err());
        assert!(order.reject("again").expect("idempotent").is_empty());
    }

    #[test]
    fn the_v1_upcaster_renames_prices_and_adds_the_total() {
        let v1 = serde_json::json!({
            "type": "OrderPlaced",
            "customer_id": "alice",
            "items": [
                { "sku": "A", "quantity": 2, "price_cents": 100 },
                { "sku": "B", "quantity": 1, "price_cents": 55 }
            ],
            "ship_to": serde_json::to_value(address()).expect("address")
        });
        let (version, v2) = upcasters().upcast("OrderPlaced", 1, v1).expect("upcast");
        assert_eq!(version, 2);
        let event: OrderEvent = serde_json::from_value(v2).expect("a v2 OrderPlaced");
        let OrderEvent::OrderPlaced {
            items, total_cents, ..
        } = event
        else {
            panic!("not OrderPlaced");
        };
        assert_eq!(total_cents, 255);
        assert_eq!(items[1].unit_price_cents, 55);
        let broken = serde_json::json!({ "type": "OrderPlaced", "items": [{ "sku": "A" }] });
        let error = upcasters()
            .upcast("OrderPlaced", 1, broken)
            .expect_err("no price");
        assert!(error.contains("items[0].price_cents"), "{error}");
    }
}
