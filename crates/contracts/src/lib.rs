//! The reference system's message contracts, in one place: the topics, the commands the order
//! saga sends to its participants (their payloads as serde types), and which service consumes
//! which topic (the embedded transport's wiring).
//!
//! Two saga styles share these contracts:
//!
//! * **orchestration**: the order's orchestrator sends [`Command`]s; a command's
//!   `message_type` is its type's name ([`Command::TYPE`]); a participant answers with
//!   [`succeeded`] (payload `{"ok": true, …}`) or [`refused`] (`{"ok": false, "reason": …}`) on
//!   the command's `reply_to` topic, the replies `flotilla_saga`'s orchestrator reads;
//! * **choreography**: every service publishes the facts it established as [`Event`]s on its
//!   own `<service>.events` topic, and the others react to them (nobody coordinates):
//!
//! ```text
//!  order         OrderCreated ─▶ inventory: reserve ─▶ StockReserved ─▶ payment: authorize
//!  payment   PaymentAuthorized ─▶ shipping: schedule ─▶ ShipmentScheduled ─▶ payment: capture
//!                                                                       └─▶ inventory: commit
//!  failures  StockRefused                      (nothing to undo)
//!            PaymentRefused   ─▶ inventory: release
//!            ShipmentRefused  ─▶ payment: void, inventory: release
//!  cancel    OrderCancellationRequested ─▶ shipping: cancel ─▶ ShipmentCancelled
//!                                          ─▶ payment: refund, inventory: restock
//!  deadline  OrderExpired ─▶ shipping: refuse unless scheduled ─▶ ShipmentRefused (as above)
//! ```
//!
//! The order service listens to every fact and decides the order's outcome from them
//! (`flotilla_saga::choreography`).
//!
//! A handler recognizes the commands and facts it is given with [`read`]: `Ok(None)` for a
//! message of another type, a rejection ([`HandlerError::Reject`]) for one it cannot read.
//!
//! It does not handle messages: the services do, each through its `flotilla_messaging`
//! participant declaration ([`flotilla_messaging::participant`]).

use flotilla_messaging::Message;
use flotilla_messaging::embedded::Subscriptions;
use flotilla_messaging::inbox::HandlerError;
use flotilla_messaging::runtime::Wiring;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Commands to the inventory.
pub const INVENTORY_COMMANDS: &str = "inventory.commands";
/// Commands to the payment service.
pub const PAYMENT_COMMANDS: &str = "payment.commands";
/// Commands to the shipping service.
pub const SHIPPING_COMMANDS: &str = "shipping.commands";
/// Replies to the order saga's commands.
pub const ORDER_SAGA_REPLIES: &str = "order.saga-replies";
/// The order's facts for choreographed sagas (an order created, a cancellation requested).
pub const ORDER_EVENTS: &str = "order.events";
/// The inventory's facts (stock reserved, refused, released, committed, restocked).
pub const INVENTORY_EVENTS: &str = "inventory.events";
/// The payment service's facts (authorized, refused, voided, captured, refunded).
pub const PAYMENT_EVENTS: &str = "payment.events";
/// The shipping service's facts (scheduled, refused, cancelled, cancellation refused).
pub const SHIPPING_EVENTS: &str = "shipping.events";
/// The order's notifications to its customer (fire-and-forget).
pub const ORDER_NOTIFICATIONS: &str = "order.notifications";

/// Who consumes what: every process builds its embedded transport with this wiring.
///
/// ```
/// let wiring = flotilla_contracts::subscriptions();
/// assert_eq!(wiring.groups(flotilla_contracts::PAYMENT_COMMANDS), ["payment"]);
/// assert_eq!(wiring.groups(flotilla_contracts::ORDER_SAGA_REPLIES), ["order"]);
/// assert_eq!(wiring.groups(flotilla_contracts::SHIPPING_EVENTS), ["inventory", "order", "payment"]);
/// ```
pub fn subscriptions() -> Subscriptions {
    Subscriptions::default()
        .topic(INVENTORY_COMMANDS, ["inventory"])
        .topic(PAYMENT_COMMANDS, ["payment"])
        .topic(SHIPPING_COMMANDS, ["shipping"])
        .topic(ORDER_SAGA_REPLIES, ["order"])
        .topic(ORDER_EVENTS, ["inventory", "shipping"])
        .topic(INVENTORY_EVENTS, ["order", "payment"])
        .topic(PAYMENT_EVENTS, ["inventory", "order", "shipping"])
        .topic(SHIPPING_EVENTS, ["inventory", "order", "payment"])
        .topic(ORDER_NOTIFICATIONS, ["order"])
}

