//! The order database: the event store's tables (the orders themselves), the idempotency keys,
//! and the read models the projections keep.

use flotilla_eventstore::{EventStore, Loaded, Metadata, Options};
use flotilla_kit::database::{execute, grouped, sqlx_error, transaction};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::sync::Arc;

use flotilla_saga::Orchestrator;
use flotilla_saga::SagaStyle;

use crate::aggregate::{self, Cancellation, Order, OrderError, OrderLine, Status};
use crate::cancel::{self, CancelOrderData, CancelOrderSaga};
use crate::choreography;
use crate::domain::Address;
use crate::saga::{self, PlaceOrderSaga};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Events between two snapshots of an order.
pub const SNAPSHOT_EVERY: u64 = 50;

/// The order service's storage.
#[derive(Debug, Clone)]
pub struct Database {
    /// The SQLite pool (idempotency keys, read models, outbox, inbox, sagas).
    pub pool: SqlitePool,
    /// The event store in the same database.
    pub events: EventStore,
    /// The place-order saga's orchestrator, whose instances live in the same database.
    pub saga: Arc<Orchestrator<PlaceOrderSaga>>,
    /// The cancel-order saga's orchestrator (same tables, same reply topic).
    pub cancel: Arc<Orchestrator<CancelOrderSaga>>,
    /// Wakes the requests waiting for an order's change.
    pub changes: Arc<crate::changes::Changes>,
    /// How long a choreographed order has to end (`choreography_deadline_ms`).
    pub choreography_deadline: std::time::Duration,
}

/// The event store's settings for orders: snapshots and the order's upcasters.
pub fn options() -> Options {
    Options {
        snapshot_every: SNAPSHOT_EVERY,
        upcasters: aggregate::upcasters(),
        ..Options::default()
    }
}

/// Opens the database, applies the service's and the event store's migrations.
pub async fn open(config: &crate::Config) -> Result<Database, flotilla_eventstore::Error> {
    let (server, settings) = (&config.service.instance.server, &config.order);
    let opening =
        flotilla_kit::database::open(&server.database_path(crate::SERVICE), &MIGRATIONS).await?;
    let events = EventStore::sqlite(opening.pool().clone(), options()).await?;
    let setup = |e: &dyn std::fmt::Display| flotilla_eventstore::Error::Encode(e.to_string());
    flotilla_messaging::migrate(opening.pool())
        .await
        .map_err(|e| setup(&e))?;
    flotilla_saga::migrate(opening.pool())
        .await
        .map_err(|e| setup(&e))?;
    let pool = opening.ready();
    let changes: Arc<crate::changes::Changes> = Arc::default();
    let saga = Arc::new(Orchestrator::new(
        PlaceOrderSaga::new(events.clone(), changes.clone()),
        pool.clone(),
    ));
    let cancel = Arc::new(Orchestrator::new(
        CancelOrderSaga::new(events.clone(), changes.clone()),
        pool.clone(),
    ));
    Ok(Database {
        pool,
        events,
        saga,
        cancel,
        changes,
        choreography_deadline: std::time::Duration::from_millis(settings.choreography_deadline_ms),
    })
}

/// What [`place`] did.
#[derive(Debug)]
pub enum Placed {
    /// The order was stored.
    New(Box<Loaded<Order>>),
    /// Another order holds the idempotency key; nothing was stored.
    KeyTaken,
}

