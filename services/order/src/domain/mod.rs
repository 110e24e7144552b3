//! The domain layer: what an order is and what may happen to it, with no storage, messaging or
//! HTTP. Everything above ([`crate::store`], [`crate::sagas`], [`crate::api`]) depends on it; it
//! depends on none of them.
//!
//! - [`aggregate`]: the event-sourced order: its events, the fold that gives its state, the
//!   commands that decide new events, and the upcasters of old event versions.
//! - [`input`]: the order as a client sends it, validated into a new order or a problem naming
//!   every invalid field.

pub mod aggregate;
pub mod input;

pub use aggregate::{Cancellation, Order, OrderError, OrderEvent, OrderLine, Status};
pub use input::{Address, NewOrder, PlaceOrder};
