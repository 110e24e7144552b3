//! What every handler of the HTTP API is given.

use std::sync::Arc;

use flotilla_discovery::Discovery;
use flotilla_saga::SagaStyle;
use tokio::sync::Notify;

use super::customers::Customers;
use super::prices::Prices;
use crate::sagas::Sagas;

/// What a handler needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The order database and the sagas wired to it.
    pub sagas: Sagas,
    /// How to reach the inventory.
    pub discovery: Discovery,
    /// The catalog prices read from the inventory lately.
    pub prices: Arc<Prices>,
    /// The customers known to have an account (checked before an order is stored).
    pub customers: Arc<Customers>,
    /// Wakes the outbox relay once a new order's first saga command is committed.
    pub relay: Arc<Notify>,
    /// The saga style of requests that do not choose one.
    pub style: SagaStyle,
}