/// Appends a new order's `OrderPlaced`, stores its idempotency key (if any) and starts its
/// place-order saga in `style`, in one transaction: orchestrated, the saga instance and its first
/// command (to the outbox); choreographed, the `OrderCreated` event (to the outbox).
#[allow(clippy::too_many_arguments)]
pub async fn place(
    db: &Database,
    order_id: &str,
    customer_id: &str,
    lines: Vec<OrderLine>,
    ship_to: Address,
    key: Option<(&str, &str)>,
    style: SagaStyle,
) -> Result<Placed, flotilla_eventstore::Error> {
    let mut loaded = Loaded {
        id: order_id.to_owned(),
        state: Order::default(),
        version: 0,
    };
    let placed = loaded
        .state
        .place(customer_id, lines, ship_to)
        .map_err(|e| flotilla_eventstore::Error::Encode(e.to_string()))?;
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(|e| flotilla_eventstore::Error::Encode(e.to_string()))?;
    // The key, the event and the saga's start: one transaction of direct calls, shared with the
    // placements waiting meanwhile (group commit: the pages they share are written once).
    let (db_owned, order_id_owned) = (db.clone(), order_id.to_owned());
    let key = key.map(|(key, hash)| (key.to_owned(), hash.to_owned()));
    let (stored, loaded) = grouped(&db.pool, move |sql| {
        let (db, order_id) = (&db_owned, order_id_owned.as_str());
        if let Some((key, hash)) = &key {
            let claimed = execute(
                sql,
                "INSERT INTO idempotency_keys (key, request_hash, order_id, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO NOTHING",
                &[key, hash, &order_id, &now],
            )
            .map_err(sqlx_error)?;
            if claimed == 0 {
                return Ok((None, loaded));
            }
        }
        let recorded = db.events.save_direct(
            sql,
            &mut loaded,
            &placed,
            &Metadata::correlated(format!("order-{order_id}")),
        )?;
        let encode = |e: &dyn std::fmt::Display| flotilla_eventstore::Error::Encode(e.to_string());
        let data = saga::data_of(order_id, &loaded.state)
            .ok_or_else(|| encode(&"a placed order has an address"))?;
        match style {
            SagaStyle::Orchestration => db
                .saga
                .start_direct(sql, order_id, data, None)
                .map_err(|e| encode(&e))?,
            SagaStyle::Choreography => {
                let details = choreography::details(order_id, &loaded.state)
                    .ok_or_else(|| encode(&"a placed order has an address"))?;
                flotilla_messaging::outbox::enqueue_direct(sql, &choreography::created(details))
                    .map_err(|e| encode(&e))?;
                // Nobody coordinates: the order's own deadline notices a saga that stalls.
                let deadline = choreography::micros_after(db.choreography_deadline);
                flotilla_saga::choreography::set_deadline(sql, order_id, deadline)
                    .map_err(|e| encode(&e))?;
            }
        }
        Ok::<_, flotilla_eventstore::Error>((recorded.last().map(|event| event.position), loaded))
    })
    .await?;
    let Some(position) = stored else {
        return Ok(Placed::KeyTaken);
    };
    // The projectors of this process look now rather than at their next poll.
    db.events.appended(position);
    Ok(Placed::New(Box::new(loaded)))
}

/// What [`request_cancellation`] did.
#[derive(Debug)]
pub enum Cancelling {
    /// The cancel-order saga started now.
    Started,
    /// A cancellation was running already, or the order is cancelled: nothing changed.
    Already,
    /// The order's state does not allow it (not approved, or a cancellation was refused).
    Refused(OrderError),
}

/// Asks to cancel approved order `order_id` for `reason`: appends `CancellationRequested` and
/// starts the cancel-order saga in `style`, in one transaction.
pub async fn request_cancellation(
    db: &Database,
    order_id: &str,
    reason: &str,
    style: SagaStyle,
) -> Result<Cancelling, flotilla_eventstore::Error> {
    let encode = |e: &dyn std::fmt::Display| flotilla_eventstore::Error::Encode(e.to_string());
    let mut appended = None;
    let started = transaction(&db.pool, |sql| {
        let mut order = db.events.load_direct::<Order>(sql, order_id)?;
        let events = match order.state.request_cancellation(reason) {
            Ok(events) => events,
            Err(refused) => {
                return Ok::<_, flotilla_eventstore::Error>(Cancelling::Refused(refused));
            }
        };
        if events.is_empty() {
            return Ok(Cancelling::Already);
        }
        let saga_id = cancel::saga_id(order_id);
        let recorded =
            db.events
                .save_direct(sql, &mut order, &events, &Metadata::correlated(&saga_id))?;
        appended = recorded.last().map(|event| event.position);
        match style {
            SagaStyle::Orchestration => {
                let data = CancelOrderData {
                    order_id: order_id.to_owned(),
                    customer_id: order.state.customer_id.clone(),
                    total_cents: order.state.total_cents,
                    reason: reason.to_owned(),
                };
                db.cancel
                    .start_direct(sql, &saga_id, data, None)
                    .map_err(|e| encode(&e))?;
            }
            SagaStyle::Choreography => {
                let message = choreography::cancellation_requested(order_id, reason);
                flotilla_messaging::outbox::enqueue_direct(sql, &message)
                    .map_err(|e| encode(&e))?;
            }
        }
        Ok(Cancelling::Started)
    })
    .await?;
    // The projectors of this process look now rather than at their next poll.
    if let Some(position) = appended {
        db.events.appended(position);
    }
    Ok(started)
}