/// The topics each service consumes, as [`subscriptions`] wires them.
///
/// ```
/// assert_eq!(
///     flotilla_contracts::topics_of("payment"),
///     ["payment.commands", "inventory.events", "shipping.events"]
/// );
/// ```
pub fn topics_of(service: &str) -> &'static [&'static str] {
    match service {
        "inventory" => &[
            INVENTORY_COMMANDS,
            ORDER_EVENTS,
            PAYMENT_EVENTS,
            SHIPPING_EVENTS,
        ],
        "payment" => &[PAYMENT_COMMANDS, INVENTORY_EVENTS, SHIPPING_EVENTS],
        "shipping" => &[SHIPPING_COMMANDS, ORDER_EVENTS, PAYMENT_EVENTS],
        "order" => &[
            ORDER_SAGA_REPLIES,
            INVENTORY_EVENTS,
            PAYMENT_EVENTS,
            SHIPPING_EVENTS,
            ORDER_NOTIFICATIONS,
        ],
        _ => &[],
    }
}

/// How `service`'s messaging is wired: [`subscriptions`] and the topics it consumes
/// ([`topics_of`]), for `flotilla_messaging::runtime::start` and a participant's `run`.
///
/// ```
/// let wiring = flotilla_contracts::wiring("shipping");
/// assert_eq!(wiring.topics, ["shipping.commands", "order.events", "payment.events"]);
/// assert_eq!(wiring.subscriptions.groups(flotilla_contracts::SHIPPING_COMMANDS), ["shipping"]);
/// ```
pub fn wiring(service: &str) -> Wiring {
    Wiring {
        subscriptions: subscriptions(),
        topics: topics_of(service),
    }
}

/// A command: its message type and topic.
pub trait Command: Serialize + DeserializeOwned {
    /// The message type, the type's name.
    const TYPE: &'static str;
    /// The topic it is sent on.
    const TOPIC: &'static str;

    /// The command as a message with ordering key `key`, asking for a reply on `reply_to`.
    ///
    /// ```
    /// use flotilla_contracts::{CancelShipment, Command};
    /// let message = CancelShipment { order_id: "o-1".into() }.message("o-1", "order.saga-replies");
    /// assert_eq!((message.topic.as_str(), message.message_type.as_str()), ("shipping.commands", "CancelShipment"));
    /// assert_eq!(message.reply_to.as_deref(), Some("order.saga-replies"));
    /// assert_eq!(message.payload["order_id"], "o-1");
    /// ```
    fn message(&self, key: &str, reply_to: &str) -> Message {
        let payload = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        Message::new(Self::TOPIC, Self::TYPE, key, payload).replying_to(reply_to)
    }
}

macro_rules! command {
    ($(#[$doc:meta])* $name:ident on $topic:ident { $($(#[$field_doc:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            $($(#[$field_doc])* pub $field: $ty,)*
        }
        impl Command for $name {
            const TYPE: &'static str = stringify!($name);
            const TOPIC: &'static str = $topic;
        }
        impl Contract for $name {
            fn carried_by(message: &Message) -> bool {
                message.message_type == <Self as Command>::TYPE
            }
        }
    };
}

/// Units of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The product.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

/// Where to ship.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Destination {
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
}

