//! The shipping service: owns shipments, and the destinations the carrier refuses.
//!
//! This version serves the shipments of an order and the refused destinations over HTTP, and
//! offers the order saga's shipping step as idempotent domain functions on a database
//! transaction, in [`carrier`]: [`carrier::schedule`] (a refused destination is the saga's
//! natural late failure), [`carrier::cancel`] (its compensation) and [`carrier::check`] (the
//! invariants, for the system checker). [`commands::ShippingCommands`] is the handler of the
//! saga's commands (topic `shipping.commands`) that calls them and answers on `reply_to`, and
//! [`reactions::ShippingReactions`] the one of the other services' facts (choreography).
//! [`PARTICIPANT`] declares all that; `flotilla-messaging` runs it. Its database is
//! `<data_dir>/shipping.db`, with the messaging tables (outbox, inbox), seeded on first start
//! from `services/shipping/seed/refused_destinations.json` (country `AQ`).
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `GET /v1/shipments?order_id=…` | the shipments of an order (`order_id` is required; a customer's token: only their own) |
//! | `GET /v1/shipments/refused-destinations` | countries the carrier does not serve |
//!
//! Every route needs a verified token ([`flotilla_identity::guard`]). A shipment records its
//! order's customer (from the saga's command or the choreographed facts); a customer sees
//! their own shipments only, an admin or a platform service every one.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use flotilla_identity::Caller;
use flotilla_kit::{Problem, Query, ServerSettings};
use flotilla_messaging::inbox::ByTopic;
use flotilla_messaging::participant::{self, Items, Seed};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

pub mod carrier;
pub mod commands;
pub mod reactions;

/// The service's name in the registry.
pub const SERVICE: &str = "shipping";

/// A shipment of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Shipment {
    /// The shipment's id.
    pub shipment_id: String,
    /// The order shipped.
    pub order_id: String,
    /// The order's customer (`None` for a shipment scheduled before owners were recorded).
    pub customer_id: Option<String>,
    /// Recipient.
    pub name: String,
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// `SCHEDULED`, `CANCELLED`, `DISPATCHED` or `DELIVERED`.
    pub status: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// A country the carrier does not serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RefusedDestination {
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Why.
    pub reason: String,
}

/// The shipping service as a saga participant: its database, its routes, its commands and its
/// reactions.
pub static PARTICIPANT: flotilla_messaging::participant::Participant<
    commands::ShippingCommands,
    reactions::ShippingReactions,
    RefusedDestination,
> = flotilla_messaging::participant::Participant {
    name: SERVICE,
    migrations: sqlx::migrate!("./migrations"),
    seed: Seed {
        table: "refused_destinations",
        rows: include_str!("../seed/refused_destinations.json"),
        insert: |db, row| {
            flotilla_sqlite::execute(
                db,
                "INSERT INTO refused_destinations (country, reason) VALUES ($1, $2)",
                &[&row.country, &row.reason],
            )
        },
    },
    routes,
    commands_topic: flotilla_contracts::SHIPPING_COMMANDS,
    commands: commands::ShippingCommands,
    reactions: reactions::ShippingReactions,
    wiring: flotilla_contracts::wiring,
};

/// Opens the database ([`PARTICIPANT`]'s), applies migrations and seeds the refused destinations if there are none.
pub async fn open(settings: &ServerSettings) -> Result<SqlitePool, sqlx::Error> {
    PARTICIPANT.open(settings).await
}

/// The service's routes.
pub fn routes(pool: SqlitePool) -> Router {
    Router::new()
        .route("/v1/shipments", get(shipments))
        .route("/v1/shipments/refused-destinations", get(refused))
        .with_state(pool)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ByOrder {
    order_id: String,
}

async fn shipments(
    State(pool): State<SqlitePool>,
    caller: Caller,
    Query(ByOrder { order_id }): Query<ByOrder>,
) -> Result<Json<Items<Shipment>>, Problem> {
    let sql = "SELECT shipment_id, order_id, customer_id, name, street, city, postal_code, country, status, created_at, updated_at
               FROM shipments WHERE order_id = ? ORDER BY created_at";
    let Json(mut shipments) = participant::list(&pool, sql, &[&order_id]).await?;
    shipments
        .items
        .retain(|shipment: &Shipment| match &shipment.customer_id {
            Some(owner) => caller.may_see(owner),
            None => caller.confined_to().is_none(),
        });
    Ok(Json(shipments))
}

async fn refused(
    State(pool): State<SqlitePool>,
) -> Result<Json<Items<RefusedDestination>>, Problem> {
    let sql = "SELECT country, reason FROM refused_destinations ORDER BY country";
    participant::list(&pool, sql, &[]).await
}

/// The shipping service's consumer: saga commands (orchestration, `shipping.commands`) go
/// to [`commands::ShippingCommands`], the other services' facts (choreography) to [`reactions::ShippingReactions`].
pub type Participant = ByTopic<commands::ShippingCommands, reactions::ShippingReactions>;

/// The shipping service's consumer ([`Participant`]).
pub fn participant() -> Participant {
    PARTICIPANT.consumer()
}
