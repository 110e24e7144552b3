//! The HTTP API layer: the routes of the order service, over the sagas and the store.
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `POST /v1/orders` | place an order ([`crate::domain::PlaceOrder`]); 202 with `Location`; honours `Idempotency-Key`; with `Prefer: wait=N`, 200 and the final order if its saga ends within N seconds |
//! | `GET /v1/orders/{id}` | the order; `?version=N` or `?at=RFC3339` for the order as it was (time travel) |
//! | `GET /v1/orders/{id}/events` | the order's event stream |
//! | `POST /v1/orders/{id}/cancel` | cancel an approved order (`{"reason": …}` optional); 202, or with `Prefer: wait=N` 200 once cancelled; 409 if it cannot be |
//! | `GET /v1/orders/{id}/notifications` | the customer notifications sent about the order |
//! | `GET /v1/orders?customer_id=…&status=…&limit=…` | orders from the read model, newest first (a customer's token: their own only) |
//! | `GET /v1/orders/revenue?from=YYYY-MM-DD&to=YYYY-MM-DD` | revenue per day from the read model (admins and services) |
//!
//! Sagas run in the style of the setting `saga_style` (orchestration by default); a request
//! may choose with the header `X-Saga-Style: orchestration|choreography`, and the answer says
//! which ran in its own `X-Saga-Style`.
//!
//! Bad input never stores anything: the body is validated first ([`crate::domain::input`]), then
//! every SKU is priced through discovery (an unknown SKU is a 422) and the customer checked
//! with the payment service (one without an account is a 422), and only then is `OrderPlaced`
//! appended, in one transaction with the idempotency key.
//!
//! Every route needs a verified token ([`flotilla_identity::guard`]); [`owner`] says what it
//! may reach. A customer places orders for themselves only (the body's `customer_id` may be
//! left out; naming another customer is a 403), reads, lists and cancels their own orders only
//! (another's order answers 404, as an unknown one), and does not read the revenue report
//! (403). An admin, or a platform service, reaches every order.
//!
//! Layout: [`context`] (what a handler is given), [`headers`], [`owner`], [`customers`], [`place`], [`cancel`], [`read`],
//! [`waiting`] (the answers, and the long poll of `Prefer: wait`), [`pricing`] and [`prices`]
//! (the catalog prices read lately).

pub mod cancel;
pub mod context;
pub mod customers;
pub mod headers;
pub mod owner;
pub mod place;
pub mod prices;
pub mod pricing;
pub mod read;
pub mod waiting;

use axum::Router;
use axum::routing::{get, post};

pub use cancel::MAX_REASON;
pub use context::Context;
pub use headers::{IDEMPOTENCY_KEY, MAX_WAIT_SECONDS, SAGA_STYLE};
pub use read::{EventList, MAX_LIST, NotificationList, OrderList, RevenueReport};
pub use waiting::{Accepted, OrderView};

/// The service's routes.
pub fn routes(context: Context) -> Router {
    Router::new()
        .route("/v1/orders", post(place::place).get(read::list))
        .route("/v1/orders/revenue", get(read::revenue))
        .route("/v1/orders/{id}", get(read::fetch))
        .route("/v1/orders/{id}/events", get(read::events))
        .route("/v1/orders/{id}/cancel", post(cancel::cancel))
        .route("/v1/orders/{id}/notifications", get(read::notifications_of))
        .with_state(context)
}