command!(
    /// Hold the order's stock (refused on shortage or an unknown SKU).
    ReserveStock on INVENTORY_COMMANDS {
        /// The order.
        order_id: String,
        /// What to hold.
        lines: Vec<Line>,
    }
);
command!(
    /// Give the order's held stock back (compensation).
    ReleaseStock on INVENTORY_COMMANDS {
        /// The order.
        order_id: String,
    }
);
command!(
    /// The order is approved: its held stock leaves the warehouse.
    CommitStock on INVENTORY_COMMANDS {
        /// The order.
        order_id: String,
    }
);
command!(
    /// An approved order was cancelled: its stock comes back.
    RestockStock on INVENTORY_COMMANDS {
        /// The order.
        order_id: String,
    }
);
command!(
    /// Hold the order's amount on the customer's credit (refused beyond the limit).
    AuthorizePayment on PAYMENT_COMMANDS {
        /// The order.
        order_id: String,
        /// The paying customer.
        customer_id: String,
        /// The amount, in cents.
        amount_cents: i64,
    }
);
command!(
    /// Release the hold (compensation).
    VoidPayment on PAYMENT_COMMANDS {
        /// The order.
        order_id: String,
    }
);
command!(
    /// Take the held amount.
    CapturePayment on PAYMENT_COMMANDS {
        /// The order.
        order_id: String,
    }
);
command!(
    /// Give a captured amount back.
    RefundPayment on PAYMENT_COMMANDS {
        /// The order.
        order_id: String,
    }
);
command!(
    /// Schedule the order's shipment (refused for unserviceable destinations).
    ScheduleShipment on SHIPPING_COMMANDS {
        /// The order.
        order_id: String,
        /// Where to.
        destination: Destination,
        /// The order's customer, the shipment's owner (absent in commands written before it
        /// existed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        customer_id: Option<String>,
    }
);
command!(
    /// Cancel the order's shipment (compensation, or a customer's cancellation).
    CancelShipment on SHIPPING_COMMANDS {
        /// The order.
        order_id: String,
    }
);

/// A fact one service publishes for the others (choreography): its message type and topic.
pub trait Event: Serialize + DeserializeOwned {
    /// The message type, the type's name.
    const TYPE: &'static str;
    /// The topic it is published on (its service's events).
    const TOPIC: &'static str;

    /// The event as a message about order `order_id` (its key, so that one order's facts keep
    /// their order), caused by `cause` (same correlation id) if given.
    ///
    /// ```
    /// use flotilla_contracts::{Event, StockReleased};
    /// let message = StockReleased { order_id: "o-1".into() }.message("o-1", None);
    /// assert_eq!((message.topic.as_str(), message.message_type.as_str()), ("inventory.events", "StockReleased"));
    /// assert_eq!(message.key, "o-1");
    /// assert_eq!(message.reply_to, None);
    /// ```
    fn message(&self, order_id: &str, cause: Option<&Message>) -> Message {
        let payload = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let message = Message::new(Self::TOPIC, Self::TYPE, order_id, payload);
        match cause {
            Some(cause) => message.caused_by(cause),
            None => message.correlated(order_id),
        }
    }
}

macro_rules! event {
    ($(#[$doc:meta])* $name:ident on $topic:ident { $($(#[$field_doc:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            $($(#[$field_doc])* pub $field: $ty,)*
        }
        impl Event for $name {
            const TYPE: &'static str = stringify!($name);
            const TOPIC: &'static str = $topic;
        }
        impl Contract for $name {
            fn carried_by(message: &Message) -> bool {
                message.topic == <Self as Event>::TOPIC
                    && message.message_type == <Self as Event>::TYPE
            }
        }
    };
}

/// What the participants of a choreographed place-order saga need to know of the order; it
/// travels with the facts that lead to the next step (event-carried state transfer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDetails {
    /// The order.
    pub order_id: String,
    /// The paying customer.
    pub customer_id: String,
    /// What to reserve.
    pub lines: Vec<Line>,
    /// What to charge, in cents.
    pub total_cents: i64,
    /// Where to ship.
    pub destination: Destination,
}

