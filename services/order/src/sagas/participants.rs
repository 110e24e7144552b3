//! What the order's sagas, in either style, tell the participants: the order's details as they
//! see them, a contract's command as a saga step's command, and how long a participant has to
//! answer a step.

use std::time::Duration;

use flotilla_contracts::{Destination, Line, OrderDetails};
use flotilla_saga::Command;
use serde_json::Value;

use crate::domain::Order;

/// How long a participant has to answer before the command is sent again.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of a step before the saga gives up on it and compensates.
pub const STEP_ATTEMPTS: u32 = 3;

/// What the participants of the choreographed place-order saga need to know of `order`.
pub fn details(order_id: &str, order: &Order) -> Option<OrderDetails> {
    let ship_to = order.ship_to.as_ref()?;
    Some(OrderDetails {
        order_id: order_id.to_owned(),
        customer_id: order.customer_id.clone(),
        lines: order
            .items
            .iter()
            .map(|line| Line {
                sku: line.sku.clone(),
                quantity: line.quantity,
            })
            .collect(),
        total_cents: order.total_cents,
        destination: Destination {
            name: ship_to.name.clone(),
            street: ship_to.street.clone(),
            city: ship_to.city.clone(),
            postal_code: ship_to.postal_code.clone(),
            country: ship_to.country.clone(),
        },
    })
}

/// A contract command as the command of a saga step.
pub fn command<C: flotilla_contracts::Command>(command: &C) -> Command {
    Command {
        topic: C::TOPIC.to_owned(),
        message_type: C::TYPE.to_owned(),
        payload: serde_json::to_value(command).unwrap_or(Value::Null),
    }
}
