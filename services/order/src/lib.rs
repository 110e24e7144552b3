//! The order service: takes orders, prices them with the inventory's catalog (prices read lately
//! are kept a while, [`prices`]), and keeps them
//! **event-sourced** (DESIGN.md): an order's state is a fold of its events in the event store
//! ([`aggregate`]), and lists and reports come from read models kept by projections
//! ([`projections`], CQRS). Its database is `<data_dir>/order.db`.
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `POST /v1/orders` | place an order ([`domain::PlaceOrder`]); 202 with `Location`; honours `Idempotency-Key`; with `Prefer: wait=N`, 200 and the final order if its saga ends within N seconds |
//! | `GET /v1/orders/{id}` | the order; `?version=N` or `?at=RFC3339` for the order as it was (time travel) |
//! | `GET /v1/orders/{id}/events` | the order's event stream |
//! | `POST /v1/orders/{id}/cancel` | cancel an approved order (`{"reason": …}` optional); 202, or with `Prefer: wait=N` 200 once cancelled; 409 if it cannot be |
//! | `GET /v1/orders/{id}/notifications` | the customer notifications sent about the order |
//!
//! Sagas run in the style of the setting `saga_style` (orchestration by default); a request
//! may choose with the header `X-Saga-Style: orchestration|choreography`, and the answer says
//! which ran in its own `X-Saga-Style`. Orchestrated: [`saga`] and [`cancel`]; choreographed:
//! [`choreography`]. Its section of the settings, and everything [`run`] reads: [`settings`].
//! | `GET /v1/orders?customer_id=…&status=…&limit=…` | orders from the read model, newest first |
//! | `GET /v1/orders/revenue?from=YYYY-MM-DD&to=YYYY-MM-DD` | revenue per day from the read model |
//!
//! Bad input never stores anything: the body is validated first ([`domain`]), then every SKU
//! is priced through discovery (an unknown SKU is a 422), and only then is `OrderPlaced`
//! appended, in one transaction with the idempotency key.

pub mod aggregate;
pub mod cancel;
pub mod changes;
pub mod choreography;
pub mod domain;
pub mod notifications;
pub mod prices;
pub mod projections;
pub mod saga;
pub mod settings;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use flotilla_discovery::Discovery;
use flotilla_eventstore::AsOf;
use flotilla_kit::{Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{NewOrder, PlaceOrder};

pub use crate::aggregate::{Cancellation, Order, OrderError, OrderEvent, OrderLine, Status};
pub use crate::settings::{Config, OrderSettings};
pub use crate::store::{Database, OrderView, Summary};
pub use flotilla_saga::SagaStyle;

/// The service's name in the registry.
pub const SERVICE: &str = "order";

/// The header carrying a client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header choosing a request's saga style, and telling which ran.
pub const SAGA_STYLE: &str = "x-saga-style";

/// What a handler needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The order database and its event store.
    pub db: Database,
    /// How to reach the inventory.
    pub discovery: Discovery,
    /// The catalog prices read from the inventory lately.
    pub prices: Arc<prices::Prices>,
    /// Wakes the outbox relay once a new order's first saga command is committed.
    pub relay: Arc<Notify>,
    /// The saga style of requests that do not choose one.
    pub style: SagaStyle,
}

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

/// The service's routes.
pub fn routes(context: Context) -> Router {
    Router::new()
        .route("/v1/orders", post(place).get(list))
        .route("/v1/orders/revenue", get(revenue))
        .route("/v1/orders/{id}", get(fetch))
        .route("/v1/orders/{id}/events", get(events))
        .route("/v1/orders/{id}/cancel", post(cancel))
        .route("/v1/orders/{id}/notifications", get(notifications_of))
        .with_state(context)
}