event!(
    /// An order was placed with the choreographed saga: the inventory reserves its stock.
    OrderCreated on ORDER_EVENTS {
        /// The order.
        order: OrderDetails,
    }
);
event!(
    /// The customer asked to cancel an approved order (choreography): shipping cancels the
    /// shipment first, the others follow.
    OrderCancellationRequested on ORDER_EVENTS {
        /// The order.
        order_id: String,
        /// Why.
        reason: String,
    }
);
event!(
    /// The choreographed order did not end by its deadline: shipping refuses it unless its
    /// shipment is scheduled already (past that point of no return the saga goes on to its
    /// approval), and the refusal undoes the rest as any `ShipmentRefused` does.
    OrderExpired on ORDER_EVENTS {
        /// The order.
        order_id: String,
        /// Why, as the rejected order will say.
        reason: String,
    }
);
event!(
    /// The order's stock is held: the payment service authorizes the amount.
    StockReserved on INVENTORY_EVENTS {
        /// The order.
        order: OrderDetails,
    }
);
event!(
    /// The order's stock could not be held (the saga's first natural failure).
    StockRefused on INVENTORY_EVENTS {
        /// The order.
        order_id: String,
        /// Why.
        reason: String,
    }
);
event!(
    /// The order's held stock was given back (compensation).
    StockReleased on INVENTORY_EVENTS {
        /// The order.
        order_id: String,
    }
);
event!(
    /// The order's stock left the warehouse.
    StockCommitted on INVENTORY_EVENTS {
        /// The order.
        order_id: String,
    }
);
event!(
    /// A cancelled order's stock came back.
    StockRestocked on INVENTORY_EVENTS {
        /// The order.
        order_id: String,
    }
);
event!(
    /// The amount is held on the customer's credit: shipping schedules the shipment.
    PaymentAuthorized on PAYMENT_EVENTS {
        /// The order.
        order: OrderDetails,
        /// The payment.
        payment_id: String,
    }
);
event!(
    /// The amount could not be held (over the credit limit): the stock is released.
    PaymentRefused on PAYMENT_EVENTS {
        /// The order.
        order_id: String,
        /// Why.
        reason: String,
    }
);
event!(
    /// The hold was released (compensation).
    PaymentVoided on PAYMENT_EVENTS {
        /// The order.
        order_id: String,
    }
);
event!(
    /// The held amount was taken.
    PaymentCaptured on PAYMENT_EVENTS {
        /// The order.
        order_id: String,
    }
);
event!(
    /// A cancelled order's charge was given back.
    PaymentRefunded on PAYMENT_EVENTS {
        /// The order.
        order_id: String,
    }
);
event!(
    /// The shipment is scheduled (the saga's pivot): payment captures, inventory commits.
    ShipmentScheduled on SHIPPING_EVENTS {
        /// The order.
        order_id: String,
        /// The shipment.
        shipment_id: String,
    }
);
event!(
    /// The destination cannot be served: payment voids, inventory releases.
    ShipmentRefused on SHIPPING_EVENTS {
        /// The order.
        order_id: String,
        /// Why.
        reason: String,
    }
);
event!(
    /// A cancelled order's shipment was cancelled: payment refunds, inventory restocks.
    ShipmentCancelled on SHIPPING_EVENTS {
        /// The order.
        order_id: String,
    }
);
event!(
    /// The shipment could not be cancelled (it left already): the order stays approved.
    ShipmentCancellationRefused on SHIPPING_EVENTS {
        /// The order.
        order_id: String,
        /// Why.
        reason: String,
    }
);

/// A command or a fact of these contracts, as [`read`] recognizes it: a command by its
/// message type, a fact by its topic and type.
pub trait Contract: DeserializeOwned {
    /// Whether `message` is one of these (whatever its payload).
    fn carried_by(message: &Message) -> bool;
}

