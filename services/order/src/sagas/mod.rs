//! The sagas layer: the place-order and cancel-order sagas in both styles, and the two
//! operations that start them, each in one transaction with the order's event.
//!
//! - [`place`]: the place-order saga, orchestrated; [`cancel`]: the cancel-order saga,
//!   orchestrated; [`choreography`]: the order's side of both when nobody orchestrates (its
//!   facts, its business deadline); [`participants`]: what every style tells the participants.
//! - [`Sagas`]: the service's sagas wired to its database: both orchestrators, the
//!   choreography's deadline, and the waiters to wake when an order's saga ends. Its
//!   [`Sagas::place`] and [`Sagas::request_cancellation`] are what the HTTP API calls.
//!
//! Sagas depend on the store and the domain, never on the HTTP API.

pub mod cancel;
pub mod choreography;
pub mod participants;
pub mod place;

use std::sync::Arc;
use std::time::Duration;

use flotilla_eventstore::{Loaded, Metadata};
use flotilla_saga::Orchestrator;
use flotilla_saga::SagaStyle;
use flotilla_sqlite::{execute, grouped, sqlx_error, transaction};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::domain::{Address, Order, OrderError, OrderLine};
use crate::store::Database;
use crate::store::changes::Changes;
use cancel::{CancelOrderData, CancelOrderSaga};
use place::PlaceOrderSaga;

/// How often the orchestrators look for steps past their timeout.
pub const TIMEOUT_TICK: Duration = Duration::from_millis(100);

/// The order service's sagas, wired to its database.
#[derive(Debug, Clone)]
pub struct Sagas {
    /// The order database: the orders' events, and the saga instances beside them.
    pub db: Database,
    /// The place-order saga's orchestrator.
    pub place_order: Arc<Orchestrator<PlaceOrderSaga>>,
    /// The cancel-order saga's orchestrator (same tables, same reply topic).
    pub cancel_order: Arc<Orchestrator<CancelOrderSaga>>,
    /// Wakes the requests waiting for an order's change.
    pub changes: Arc<Changes>,
    /// How long a choreographed order has to end (`choreography_deadline_ms`).
    pub choreography_deadline: Duration,
}

/// A new order to store and start the saga of ([`Sagas::place`]).
#[derive(Debug, Clone)]
pub struct Placement<'a> {
    /// The new order's id (UUIDv7).
    pub order_id: &'a str,
    /// The ordering customer.
    pub customer_id: &'a str,
    /// The priced lines.
    pub lines: Vec<OrderLine>,
    /// Where to ship.
    pub ship_to: Address,
    /// The client's idempotency key and the hash of its request's body, if it sent a key.
    pub key: Option<(&'a str, &'a str)>,
    /// The saga style to run.
    pub style: SagaStyle,
}

/// What [`Sagas::place`] did.
#[derive(Debug)]
pub enum Placed {
    /// The order was stored.
    New(Box<Loaded<Order>>),
    /// Another order holds the idempotency key; nothing was stored.
    KeyTaken,
}

/// What [`Sagas::request_cancellation`] did.
#[derive(Debug)]
pub enum Cancelling {
    /// The cancel-order saga started now.
    Started,
    /// A cancellation was running already, or the order is cancelled: nothing changed.
    Already,
    /// The order's state does not allow it (not approved, or a cancellation was refused).
    Refused(OrderError),
}

impl Sagas {
    /// The sagas of the order database `db`; a choreographed order not ended within
    /// `choreography_deadline` expires.
    pub fn new(db: Database, choreography_deadline: Duration) -> Self {
        let changes: Arc<Changes> = Arc::default();
        let place_order = Arc::new(Orchestrator::new(
            PlaceOrderSaga::new(db.events.clone(), changes.clone()),
            db.pool.clone(),
        ));
        let cancel_order = Arc::new(Orchestrator::new(
            CancelOrderSaga::new(db.events.clone(), changes.clone()),
            db.pool.clone(),
        ));
        Self {
            db,
            place_order,
            cancel_order,
            changes,
            choreography_deadline,
        }
    }