/// Order `order_id` as its events say now, read with direct calls in one turn on the process's
/// connection ([`flotilla_kit::database::call`]) instead of a round trip per statement.
pub async fn load(
    db: &Database,
    order_id: &str,
) -> Result<Loaded<Order>, flotilla_eventstore::Error> {
    flotilla_kit::database::call(&db.pool, |sql| {
        db.events.load_direct::<Order>(sql, order_id)
    })
    .await
}

/// The `(request_hash, order_id)` stored for an idempotency key.
pub async fn find_key(
    pool: &SqlitePool,
    key: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT request_hash, order_id FROM idempotency_keys WHERE key = $1")
        .bind(key)
        .fetch_optional(pool)
        .await
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

/// A row of the `order_summaries` read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Summary {
    /// The order's id.
    pub order_id: String,
    /// The ordering customer.
    pub customer_id: String,
    /// Its status.
    pub status: String,
    /// Its total, in cents.
    pub total_cents: i64,
    /// Its number of lines.
    pub lines: i64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
    /// The last event folded in.
    pub version: i64,
}

/// Orders from the read model, newest first, optionally of one customer and one status.
pub async fn list(
    pool: &SqlitePool,
    customer_id: Option<&str>,
    status: Option<Status>,
    limit: u32,
) -> Result<Vec<Summary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, customer_id, status, total_cents, lines, created_at, updated_at, version
         FROM order_summaries
         WHERE ($1 IS NULL OR customer_id = $1) AND ($2 IS NULL OR status = $2)
         ORDER BY created_at DESC, order_id DESC LIMIT $3",
    )
    .bind(customer_id)
    .bind(status.map(Status::as_str))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
}

/// A row of the `revenue_per_day` read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct DayRevenue {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Orders placed that day.
    pub placed_orders: i64,
    /// Their total, in cents.
    pub placed_cents: i64,
    /// Orders approved that day.
    pub approved_orders: i64,
    /// Their total, in cents.
    pub approved_cents: i64,
    /// Orders rejected that day.
    pub rejected_orders: i64,
    /// Orders cancelled that day.
    pub cancelled_orders: i64,
    /// Their total, in cents.
    pub cancelled_cents: i64,
}

/// Revenue per day from the read model, days `from..=to` (inclusive, `YYYY-MM-DD`).
pub async fn revenue(
    pool: &SqlitePool,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<DayRevenue>, sqlx::Error> {
    sqlx::query_as(
        "SELECT day, placed_orders, placed_cents, approved_orders, approved_cents,
                rejected_orders, cancelled_orders, cancelled_cents
         FROM revenue_per_day
         WHERE ($1 IS NULL OR day >= $1) AND ($2 IS NULL OR day <= $2)
         ORDER BY day",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// Why [`record`] appended nothing.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] flotilla_eventstore::Error),
    /// The order's state refused the change.
    #[error(transparent)]
    Order(#[from] OrderError),
}

/// Loads order `order_id` within the caller's transaction (on its borrowed SQLite handle,
/// [`flotilla_kit::database::direct`]), asks `decide` for the events its state calls for (and
/// whatever else it concludes), and appends them correlated with `correlation`: the way every
/// saga, orchestrated or choreographed, records its steps on the order. Returns the order as it
/// now stands and `decide`'s conclusion.
pub fn record<T>(
    events: &EventStore,
    db: &rusqlite::Connection,
    order_id: &str,
    correlation: &str,
    decide: impl FnOnce(&Order) -> Result<(Vec<aggregate::OrderEvent>, T), OrderError>,
) -> Result<(Loaded<Order>, T), RecordError> {
    let mut order = events.load_direct::<Order>(db, order_id)?;
    let (new, conclusion) = decide(&order.state)?;
    if !new.is_empty() {
        events.save_direct(db, &mut order, &new, &Metadata::correlated(correlation))?;
    }
    Ok((order, conclusion))
}
