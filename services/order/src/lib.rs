//! The order service: takes orders, prices them with the inventory's catalog and keeps them.
//!
//! This version stores orders as `PENDING`; the saga that completes them and the event-sourced
//! model (DESIGN.md) arrive in later versions. Its database is `<data_dir>/order.db`.
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `POST /v1/orders` | place an order ([`domain::PlaceOrder`]); 202 with `Location`; honours `Idempotency-Key` |
//! | `GET /v1/orders/{id}` | the order; 404 if there is none |
//!
//! Bad input never stores anything: the body is validated first ([`domain`]), then every SKU
//! is priced through discovery (an unknown SKU is a 422), and only then is the order written,
//! in one transaction with its idempotency key.

pub mod domain;
mod store;

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use flotilla_discovery::Discovery;
use flotilla_kit::{Json, Problem, Settings};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::{NewOrder, PlaceOrder};
pub use crate::store::{Order, OrderLine};

/// The service's name in the registry.
pub const SERVICE: &str = "order";

/// The header carrying a client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What a handler needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// The order database.
    pub pool: SqlitePool,
    /// How to reach the inventory.
    pub discovery: Discovery,
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
        .route("/v1/orders", post(place))
        .route("/v1/orders/{id}", get(fetch))
        .with_state(context)
}

async fn place(
    State(context): State<Context>,
    headers: HeaderMap,
    Json(request): Json<PlaceOrder>,
) -> Result<Response, Problem> {
    let key = idempotency_key(&headers)?;
    let hash = hex(&Sha256::digest(
        serde_json::to_vec(&request).map_err(|e| Problem::internal(&e))?,
    ));
    if let Some(key) = &key
        && let Some(order_id) = replay(&context.pool, key, &hash).await?
    {
        return accepted(&context.pool, &order_id).await;
    }
    let order = request.validate()?;
    let prices = price(&context.discovery, &order).await?;
    let order_id = uuid::Uuid::now_v7().to_string();
    match store::insert(
        &context.pool,
        &order_id,
        &order,
        &prices,
        key.as_deref().map(|k| (k, hash.as_str())),
    )
    .await
    {
        Ok(store::Inserted::New) => {
            tracing::info!(%order_id, customer = %order.customer_id, "order placed");
            accepted(&context.pool, &order_id).await
        }
        // A concurrent request with the same key won the race.
        Ok(store::Inserted::KeyTaken) => match &key {
            Some(key) => match replay(&context.pool, key, &hash).await? {
                Some(order_id) => accepted(&context.pool, &order_id).await,
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

async fn accepted(pool: &SqlitePool, order_id: &str) -> Result<Response, Problem> {
    let order = store::find(pool, order_id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .ok_or_else(|| Problem::internal(&"order vanished after insert"))?;
    let body = Accepted {
        order_id: order.order_id.clone(),
        status: order.status.clone(),
        total_cents: order.total_cents,
    };
    let location = HeaderValue::from_str(&format!("/v1/orders/{order_id}"))
        .map_err(|e| Problem::internal(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
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

/// The unit price of every line, asked of the inventory through discovery (with failover).
async fn price(discovery: &Discovery, order: &NewOrder) -> Result<Vec<i64>, Problem> {
    let asks = order.items.iter().map(|item| async move {
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
        (item.sku.as_str(), answer)
    });
    let mut prices = Vec::with_capacity(order.items.len());
    let mut unknown = Vec::new();
    for (sku, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Priced>(&body) {
                Ok(product) if product.price_cents >= 0 => prices.push(product.price_cents),
                _ => {
                    return Err(Problem::internal(&format!(
                        "inventory sent an unreadable product for {sku}"
                    )));
                }
            },
            Ok((StatusCode::NOT_FOUND, _)) => unknown.push(sku.to_owned()),
            Ok((status, _)) => {
                return Err(inventory_unavailable(&format!(
                    "inventory answered {status}"
                )));
            }
            Err(error) => return Err(inventory_unavailable(&error)),
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

fn inventory_unavailable(cause: &dyn std::fmt::Display) -> Problem {
    tracing::warn!(%cause, "pricing failed");
    Problem::unavailable(
        "inventory-unavailable",
        "the catalog cannot be reached to price the order; retry shortly",
    )
}

async fn fetch(
    State(context): State<Context>,
    Path(id): Path<String>,
) -> Result<axum::Json<Order>, Problem> {
    store::find(&context.pool, &id)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found(format!("no order `{id}`")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let pool = store::open(&settings)
        .await
        .map_err(std::io::Error::other)?;
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let discovery = match &settings.registry_url {
        Some(registry) => Discovery::new(registry, timeout, shutdown.clone()),
        None => Discovery::fixed(Default::default(), timeout),
    }
    .with_resilience(settings.breaker.clone(), settings.retry.clone())
    .map_err(std::io::Error::other)?;
    let context = Context {
        pool: pool.clone(),
        discovery,
    };
    let result =
        flotilla_discovery::serve_routes(SERVICE, &settings, listener, routes(context), shutdown)
            .await;
    pool.close().await;
    result
}
