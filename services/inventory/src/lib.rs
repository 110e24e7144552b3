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
//!
//! Every route needs a verified token ([`flotilla_identity::guard`]): a customer's passed on by
//! the gateway, or a platform process's own (the gateway's for its public catalog route, the
//! order service's when it prices an order). The catalog is the same for every caller.

pub mod commands;
pub mod reactions;
pub mod stock;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_kit::{Problem, ServerSettings};
use flotilla_messaging::inbox::ByTopic;
use flotilla_messaging::participant::{self, Items, Seed};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

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

/// A page of the catalog: its products, by SKU.
pub type Catalog = Items<Product>;

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
    wiring: flotilla_contracts::wiring,
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

async fn list(State(pool): State<SqlitePool>) -> Result<Json<Catalog>, Problem> {
    let sql = "SELECT sku, name, price_cents, on_hand, reserved FROM products ORDER BY sku";
    participant::list(&pool, sql, &[]).await
}

async fn one(
    State(pool): State<SqlitePool>,
    Path(sku): Path<String>,
) -> Result<Json<Product>, Problem> {
    let sql = "SELECT sku, name, price_cents, on_hand, reserved FROM products WHERE sku = ?";
    participant::find(&pool, sql, &sku, || {
        Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown-sku",
            format!("no product has SKU `{sku}`"),
        )
        .with("sku", sku.clone())
    })
    .await
}

/// The inventory service's consumer: saga commands (orchestration, `inventory.commands`) go
/// to [`commands::StockCommands`], the other services' facts (choreography) to [`reactions::StockReactions`].
pub type Participant = ByTopic<commands::StockCommands, reactions::StockReactions>;

/// The inventory service's consumer ([`Participant`]).
pub fn participant() -> Participant {
    PARTICIPANT.consumer()
}
