//! The order API's reads: an order (now, or as it was: time travel), its events, its
//! notifications, and the read models (lists, revenue per day).

use axum::extract::{Path, State};
use flotilla_eventstore::AsOf;
use flotilla_identity::Caller;
use flotilla_kit::{Problem, Query};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::context::Context;
use super::owner::{staff_only, visible};
use super::waiting::OrderView;
use crate::domain::{Order, Status};
use crate::store::{self, Summary, notifications};

/// `?version=N` or `?at=RFC3339`: the order as it was.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AsOfQuery {
    version: Option<u64>,
    at: Option<String>,
}

pub(super) async fn fetch(
    State(context): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<AsOfQuery>,
) -> Result<axum::Json<OrderView>, Problem> {
    visible(&context, &caller, &id).await?;
    let events = &context.sagas.db.events;
    let internal = |e: flotilla_eventstore::Error| Problem::internal(&e);
    let loaded = match (query.version, query.at) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "invalid-query",
                "give `version` or `at`, not both",
            ));
        }
        (None, None) => Some(events.load::<Order>(&id).await.map_err(internal)?),
        (Some(0), None) => {
            return Err(Problem::bad_request(
                "invalid-query",
                "`version` counts events from 1",
            ));
        }
        (Some(version), None) => {
            let current = events
                .stream_version(&flotilla_eventstore::aggregate::stream_of::<Order>(&id))
                .await
                .map_err(internal)?;
            if current == 0 {
                return Err(Problem::not_found(format!("no order `{id}`")));
            }
            if version > current {
                return Err(Problem::not_found(format!(
                    "order `{id}` has {current} events; there is no version {version}"
                ))
                .with("current_version", current));
            }
            events
                .load_as_of::<Order>(&id, AsOf::Version(version))
                .await
                .map_err(internal)?
        }
        (None, Some(at)) => {
            let at = OffsetDateTime::parse(&at, &Rfc3339).map_err(|e| {
                Problem::bad_request(
                    "invalid-query",
                    format!("`at` must be an RFC 3339 instant such as 2026-11-26T10:00:00Z: {e}"),
                )
            })?;
            let loaded = events
                .load_as_of::<Order>(&id, AsOf::Time(at))
                .await
                .map_err(internal)?;
            if loaded.is_none()
                && events
                    .stream_version(&format!("order-{id}"))
                    .await
                    .map_err(internal)?
                    > 0
            {
                return Err(Problem::not_found(format!(
                    "order `{id}` did not exist yet at {}",
                    query_instant(at)
                )));
            }
            loaded
        }
    };
    loaded
        .as_ref()
        .and_then(OrderView::of)
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found(format!("no order `{id}`")))
}

fn query_instant(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The answer to `GET /v1/orders/{id}/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventList {
    /// The order.
    pub order_id: String,
    /// Its events, oldest first, each at the current schema version.
    pub events: Vec<flotilla_eventstore::RecordedEvent>,
}

pub(super) async fn events(
    State(context): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<EventList>, Problem> {
    visible(&context, &caller, &id).await?;
    let events = context
        .sagas
        .db
        .events
        .read_stream(&flotilla_eventstore::aggregate::stream_of::<Order>(&id), 1)
        .await
        .map_err(|e| Problem::internal(&e))?;
    if events.is_empty() {
        return Err(Problem::not_found(format!("no order `{id}`")));
    }
    Ok(axum::Json(EventList {
        order_id: id,
        events,
    }))
}

/// Most orders one list returns.
pub const MAX_LIST: u32 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    customer_id: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

/// The answer to `GET /v1/orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderList {
    /// The orders, newest first.
    pub orders: Vec<Summary>,
}

pub(super) async fn list(
    State(context): State<Context>,
    caller: Caller,
    Query(query): Query<ListQuery>,
) -> Result<axum::Json<OrderList>, Problem> {
    let status = match query.status.as_deref() {
        None => None,
        Some(name) => Some(Status::parse(name).ok_or_else(|| {
            Problem::bad_request(
                "invalid-query",
                format!("`status` must be PENDING, APPROVED, REJECTED or CANCELLED, not `{name}`"),
            )
        })?),
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid-query",
            format!("`limit` must be 1 to {MAX_LIST}"),
        ));
    }
    // A customer lists their own orders: asking for another's finds none.
    let customer = match (caller.confined_to(), query.customer_id.as_deref()) {
        (Some(me), Some(named)) if named != me => {
            return Ok(axum::Json(OrderList { orders: Vec::new() }));
        }
        (Some(me), _) => Some(me),
        (None, named) => named,
    };
    let orders = store::list(&context.sagas.db.pool, customer, status, limit)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(OrderList { orders }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevenueQuery {
    from: Option<String>,
    to: Option<String>,
}

/// The answer to `GET /v1/orders/revenue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevenueReport {
    /// One row per day with activity, oldest first.
    pub days: Vec<store::DayRevenue>,
}

pub(super) async fn revenue(
    State(context): State<Context>,
    caller: Caller,
    Query(query): Query<RevenueQuery>,
) -> Result<axum::Json<RevenueReport>, Problem> {
    staff_only(&caller, "the revenue report")?;
    let day = |name: &str, value: &Option<String>| -> Result<(), Problem> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        match value {
            Some(value) if time::Date::parse(value, &format).is_err() => Err(Problem::bad_request(
                "invalid-query",
                format!("`{name}` must be a day such as 2026-11-26, not `{value}`"),
            )),
            _ => Ok(()),
        }
    };
    day("from", &query.from)?;
    day("to", &query.to)?;
    let days = store::revenue(
        &context.sagas.db.pool,
        query.from.as_deref(),
        query.to.as_deref(),
    )
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(RevenueReport { days }))
}

/// The answer to `GET /v1/orders/{id}/notifications`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationList {
    /// The order.
    pub order_id: String,
    /// Its notifications, oldest first.
    pub notifications: Vec<notifications::Notification>,
}

pub(super) async fn notifications_of(
    State(context): State<Context>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<NotificationList>, Problem> {
    visible(&context, &caller, &id).await?;
    let exists = context
        .sagas
        .db
        .events
        .stream_version(&flotilla_eventstore::aggregate::stream_of::<Order>(&id))
        .await
        .map_err(|e| Problem::internal(&e))?;
    if exists == 0 {
        return Err(Problem::not_found(format!("no order `{id}`")));
    }
    let notifications = notifications::of_order(&context.sagas.db.pool, &id)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(NotificationList {
        order_id: id,
        notifications,
    }))
}
