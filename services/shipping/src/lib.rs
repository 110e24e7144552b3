//! The shipping service: owns shipments, and the destinations the carrier refuses.
//!
//! This version serves the shipments of an order and the refused destinations over HTTP, and
//! offers the order saga's shipping step as idempotent domain functions on a database
//! transaction, in [`carrier`]: [`carrier::schedule`] (a refused destination is the saga's
//! natural late failure), [`carrier::cancel`] (its compensation) and [`carrier::check`] (the
//! invariants, for the system checker). [`commands::ShippingCommands`] is the handler of the
//! saga's commands (topic `shipping.commands`) that calls them and answers on `reply_to`. Its
//! database is `<data_dir>/shipping.db`, with the messaging tables (outbox, inbox), seeded on
//! first start from `services/shipping/seed/refused_destinations.json` (country `AQ`).
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `GET /v1/shipments?order_id=…` | the shipments of an order (`order_id` is required) |
//! | `GET /v1/shipments/refused-destinations` | countries the carrier does not serve |

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use flotilla_kit::{Problem, Query, ServerSettings};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod carrier;
pub mod commands;
pub mod reactions;

/// The service's name in the registry.
pub const SERVICE: &str = "shipping";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
const SEED: &str = include_str!("../seed/refused_destinations.json");

/// A shipment of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Shipment {
    /// The shipment's id.
    pub shipment_id: String,
    /// The order shipped.
    pub order_id: String,
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

/// A list of items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// Opens the database, applies migrations and seeds the refused destinations if there are none.
pub async fn open(settings: &ServerSettings) -> Result<SqlitePool, sqlx::Error> {
    let opening = flotilla_sqlite::open(&settings.database_path(SERVICE), &MIGRATIONS).await?;
    let refused: Vec<RefusedDestination> =
        serde_json::from_str(SEED).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let mut tx = opening.pool().begin().await?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM refused_destinations")
        .fetch_one(&mut *tx)
        .await?;
    if count == 0 {
        for destination in &refused {
            sqlx::query("INSERT INTO refused_destinations (country, reason) VALUES (?, ?)")
                .bind(&destination.country)
                .bind(&destination.reason)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    flotilla_messaging::migrate(opening.pool())
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    Ok(opening.ready())
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
    Query(ByOrder { order_id }): Query<ByOrder>,
) -> Result<axum::Json<Items<Shipment>>, Problem> {
    let items = sqlx::query_as::<_, Shipment>(
        "SELECT shipment_id, order_id, name, street, city, postal_code, country, status, created_at, updated_at
         FROM shipments WHERE order_id = ? ORDER BY created_at",
    )
    .bind(&order_id)
    .fetch_all(&pool)
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(Items { items }))
}

async fn refused(
    State(pool): State<SqlitePool>,
) -> Result<axum::Json<Items<RefusedDestination>>, Problem> {
    let items = sqlx::query_as::<_, RefusedDestination>(
        "SELECT country, reason FROM refused_destinations ORDER BY country",
    )
    .fetch_all(&pool)
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(Items { items }))
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: flotilla_messaging::ServiceConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let pool = open(&config.instance.server)
        .await
        .map_err(std::io::Error::other)?;
    flotilla_messaging::runtime::serve(
        SERVICE,
        config,
        listener,
        pool.clone(),
        routes(pool),
        flotilla_contracts::subscriptions(),
        participant(),
        flotilla_contracts::topics_of(SERVICE),
        shutdown,
    )
    .await
}

/// The shipping service's consumer: saga commands (orchestration, `shipping.commands`) go
/// to [`commands::ShippingCommands`], the other services' facts (choreography) to [`reactions::ShippingReactions`].
pub type Participant =
    flotilla_messaging::inbox::ByTopic<commands::ShippingCommands, reactions::ShippingReactions>;

/// The shipping service's consumer ([`Participant`]).
pub const fn participant() -> Participant {
    flotilla_messaging::inbox::ByTopic::new(
        flotilla_contracts::SHIPPING_COMMANDS,
        commands::ShippingCommands,
        reactions::ShippingReactions,
    )
}