async fn place(
    State(context): State<Context>,
    headers: HeaderMap,
    Json(request): Json<PlaceOrder>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let style = saga_style(&headers, context.style)?;
    let hash = hex(&Sha256::digest(
        serde_json::to_vec(&request).map_err(|e| Problem::internal(&e))?,
    ));
    let wait = prefer_wait(&headers);
    if let Some(key) = &key
        && let Some(order_id) = replay(&context.db.pool, key, &hash).await?
    {
        return respond(&context.db, &order_id, wait, style).await;
    }
    let order = request.validate()?;
    let prices = price(&context.discovery, &context.prices, &order).await?;
    let order_id = uuid::Uuid::now_v7().to_string();
    let lines = order
        .items
        .iter()
        .zip(&prices)
        .map(|(item, price)| OrderLine {
            sku: item.sku.clone(),
            quantity: item.quantity,
            unit_price_cents: *price,
        })
        .collect();
    // Placed in a task of its own: a client that goes away must not cancel the transaction
    // half-way through its direct calls.
    let placing = {
        let (db, order_id, customer_id) = (
            context.db.clone(),
            order_id.clone(),
            order.customer_id.clone(),
        );
        let (ship_to, key, hash) = (order.ship_to.clone(), key.clone(), hash.clone());
        tokio::spawn(async move {
            store::place(
                &db,
                &order_id,
                &customer_id,
                lines,
                ship_to,
                key.as_deref().map(|k| (k, hash.as_str())),
                style,
            )
            .await
        })
    };
    let placed = placing.await.map_err(|e| Problem::internal(&e))?;
    match placed {
        Ok(store::Placed::New(placed)) => {
            context.relay.notify_one();
            tracing::info!(%order_id, customer = %order.customer_id, style = style.as_str(), "order placed");
            // The order as the placement committed it: no need to load it again.
            respond_with(&context.db, &order_id, wait, style, Some(*placed)).await
        }
        // A concurrent request with the same key won the race.
        Ok(store::Placed::KeyTaken) => match &key {
            Some(key) => match replay(&context.db.pool, key, &hash).await? {
                Some(order_id) => respond(&context.db, &order_id, wait, style).await,
                None => Err(Problem::internal(&"idempotency key vanished")),
            },
            None => Err(Problem::internal(&"key conflict without a key")),
        },
        Err(e) => Err(Problem::internal(&e)),
    }
}

/// The order id an earlier request with this key created, if its body was the same.
async fn replay(pool: &SqlitePool, key: &str, hash: &str) -> Result<Option<String>, Problem> {
    match store::find_key(pool, key)
        .await
        .map_err(|e| Problem::internal(&e))?
    {
        None => Ok(None),
        Some((stored, order_id)) if stored == hash => Ok(Some(order_id)),
        Some(_) => Err(Problem::unprocessable(
            "idempotency-key-reused",
            "this Idempotency-Key was used for a different request body",
        )),
    }
}

/// The longest `Prefer: wait=N` honoured, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// `Prefer: wait=N` (RFC 7240): how long the client is ready to wait for the final state, at
/// most [`MAX_WAIT_SECONDS`]. A preference that cannot be read is ignored, as the RFC asks.
fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .filter_map(|token| {
            let (name, value) = token.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("wait")
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .next()
        .map(|seconds| seconds.min(MAX_WAIT_SECONDS))
}

/// The saga style `X-Saga-Style` asks for, or `default`; an unknown style is a 400.
fn saga_style(headers: &HeaderMap, default: SagaStyle) -> Result<SagaStyle, Problem> {
    let Some(value) = headers.get(SAGA_STYLE) else {
        return Ok(default);
    };
    value
        .to_str()
        .ok()
        .and_then(SagaStyle::parse)
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid-saga-style",
                "X-Saga-Style must be `orchestration` or `choreography`",
            )
        })
}