/// The payload of `message` as command or fact `T`: `Ok(None)` if it is not one, and a
/// rejection (`HandlerError::Reject`, "`<type>` is unreadable: …") if it is one that cannot be
/// read, so that a handler tries its types in turn with `if let Some(x) = read::<T>(message)? {`.
///
/// ```
/// use flotilla_contracts::{CancelShipment, Command, Event, StockReleased, read};
/// use flotilla_messaging::inbox::HandlerError;
/// let message = StockReleased { order_id: "o-1".into() }.message("o-1", None);
/// let fact: StockReleased = read(&message).unwrap().unwrap();
/// assert_eq!(fact.order_id, "o-1");
/// assert!(read::<CancelShipment>(&message).unwrap().is_none());
///
/// let garbled = flotilla_messaging::Message::new(
///     CancelShipment::TOPIC, CancelShipment::TYPE, "o-1", serde_json::json!({ "order": 1 }),
/// );
/// let Err(HandlerError::Reject(reason)) = read::<CancelShipment>(&garbled) else { panic!() };
/// assert_eq!(reason, "CancelShipment is unreadable: missing field `order_id`");
/// ```
pub fn read<T: Contract>(message: &Message) -> Result<Option<T>, HandlerError> {
    if !T::carried_by(message) {
        return Ok(None);
    }
    T::deserialize(&message.payload).map(Some).map_err(|error| {
        HandlerError::Reject(format!("{} is unreadable: {error}", message.message_type))
    })
}

/// The rejection of `fact` by a participant whose step it asks for cannot follow (the order is
/// in a state the step cannot come after), for `why`: `<fact type> for order <key>: <why>`.
///
/// ```
/// use flotilla_contracts::{Event, ShipmentScheduled};
/// use flotilla_messaging::inbox::HandlerError;
/// let fact = ShipmentScheduled { order_id: "o-1".into(), shipment_id: "s-1".into() }.message("o-1", None);
/// let HandlerError::Reject(reason) = flotilla_contracts::cannot_follow(&fact, "it is VOIDED") else { panic!() };
/// assert_eq!(reason, "ShipmentScheduled for order o-1: it is VOIDED");
/// ```
pub fn cannot_follow(fact: &Message, why: impl std::fmt::Display) -> HandlerError {
    HandlerError::Reject(format!(
        "{} for order {}: {why}",
        fact.message_type, fact.key
    ))
}

/// The reply of a participant that did what `command` asked, with `data` for the saga: type
/// `<command type>Succeeded`, payload `data`'s fields and `"ok": true`, on the command's
/// `reply_to` topic (`None` if it asked for no reply).
///
/// ```
/// use flotilla_messaging::Message;
/// let command = Message::new("payment.commands", "AuthorizePayment", "saga-1", serde_json::json!({}))
///     .replying_to("order.saga-replies");
/// let reply = flotilla_contracts::succeeded(&command, serde_json::json!({ "payment_id": "p-1" })).unwrap();
/// assert_eq!(reply.message_type, "AuthorizePaymentSucceeded");
/// assert_eq!(reply.payload["ok"], true);
/// assert_eq!(reply.payload["payment_id"], "p-1");
/// ```
pub fn succeeded(command: &Message, data: serde_json::Value) -> Option<Message> {
    let mut payload = match data {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    payload.insert("ok".into(), true.into());
    command.reply(format!("{}Succeeded", command.message_type), payload.into())
}

/// The reply of a participant that refused `command` for `reason` (a business failure): type
/// `<command type>Refused`, payload `{"ok": false, "reason": …}`.
///
/// ```
/// use flotilla_messaging::Message;
/// let command = Message::new("inventory.commands", "ReserveStock", "saga-1", serde_json::json!({}))
///     .replying_to("order.saga-replies");
/// let reply = flotilla_contracts::refused(&command, "out of stock: KB-001").unwrap();
/// assert_eq!(reply.message_type, "ReserveStockRefused");
/// assert_eq!(reply.payload["ok"], false);
/// assert_eq!(reply.payload["reason"], "out of stock: KB-001");
/// ```
pub fn refused(command: &Message, reason: &str) -> Option<Message> {
    command.reply(
        format!("{}Refused", command.message_type),
        serde_json::json!({ "ok": false, "reason": reason }),
    )
}
