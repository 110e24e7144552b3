//! The inventory service: owns the catalog (SKU, name, price in cents) and its stock
//! (`on_hand`, `reserved`).
//!
//! It serves the catalog, and holds stock for orders ([`stock`]: reserve, release, commit,
//! restock — idempotent per order, never overselling), which the order saga drives. Its
//! database is `<data_dir>/inventory.db`, seeded on first start from
//! `services/inventory/seed/products.json`.
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
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The service's name in the registry.
pub const SERVICE: &str = "inventory";

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
const SEED: &str = include_str!("../seed/products.json");

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

/// Opens the database, applies migrations and seeds an empty catalog.
pub async fn open(settings: &ServerSettings) -> Result<SqlitePool, sqlx::Error> {
    let opening = flotilla_sqlite::open(&settings.database_path(SERVICE), &MIGRATIONS).await?;
    seed(opening.pool()).await?;
    flotilla_messaging::migrate(opening.pool())
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    Ok(opening.ready())
}

async fn seed(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let products: Vec<Product> =
        serde_json::from_str(SEED).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let mut tx = pool.begin().await?;
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM products")
        .fetch_one(&mut *tx)
        .await?;
    if count == 0 {
        for product in &products {
            sqlx::query("INSERT INTO products (sku, name, price_cents, on_hand, reserved, initial_on_hand) VALUES (?, ?, ?, ?, 0, ?)")
                .bind(&product.sku)
                .bind(&product.name)
                .bind(product.price_cents)
                .bind(product.on_hand)
                .bind(product.on_hand)
                .execute(&mut *tx)
                .await?;
        }
        tracing::info!(products = products.len(), "catalog seeded");
    }
    tx.commit().await
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

/// The inventory service's consumer: saga commands (orchestration, `inventory.commands`) go
/// to [`commands::StockCommands`], the other services' facts (choreography) to [`reactions::StockReactions`].
pub type Participant =
    flotilla_messaging::inbox::ByTopic<commands::StockCommands, reactions::StockReactions>;

/// The inventory service's consumer ([`Participant`]).
pub const fn participant() -> Participant {
    flotilla_messaging::inbox::ByTopic::new(
        flotilla_contracts::INVENTORY_COMMANDS,
        commands::StockCommands,
        reactions::StockReactions,
    )
}