    /// Appends a new order's `OrderPlaced`, stores its idempotency key (if any) and starts its
    /// place-order saga in its style, in one transaction: orchestrated, the saga instance and its
    /// first command (to the outbox); choreographed, the `OrderCreated` event (to the outbox).
    pub async fn place(
        &self,
        placement: Placement<'_>,
    ) -> Result<Placed, flotilla_eventstore::Error> {
        let Placement {
            order_id,
            customer_id,
            lines,
            ship_to,
            key,
            style,
        } = placement;
        let mut loaded = Loaded {
            id: order_id.to_owned(),
            state: Order::default(),
            version: 0,
        };
        let placed = loaded
            .state
            .place(customer_id, lines, ship_to)
            .map_err(|e| flotilla_eventstore::Error::Encode(e.to_string()))?;
        let now = flotilla_kit::clock::now_rfc3339();
        // The key, the event and the saga's start: one transaction of direct calls, shared with the
        // placements waiting meanwhile (group commit: the pages they share are written once).
        let (sagas, order_id_owned) = (self.clone(), order_id.to_owned());
        let key = key.map(|(key, hash)| (key.to_owned(), hash.to_owned()));
        let (stored, loaded) = grouped(&self.db.pool, move |sql| {
            let (db, order_id) = (&sagas.db, order_id_owned.as_str());
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
            let recorded = db.events.save_on(
                sql,
                &mut loaded,
                &placed,
                &Metadata::correlated(format!("order-{order_id}")),
            )?;
            let encode = |e: &dyn std::fmt::Display| flotilla_eventstore::Error::Encode(e.to_string());
            let data = place::data_of(order_id, &loaded.state)
                .ok_or_else(|| encode(&"a placed order has an address"))?;
            match style {
                SagaStyle::Orchestration => sagas
                    .place_order
                    .start(sql, order_id, data, None)
                    .map_err(|e| encode(&e))?,
                SagaStyle::Choreography => {
                    let details = participants::details(order_id, &loaded.state)
                        .ok_or_else(|| encode(&"a placed order has an address"))?;
                    flotilla_messaging::outbox::enqueue(sql, &choreography::created(details))
                        .map_err(|e| encode(&e))?;
                    // Nobody coordinates: the order's own deadline notices a saga that stalls.
                    let deadline = choreography::micros_after(sagas.choreography_deadline);
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
        self.db.events.appended(position);
        Ok(Placed::New(Box::new(loaded)))
    }

    /// Asks to cancel approved order `order_id` for `reason`: appends `CancellationRequested`
    /// and starts the cancel-order saga in `style`, in one transaction.
    pub async fn request_cancellation(
        &self,
        order_id: &str,
        reason: &str,
        style: SagaStyle,
    ) -> Result<Cancelling, flotilla_eventstore::Error> {
        let encode = |e: &dyn std::fmt::Display| flotilla_eventstore::Error::Encode(e.to_string());
        let mut appended = None;
        let db = &self.db;
        let started = transaction(&db.pool, |sql| {
            let mut order = db.events.load_on::<Order>(sql, order_id)?;
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
                    .save_on(sql, &mut order, &events, &Metadata::correlated(&saga_id))?;
            appended = recorded.last().map(|event| event.position);
            match style {
                SagaStyle::Orchestration => {
                    let data = CancelOrderData {
                        order_id: order_id.to_owned(),
                        customer_id: order.state.customer_id.clone(),
                        total_cents: order.state.total_cents,
                        reason: reason.to_owned(),
                    };
                    self.cancel_order
                        .start(sql, &saga_id, data, None)
                        .map_err(|e| encode(&e))?;
                }
                SagaStyle::Choreography => {
                    let message = choreography::cancellation_requested(order_id, reason);
                    flotilla_messaging::outbox::enqueue(sql, &message).map_err(|e| encode(&e))?;
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

    /// Runs, until `shutdown`, what moves sagas on without a message: both orchestrators'
    /// timeouts, and the choreographed orders' deadline (waking `relay` when it expired any).
    pub fn spawn_timers(&self, relay: Arc<Notify>, shutdown: &CancellationToken) {
        let (place, stop) = (self.place_order.clone(), shutdown.clone());
        tokio::spawn(async move { place.run_timeouts(TIMEOUT_TICK, stop).await });
        let (cancel, stop) = (self.cancel_order.clone(), shutdown.clone());
        tokio::spawn(async move { cancel.run_timeouts(TIMEOUT_TICK, stop).await });
        let deadline = self.choreography_deadline;
        tokio::spawn(choreography::run_deadlines(
            self.db.clone(),
            deadline,
            (deadline / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            relay,
            shutdown.clone(),
        ));
    }
}
