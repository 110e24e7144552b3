//! The order service: takes orders, prices them with the inventory's catalog, and keeps them
//! **event-sourced**: an order's state is a fold of its events in the event store, and lists and
//! reports come from read models kept by projections (CQRS). Its database is
//! `<data_dir>/order.db`. It runs the place-order and cancel-order sagas, orchestrated or
//! choreographed.
//!
//! The code is layered, each layer depending only on the ones below it:
//!
//! ```text
//! service ─▶ api (HTTP) ─▶ sagas ─▶ store ─▶ domain
//!    └────▶ consumer ──────┘
//! ```
//!
//! - [`domain`]: the order aggregate (events, fold, decisions, upcasters) and the validated
//!   input; no I/O.
//! - [`store`]: the order database (events, idempotency keys, read models and their
//!   projections, notifications) and the in-memory waiters of order changes.
//! - [`sagas`]: the place-order and cancel-order sagas in both styles, and [`sagas::Sagas`],
//!   which starts them in one transaction with the order's event.
//! - [`api`]: the HTTP routes (the table of endpoints is there), pricing through discovery,
//!   the long poll of `Prefer: wait`.
//! - [`consumer`]: the one message handler of the service, dispatching by topic.
//! - [`service`]: builds all of it from the settings and runs it ([`run`]).
//! - [`settings`]: the service's section of the settings ([`OrderSettings`]) and [`Config`],
//!   everything [`run`] reads.

pub mod api;
pub mod consumer;
pub mod domain;
pub mod sagas;
pub mod service;
pub mod settings;
pub mod store;

pub use api::{
    Accepted, Context, EventList, IDEMPOTENCY_KEY, MAX_LIST, MAX_REASON, MAX_WAIT_SECONDS,
    NotificationList, OrderList, OrderView, RevenueReport, SAGA_STYLE, routes,
};
pub use consumer::Inbox;
pub use domain::{Cancellation, Order, OrderError, OrderEvent, OrderLine, Status};
pub use flotilla_saga::SagaStyle;
pub use sagas::{Cancelling, Placed, Placement, Sagas};
pub use service::{open, rebuild_projections, run};
pub use settings::{Config, OrderSettings};
pub use store::{Database, DayRevenue, Summary};

/// The service's name in the registry.
pub const SERVICE: &str = "order";