/// Loads order `order_id` until `done` holds of it or `deadline` passes; the order as last
/// loaded, and whether `done` held. The first look uses `known` instead of a load when given:
/// the order as a transaction that just committed left it. (A change committed between that
/// commit and the first sleep is then seen at the first fallback look, not at once; a saga
/// cannot end that fast, its steps being messages to other services.)
async fn wait_for(
    db: &Database,
    order_id: &str,
    deadline: Option<tokio::time::Instant>,
    mut known: Option<flotilla_eventstore::Loaded<Order>>,
    done: impl Fn(&Order) -> bool,
) -> Result<(flotilla_eventstore::Loaded<Order>, bool), Problem> {
    let watch = deadline.map(|_| db.changes.watch(order_id));
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
            None => store::load(db, order_id)
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
fn final_state(
    loaded: &flotilla_eventstore::Loaded<Order>,
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
async fn respond(
    db: &Database,
    order_id: &str,
    wait: Option<u64>,
    style: SagaStyle,
) -> Result<Response, Problem> {
    respond_with(db, order_id, wait, style, None).await
}

/// [`respond`], starting from the order as it is `known` to be, if it is.
async fn respond_with(
    db: &Database,
    order_id: &str,
    wait: Option<u64>,
    style: SagaStyle,
    known: Option<flotilla_eventstore::Loaded<Order>>,
) -> Result<Response, Problem> {
    let deadline = wait.map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let (loaded, ended) = wait_for(db, order_id, deadline, known, |order| {
        wait.is_some() && order.status.is_some_and(|s| s != Status::Pending)
    })
    .await?;
    match wait {
        Some(seconds) if ended => final_state(&loaded, seconds, style),
        _ => accepted(&loaded, style),
    }
}

/// `POST /v1/orders/{id}/cancel`: an optional `{"reason": …}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    reason: Option<String>,
}

/// The longest cancellation reason kept.
pub const MAX_REASON: usize = 500;

async fn cancel(
    State(context): State<Context>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let style = saga_style(&headers, context.style)?;
    let request: CancelRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CancelRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::bad_request(
                "invalid-body",
                format!("the body must be empty or {{\"reason\": \"…\"}}: {e}"),
            )
        })?
    };
    let reason = request
        .reason
        .unwrap_or_else(|| "cancelled by the customer".to_owned());
    if reason.trim().is_empty() || reason.chars().count() > MAX_REASON {
        return Err(Problem::bad_request(
            "invalid-body",
            format!("`reason` must be 1 to {MAX_REASON} characters"),
        ));
    }
    // In a task of its own, as a placement: a client that goes away must not cancel the
    // transaction half-way through its direct calls.
    let cancelling = {
        let (db, id, reason) = (context.db.clone(), id.clone(), reason.clone());
        tokio::spawn(async move { store::request_cancellation(&db, &id, &reason, style).await })
    };
    let outcome = cancelling
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| Problem::internal(&e))?;
    match outcome {
        store::Cancelling::Started => {
            context.relay.notify_one();
            tracing::info!(order_id = %id, style = style.as_str(), "order cancellation requested");
        }
        store::Cancelling::Already => {}
        store::Cancelling::Refused(OrderError::NotFound) => {
            return Err(Problem::not_found(format!("no order `{id}`")));
        }
        store::Cancelling::Refused(refused) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "order-not-cancellable",
                refused.to_string(),
            ));
        }
    }
    let wait = prefer_wait(&headers);
    let deadline = wait.map(|seconds| tokio::time::Instant::now() + Duration::from_secs(seconds));
    let (loaded, ended) = wait_for(&context.db, &id, deadline, None, |order| {
        wait.is_some() && !order.cancelling()
    })
    .await?;
    match (wait, &loaded.state.cancellation) {
        (Some(_), Some(Cancellation::Refused { reason })) if ended => Err(Problem::new(
            StatusCode::CONFLICT,
            "order-not-cancellable",
            format!("the order cannot be cancelled: {reason}"),
        )),
        (Some(seconds), _) if ended => final_state(&loaded, seconds, style),
        _ => accepted(&loaded, style),
    }
}

/// The answer to `GET /v1/orders/{id}/notifications`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationList {
    /// The order.
    pub order_id: String,
    /// Its notifications, oldest first.
    pub notifications: Vec<notifications::Notification>,
}

async fn notifications_of(
    State(context): State<Context>,
    Path(id): Path<String>,
) -> Result<axum::Json<NotificationList>, Problem> {
    let exists = context
        .db
        .events
        .stream_version(&flotilla_eventstore::aggregate::stream_of::<Order>(&id))
        .await
        .map_err(|e| Problem::internal(&e))?;
    if exists == 0 {
        return Err(Problem::not_found(format!("no order `{id}`")));
    }
    let notifications = notifications::of_order(&context.db.pool, &id)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(NotificationList {
        order_id: id,
        notifications,
    }))
}

