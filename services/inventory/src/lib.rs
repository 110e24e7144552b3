//! The inventory service: owns the catalog (SKU, name, price in cents) and its stock
//! (`on_hand`, `reserved`).
//!
//! It serves the catalog, and holds stock for orders ([`stock`]: reserve, release, commit,
//! restock — idempotent per order, never overselling), which the order saga drives: commands
//! on `inventory.commands` ([`commands::StockCommands`]) and the other services' facts
//! ([`reactions::StockReactions`]). [`PARTICIPANT`] declares all that; `flotilla-messaging`
//! runs it. Its database is `<data_dir>/inventory.db`, with the messaging tables (outbox,
//! inbox), seeded on first start from `services/inventory/seed/products.json`.
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `GET /v1/products` | the catalog with stock |
//! | `GET /v1/products/{sku}` | one product; 404 `/problems/unknown-sku` if there is none |

pub mod commands;
pub mod reactions;
pub mod stock;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use flotilla_kit::{Problem, ServerSettings};
use flotilla_messaging::ServiceConfig;
use flotilla_messaging::inbox::ByTopic;
use flotilla_messaging::participant::Seed;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The service's name in the registry.
pub const SERVICE: &str = "inventory";

/// A product of the catalog with its stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Product {
    /// Stock-keeping unit, the product's id.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: i64,
    /// Units in the warehouse, reserved or not.
    pub on_hand: i64,
    /// Units held for orders in flight.
    #[serde(default)]
    pub reserved: i64,
}

/// A page of the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    /// The products, by SKU.
    pub items: Vec<Product>,
}

/// The inventory as a saga participant: its catalog database, its routes, its stock commands
/// and its reactions.
pub static PARTICIPANT: flotilla_messaging::participant::Participant<
    commands::StockCommands,
    reactions::StockReactions,
    Product,
> = flotilla_messaging::participant::Participant {
    name: SERVICE,
    migrations: sqlx::migrate!("./migrations"),
    seed: Seed {
        table: "products",
        rows: include_str!("../seed/products.json"),
        insert: |db, product| {
            flotilla_sqlite::execute(
                db,
                "INSERT INTO products (sku, name, price_cents, on_hand, reserved, initial_on_hand)
                 VALUES ($1, $2, $3, $4, 0, $4)",
                &[
                    &product.sku,
                    &product.name,
                    &product.price_cents,
                    &product.on_hand,
                ],
            )
        },
    },
    routes,
    commands_topic: flotilla_contracts::INVENTORY_COMMANDS,
    commands: commands::StockCommands,
    reactions: reactions::StockReactions,
};

/// Opens the database ([`PARTICIPANT`]'s), applies migrations and seeds an empty catalog.
pub async fn open(settings: &ServerSettings) -> Result<SqlitePool, sqlx::Error> {
    PARTICIPANT.open(settings).await
}

/// The service's routes.
pub fn routes(pool: SqlitePool) -> Router {
    Router::new()
        .route("/v1/products", get(list))
        .route("/v1/products/{sku}", get(one))
        .with_state(pool)
}

async fn list(State(pool): State<SqlitePool>) -> Result<axum::Json<Catalog>, Problem> {
    let items = sqlx::query_as::<_, Product>(
        "SELECT sku, name, price_cents, on_hand, reserved FROM products ORDER BY sku",
    )
    .fetch_all(&pool)
    .await
    .map_err(|e| Problem::internal(&e))?;
    Ok(axum::Json(Catalog { items }))
}

async fn one(
    State(pool): State<SqlitePool>,
    Path(sku): Path<String>,
) -> Result<axum::Json<Product>, Problem> {
    sqlx::query_as::<_, Product>(
        "SELECT sku, name, price_cents, on_hand, reserved FROM products WHERE sku = ?",
    )
    .bind(&sku)
    .fetch_optional(&pool)
    .await
    .map_err(|e| Problem::internal(&e))?
    .map(axum::Json)
    .ok_or_else(|| {
        Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown-sku",
            format!("no product has SKU `{sku}`"),
        )
        .with("sku", sku)
    })
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: ServiceConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let wiring = flotilla_contracts::wiring(SERVICE);
    PARTICIPANT.run(config, wiring, listener, shutdown).await
}

/// The inventory service's consumer: saga commands (orchestration, `inventory.commands`) go
/// to [`commands::StockCommands`], the other services' facts (choreography) to [`reactions::StockReactions`].
pub type Participant = ByTopic<commands::StockCommands, reactions::StockReactions>;

/// The inventory service's consumer ([`Participant`]).
pub fn participant() -> Participant {
    PARTICIPANT.consumer()
}
