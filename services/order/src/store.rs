//! The order database.

use flotilla_kit::Settings;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::{Address, NewOrder};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
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
    /// RFC 3339, UTC.
    pub created_at: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct OrderLine {
    /// Product SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// Unit price when ordered, in cents.
    pub unit_price_cents: i64,
}

/// Opens the database and applies migrations.
pub async fn open(settings: &Settings) -> Result<SqlitePool, sqlx::Error> {
    let opening =
        flotilla_kit::database::open(&settings.database_path(crate::SERVICE), &MIGRATIONS).await?;
    Ok(opening.ready())
}

/// What [`insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The order was stored.
    New,
    /// Another order holds the idempotency key; nothing was stored.
    KeyTaken,
}

/// Stores a priced order and its idempotency key (if any) in one transaction.
pub async fn insert(
    pool: &SqlitePool,
    order_id: &str,
    order: &NewOrder,
    prices: &[i64],
    key: Option<(&str, &str)>,
) -> Result<Inserted, sqlx::Error> {
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let total: i64 = order
        .items
        .iter()
        .zip(prices)
        .map(|(item, price)| item.quantity.saturating_mul(*price))
        .fold(0i64, i64::saturating_add);
    let ship_to =
        serde_json::to_string(&order.ship_to).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, status, total_cents, ship_to, created_at, updated_at)
         VALUES (?, ?, 'PENDING', ?, ?, ?, ?)",
    )
    .bind(order_id)
    .bind(&order.customer_id)
    .bind(total)
    .bind(&ship_to)
    .bind(&now)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    for (line, (item, price)) in order.items.iter().zip(prices).enumerate() {
        sqlx::query("INSERT INTO order_items (order_id, line, sku, quantity, unit_price_cents) VALUES (?, ?, ?, ?, ?)")
            .bind(order_id)
            .bind(line as i64)
            .bind(&item.sku)
            .bind(item.quantity)
            .bind(price)
            .execute(&mut *tx)
            .await?;
    }
    if let Some((key, hash)) = key {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (key, request_hash, order_id, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(hash)
        .bind(order_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            tx.rollback().await?;
            return Ok(Inserted::KeyTaken);
        }
    }
    tx.commit().await?;
    Ok(Inserted::New)
}

/// The `(request_hash, order_id)` stored for an idempotency key.
pub async fn find_key(
    pool: &SqlitePool,
    key: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT request_hash, order_id FROM idempotency_keys WHERE key = ?")
        .bind(key)
        .fetch_optional(pool)
        .await
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    order_id: String,
    customer_id: String,
    status: String,
    total_cents: i64,
    ship_to: String,
    created_at: String,
    updated_at: String,
}

/// The order `order_id`, with its lines.
pub async fn find(pool: &SqlitePool, order_id: &str) -> Result<Option<Order>, sqlx::Error> {
    let Some(row) = sqlx::query_as::<_, OrderRow>(
        "SELECT order_id, customer_id, status, total_cents, ship_to, created_at, updated_at FROM orders WHERE order_id = ?",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let items = sqlx::query_as::<_, OrderLine>(
        "SELECT sku, quantity, unit_price_cents FROM order_items WHERE order_id = ? ORDER BY line",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    let ship_to =
        serde_json::from_str(&row.ship_to).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Some(Order {
        order_id: row.order_id,
        customer_id: row.customer_id,
        status: row.status,
        total_cents: row.total_cents,
        items,
        ship_to,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }))
}