fn accepted(
    loaded: &flotilla_eventstore::Loaded<Order>,
    style: SagaStyle,
) -> Result<Response, Problem> {
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

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(Problem::bad_request(
            "invalid-idempotency-key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// A product as the inventory describes it (only what pricing needs).
#[derive(Debug, Deserialize)]
struct Priced {
    price_cents: i64,
}

/// The unit price of every line: from the prices read lately ([`prices`]), or else asked of the
/// inventory through discovery (with failover).
async fn price(
    discovery: &Discovery,
    known: &prices::Prices,
    order: &NewOrder,
) -> Result<Vec<i64>, Problem> {
    let asks = order.items.iter().map(|item| async move {
        if let Some(price) = known.get(&item.sku) {
            return (item.sku.as_str(), Ok(price));
        }
        let path = format!("/v1/products/{}", item.sku);
        let answer = discovery
            .send(
                "inventory",
                http::Method::GET,
                &path,
                &HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        (item.sku.as_str(), read_price(answer))
    });
    let mut prices = Vec::with_capacity(order.items.len());
    let mut unknown = Vec::new();
    for (sku, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(price) => {
                known.put(sku, price);
                prices.push(price);
            }
            Err(None) => unknown.push(sku.to_owned()),
            Err(Some(problem)) => return Err(problem),
        }
    }
    if !unknown.is_empty() {
        return Err(Problem::unprocessable(
            "unknown-sku",
            format!("no product has SKU {}", unknown.join(", ")),
        )
        .with("skus", unknown));
    }
    Ok(prices)
}

/// The price in the inventory's answer; `Err(None)` when it knows no such product.
fn read_price(
    answer: Result<(StatusCode, Bytes), flotilla_discovery::DiscoveryError>,
) -> Result<i64, Option<Problem>> {
    match answer {
        Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Priced>(&body) {
            Ok(product) if product.price_cents >= 0 => Ok(product.price_cents),
            _ => Err(Some(Problem::internal(
                &"inventory sent an unreadable product",
            ))),
        },
        Ok((StatusCode::NOT_FOUND, _)) => Err(None),
        Ok((status, _)) => Err(Some(inventory_unavailable(&format!(
            "inventory answered {status}"
        )))),
        Err(error) => Err(Some(inventory_unavailable(&error))),
    }
}

fn inventory_unavailable(cause: &dyn std::fmt::Display) -> Problem {
    tracing::warn!(%cause, "pricing failed");
    Problem::unavailable(
        "inventory-unavailable",
        "the catalog cannot be reached to price the order; retry shortly",
    )
}

/// `?version=N` or `?at=RFC3339`: the order as it was.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AsOfQuery {
    version: Option<u64>,
    at: Option<String>,
}

async fn fetch(
    State(context): State<Context>,
    Path(id): Path<String>,
    Query(query): Query<AsOfQuery>,
) -> Result<axum::Json<OrderView>, Problem> {
    let events = &context.db.events;
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

async fn events(
    State(context): State<Context>,
    Path(id): Path<String>,
) -> Result<axum::Json<EventList>, Problem> {
    let events = context
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
struct ListQuery {
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

async fn list(
    State(context): State<Context>,
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
    let orders = store::list(
        &context.db.pool,
        query.customer_id.as_deref(),
        status,
        limit,
    )
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(OrderList { orders }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevenueQuery {
    from: Option<String>,
    to: Option<String>,
}

/// The answer to `GET /v1/orders/revenue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevenueReport {
    /// One row per day with activity, oldest first.
    pub days: Vec<store::DayRevenue>,
}

async fn revenue(
    State(context): State<Context>,
    Query(query): Query<RevenueQuery>,
) -> Result<axum::Json<RevenueReport>, Problem> {
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
    let days = store::revenue(&context.db.pool, query.from.as_deref(), query.to.as_deref())
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(RevenueReport { days }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let db = store::open(&config).await.map_err(std::io::Error::other)?;
    let (service, settings) = (&config.service, &config.order);
    let discovery = service
        .instance
        .discovery
        .discovery(&shutdown)
        .with_resilience(
            config.resilience.breaker.clone(),
            config.resilience.retry.clone(),
        )
        .map_err(std::io::Error::other)?;
    projections::spawn(&db.events, &shutdown);
    let messaging = flotilla_messaging::runtime::start(
        &service.messaging,
        discovery.clone(),
        flotilla_contracts::subscriptions(),
        SERVICE,
        db.pool.clone(),
        Inbox::new(&db),
        flotilla_contracts::topics_of(SERVICE),
        &shutdown,
    )
    .await
    .map_err(std::io::Error::other)?;
    tokio::spawn({
        let saga = db.saga.clone();
        let shutdown = shutdown.clone();
        async move {
            saga.run_timeouts(Duration::from_millis(100), shutdown)
                .await
        }
    });
    tokio::spawn({
        let saga = db.cancel.clone();
        let shutdown = shutdown.clone();
        async move {
            saga.run_timeouts(Duration::from_millis(100), shutdown)
                .await
        }
    });
    tokio::spawn(choreography::run_deadlines(
        db.clone(),
        (db.choreography_deadline / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        messaging.relay.clone(),
        shutdown.clone(),
    ));
    let context = Context {
        db: db.clone(),
        discovery,
        prices: Arc::new(prices::Prices::new(Duration::from_millis(
            settings.catalog_cache_ms,
        ))),
        relay: messaging.relay.clone(),
        style: settings.saga_style,
    };
    let result = flotilla_discovery::serve_routes(
        SERVICE,
        &service.instance,
        listener,
        routes(context).merge(messaging.routes),
        shutdown,
    )
    .await;
    db.pool.close().await;
    result
}

/// `flotilla projections rebuild order`: rebuilds the order's read models from its events.
pub async fn rebuild_projections(
    config: &Config,
) -> Result<Vec<(&'static str, u64)>, flotilla_eventstore::Error> {
    let db = store::open(config).await?;
    let rebuilt = projections::rebuild(&db.events).await;
    db.pool.close().await;
    rebuilt
}

/// The order's consumer: replies to the orchestrated sagas' commands (place-order, then
/// cancel-order), the notifications, and the participants' facts (choreography). After each
/// commit it wakes the requests waiting for the order ([`changes`]).
#[derive(Debug, Clone)]
pub struct Inbox {
    place: Arc<flotilla_saga::Orchestrator<saga::PlaceOrderSaga>>,
    cancel: Arc<flotilla_saga::Orchestrator<cancel::CancelOrderSaga>>,
    facts: choreography::Listener,
    changes: Arc<changes::Changes>,
}

impl Inbox {
    /// The consumer of `db`'s sagas and events.
    pub fn new(db: &Database) -> Self {
        Self {
            place: db.saga.clone(),
            cancel: db.cancel.clone(),
            facts: choreography::Listener::new(db.events.clone(), db.changes.clone()),
            changes: db.changes.clone(),
        }
    }
}

impl flotilla_messaging::inbox::Handler for Inbox {
    // A group of replies and facts runs on the borrowed handle in one round trip.
    const DIRECT: bool = true;

    fn handle_direct(
        &self,
        db: &rusqlite::Connection,
        message: &flotilla_messaging::Message,
    ) -> Result<Vec<flotilla_messaging::Message>, flotilla_messaging::inbox::HandlerError> {
        use flotilla_messaging::inbox::HandlerError;
        use flotilla_saga::Handled;
        let failed = |error: flotilla_saga::Error| match error {
            flotilla_saga::Error::Database(error) => HandlerError::Database(error),
            other => HandlerError::Reject(other.to_string()),
        };
        match message.topic.as_str() {
            flotilla_contracts::ORDER_SAGA_REPLIES => {
                let handled = match self.place.on_reply_direct(db, message).map_err(failed)? {
                    Handled::Unknown => self.cancel.on_reply_direct(db, message).map_err(failed)?,
                    handled => handled,
                };
                if handled != Handled::Applied {
                    tracing::debug!(message_id = %message.id, ?handled, "reply not applied");
                }
                Ok(Vec::new())
            }
            flotilla_contracts::ORDER_NOTIFICATIONS => {
                notifications::Notifications.handle_direct(db, message)
            }
            _ => self.facts.handle_direct(db, message),
        }
    }

    fn committed(&self, message: &flotilla_messaging::Message) {
        // Replies are keyed by saga id: the order's id, or `cancel-<order id>`.
        let key = message.key.as_str();
        self.changes
            .committed(key.strip_prefix("cancel-").unwrap_or(key));
    }
}
