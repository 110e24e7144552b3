//! Answering with an order: 202 with the order as it stands, or, for a client that sent
//! `Prefer: wait=N`, 200 with the whole order once its saga has ended (a long poll woken by the
//! consumer's commits, [`crate::store::changes`], with a slow fallback look).

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_eventstore::Loaded;
use flotilla_kit::Problem;
use flotilla_saga::SagaStyle;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::headers::SAGA_STYLE;
use crate::domain::{Address, Cancellation, Order, OrderLine, Status};
use crate::sagas::Sagas;
use crate::store::{self, changes};

/// The answer to `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The new order's id.
    pub order_id: String,
    /// Its status: `PENDING` until the saga ends.
    pub status: String,
    /// Its total, in cents.
    pub total_cents: i64,
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// The order's id (UUIDv7).
    pub order_id: String,
    /// The ordering customer.
    pub customer_id: String,
    /// `PENDING`, `APPROVED`, `REJECTED` or `CANCELLED`.
    pub status: String,
    /// Sum of the lines, in cents.
    pub total_cents: i64,
    /// The lines.
    pub items: Vec<OrderLine>,
    /// Where to ship.
    pub ship_to: Address,
    /// Why it was rejected or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The customer's cancellation of the approved order: running (`REQUESTED`) or `REFUSED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<Cancellation>,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// The number of events folded into this view (its stream version).
    pub version: u64,
}

impl OrderView {
    /// The view of a loaded order; `None` if it was never placed.
    pub fn of(loaded: &Loaded<Order>) -> Option<Self> {
        let order = &loaded.state;
        let format = |at: Option<OffsetDateTime>| {
            at.and_then(|at| at.format(&Rfc3339).ok())
                .unwrap_or_default()
        };
        Some(Self {
            order_id: loaded.id.clone(),
            customer_id: order.customer_id.clone(),
            status: order.status?.as_str().to_owned(),
            total_cents: order.total_cents,
            items: order.items.clone(),
            ship_to: order.ship_to.clone()?,
            reason: order.reason.clone(),
            cancellation: match (order.status, &order.cancellation) {
                (Some(Status::Approved), Some(cancellation)) => Some(cancellation.clone()),
                _ => None,
            },
            created_at: format(order.created_at),
            updated_at: format(order.updated_at),
            version: loaded.version,
        })
    }
}

/// Loads order `order_id` until `done` holds of it or `deadline` passes; the order as last
/// loaded, and whether `done` held. The first look uses `known` instead of a load when given:
/// the order as a transaction that just committed left it. (A change committed between that
/// commit and the first sleep is then seen at the first fallback look, not at once; a saga
/// cannot end that fast, its steps being messages to other services.)
pub(super) async fn wait_for(
    sagas: &Sagas,
    order_id: &str,
    deadline: Option<tokio::time::Instant>,
    mut known: Option<Loaded<Order>>,
    done: impl Fn(&Order) -> bool,
) -> Result<(Loaded<Order>, bool), Problem> {
    let watch = deadline.map(|_| sagas.changes.watch(order_id));
    let mut poll = changes::FALLBACK_POLL;
    loop {
        // Listening before loading: a change committed in between still wakes us.
        let changed = watch.as_ref().map(|watch| watch.notify.notified());
        let mut changed = std::pin::pin!(changed);
        if let Some(changed) = changed.as_mut().as_pin_mut() {
            changed.enable();
        }
        let loaded = match known.take() {
            Some(loaded) => loaded,
            None => store::load(&sagas.db, order_id)
                .await
                .map_err(|e| Problem::internal(&e))?,
        };
        if done(&loaded.state) {
            return Ok((loaded, true));
        }
        match (deadline, changed.as_pin_mut()) {
            (Some(deadline), Some(changed)) if tokio::time::Instant::now() < deadline => {
                let wake = deadline.min(tokio::time::Instant::now() + poll);
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep_until(wake) => {}
                }
                // The fallback backs off: under load many requests wait at once, and their
                // looks must not crowd out the work that ends their sagas.
                poll = (poll * 2).min(changes::FALLBACK_POLL_MAX);
            }
            _ => return Ok((loaded, false)),
        }
    }
}

/// 200 with the whole order, and the headers of a request that waited `seconds`.
pub(super) fn final_state(
    loaded: &Loaded<Order>,
    seconds: u64,
    style: SagaStyle,
) -> Result<Response, Problem> {
    let view = OrderView::of(loaded)
        .ok_or_else(|| Problem::internal(&"order vanished after it was placed"))?;
    let location = HeaderValue::from_str(&format!("/v1/orders/{}", loaded.id))
        .map_err(|e| Problem::internal(&e))?;
    let applied =
        HeaderValue::from_str(&format!("wait={seconds}")).map_err(|e| Problem::internal(&e))?;
    Ok((
        StatusCode::OK,
        [
            (header::LOCATION, location),
            (HeaderName::from_static("preference-applied"), applied),
            (
                HeaderName::from_static(SAGA_STYLE),
                HeaderValue::from_static(style.as_str()),
            ),
        ],
        axum::Json(view),
    )
        .into_response())
}

/// The answer to a placement: 202 with the order as it stands; or, with `Prefer: wait=N`, 200
/// with the whole order as soon as its saga has ended, if that is within N seconds.
pub(super) async fn respond(
    sagas: &Sagas,
    order_id: &str,
    wait: Option<u64>,
    style: SagaStyle,
) -> Result<Response, Problem> {
    respond_with(sagas, order_id, wait, style, None).await
}

/// [`respond`], starting from the order as it is `known` to be, if it is.
pub(super) async fn respond_with(
    sagas: &Sagas,
    order_id: &str,
    wait: Option<u64>,
    style: SagaStyle,
    known: Option<Loaded<Order>>,
) -> Result<Response, Problem> {
    let deadline = wait.map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let (loaded, ended) = wait_for(sagas, order_id, deadline, known, |order| {
        wait.is_some() && order.status.is_some_and(|s| s != Status::Pending)
    })
    .await?;
    match wait {
        Some(seconds) if ended => final_state(&loaded, seconds, style),
        _ => accepted(&loaded, style),
    }
}

pub(super) fn accepted(loaded: &Loaded<Order>, style: SagaStyle) -> Result<Response, Problem> {
    let status = loaded
        .state
        .status
        .ok_or_else(|| Problem::internal(&"order vanished after it was placed"))?;
    let body = Accepted {
        order_id: loaded.id.clone(),
        status: status.as_str().to_owned(),
        total_cents: loaded.state.total_cents,
    };
    let location = HeaderValue::from_str(&format!("/v1/orders/{}", loaded.id))
        .map_err(|e| Problem::internal(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, location),
            (
                HeaderName::from_static(SAGA_STYLE),
                HeaderValue::from_static(style.as_str()),
            ),
        ],
        axum::Json(body),
    )
        .into_response())
}
