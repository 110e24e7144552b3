//! `POST /v1/orders`: validate, price, then store the order and start its saga in one
//! transaction; a replay with the same `Idempotency-Key` and body answers with the first order.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use flotilla_identity::Caller;
use flotilla_kit::{Json, Problem};
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;

use super::context::Context;
use super::headers::{idempotency_key, prefer_wait, saga_style};
use super::owner::customer_of;
use super::pricing::price;
use super::waiting::{respond, respond_with};
use crate::domain::{OrderLine, PlaceOrder};
use crate::sagas::{Placed, Placement};
use crate::store;

pub(super) async fn place(
    State(context): State<Context>,
    caller: Caller,
    headers: HeaderMap,
    Json(mut request): Json<PlaceOrder>,
) -> Result<Response, Problem> {
    request.customer_id = customer_of(&caller, &request.customer_id)?;
    let key = idempotency_key(&headers)?;
    let style = saga_style(&headers, context.style)?;
    let hash = hex(&Sha256::digest(
        serde_json::to_vec(&request).map_err(|e| Problem::internal(&e))?,
    ));
    let wait = prefer_wait(&headers);
    if let Some(key) = &key
        && let Some(order_id) = replay(&context.sagas.db.pool, key, &hash).await?
    {
        return respond(&context.sagas, &order_id, wait, style).await;
    }
    let order = request.validate()?;
    let prices = price(&context.discovery, &context.prices, &order).await?;
    context
        .customers
        .ensure(&context.discovery, &order.customer_id)
        .await?;
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
        let (sagas, order_id, customer_id) = (
            context.sagas.clone(),
            order_id.clone(),
            order.customer_id.clone(),
        );
        let (ship_to, key, hash) = (order.ship_to.clone(), key.clone(), hash.clone());
        tokio::spawn(async move {
            sagas
                .place(Placement {
                    order_id: &order_id,
                    customer_id: &customer_id,
                    lines,
                    ship_to,
                    key: key.as_deref().map(|k| (k, hash.as_str())),
                    style,
                })
                .await
        })
    };
    let placed = placing.await.map_err(|e| Problem::internal(&e))?;
    match placed {
        Ok(Placed::New(placed)) => {
            context.relay.notify_one();
            tracing::info!(%order_id, customer = %order.customer_id, style = style.as_str(), "order placed");
            // The order as the placement committed it: no need to load it again.
            respond_with(&context.sagas, &order_id, wait, style, Some(*placed)).await
        }
        // A concurrent request with the same key won the race.
        Ok(Placed::KeyTaken) => match &key {
            Some(key) => match replay(&context.sagas.db.pool, key, &hash).await? {
                Some(order_id) => respond(&context.sagas, &order_id, wait, style).await,
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
