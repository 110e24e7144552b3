//! The reference system's message contracts, in one place: the topics, the commands the order
//! saga sends to its participants (their payloads as serde types), and which service consumes
//! which topic (the embedded transport's wiring).
//!
//! A command's `message_type` is its type's name ([`Command::TYPE`]); a participant answers
//! with `flotilla_saga::succeeded` (payload `{"ok": true, …}`) or `flotilla_saga::refused`
//! (`{"ok": false, "reason": …}`) on the command's `reply_to` topic.

use flotilla_messaging::embedded::Subscriptions;
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

/// Who consumes what: every process builds its embedded transport with this wiring.
///
/// ```
/// let wiring = flotilla_contracts::subscriptions();
/// assert_eq!(wiring.groups(flotilla_contracts::PAYMENT_COMMANDS), ["payment"]);
/// assert_eq!(wiring.groups(flotilla_contracts::ORDER_SAGA_REPLIES), ["order"]);
/// ```
pub fn subscriptions() -> Subscriptions {
    Subscriptions::default()
        .topic(INVENTORY_COMMANDS, ["inventory"])
        .topic(PAYMENT_COMMANDS, ["payment"])
        .topic(SHIPPING_COMMANDS, ["shipping"])
        .topic(ORDER_SAGA_REPLIES, ["order"])
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
    fn message(&self, key: &str, reply_to: &str) -> flotilla_messaging::Message {
        let payload = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        flotilla_messaging::Message::new(Self::TOPIC, Self::TYPE, key, payload)
            .replying_to(reply_to)
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
    }
);
command!(
    /// Cancel the order's shipment (compensation, or a customer's cancellation).
    CancelShipment on SHIPPING_COMMANDS {
        /// The order.
        order_id: String,
    }
);

/// The payload of `message` as command `C`, if it is one.
///
/// ```
/// use flotilla_contracts::{CancelShipment, Command, decode};
/// let message = flotilla_messaging::Message::new(
///     CancelShipment::TOPIC, CancelShipment::TYPE, "o-1",
///     serde_json::json!({ "order_id": "o-1", "idempotency_key": "s:2:COMPENSATION" }),
/// );
/// let command: CancelShipment = decode(&message).unwrap().unwrap();
/// assert_eq!(command.order_id, "o-1");
/// ```
pub fn decode<C: Command>(
    message: &flotilla_messaging::Message,
) -> Option<Result<C, serde_json::Error>> {
    (message.message_type == C::TYPE).then(|| C::deserialize(&message.payload))
}
