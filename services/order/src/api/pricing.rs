//! Pricing an order: each line's unit price from the prices read lately ([`super::prices`]),
//! or else asked of the inventory through discovery (with failover).

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use flotilla_discovery::Discovery;
use flotilla_kit::Problem;
use serde::Deserialize;

use super::prices::Prices;
use crate::domain::NewOrder;

/// A product as the inventory describes it (only what pricing needs).
#[derive(Debug, Deserialize)]
struct Priced {
    price_cents: i64,
}

/// The unit price of every line: from the prices read lately ([`Prices`]), or else asked of the
/// inventory through discovery (with failover).
pub(super) async fn price(
    discovery: &Discovery,
    known: &Prices,
    order: &NewOrder,
) -> Result<Vec<i64>, Problem> {
    let asks = order.items.iter().map(|item| async move {
        if let Some(price) = known.get(&item.sku) {
            return (item.sku.as_str(), Ok(price));
        }
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
        (item.sku.as_str(), read_price(answer))
    });
    let mut prices = Vec::with_capacity(order.items.len());
    let mut unknown = Vec::new();
    for (sku, answer) in futures_util::future::join_all(asks).await {
        match answer {
            Ok(price) => {
                known.put(sku, price);
                prices.push(price);
            }
            Err(None) => unknown.push(sku.to_owned()),
            Err(Some(problem)) => return Err(problem),
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

/// The price in the inventory's answer; `Err(None)` when it knows no such product.
fn read_price(
    answer: Result<(StatusCode, Bytes), flotilla_discovery::DiscoveryError>,
) -> Result<i64, Option<Problem>> {
    match answer {
        Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Priced>(&body) {
            Ok(product) if product.price_cents >= 0 => Ok(product.price_cents),
            _ => Err(Some(Problem::internal(
                &"inventory sent an unreadable product",
            ))),
        },
        Ok((StatusCode::NOT_FOUND, _)) => Err(None),
        Ok((status, _)) => Err(Some(inventory_unavailable(&format!(
            "inventory answered {status}"
        )))),
        Err(error) => Err(Some(inventory_unavailable(&error))),
    }
}

fn inventory_unavailable(cause: &dyn std::fmt::Display) -> Problem {
    tracing::warn!(%cause, "pricing failed");
    Problem::unavailable(
        "inventory-unavailable",
        "the catalog cannot be reached to price the order; retry shortly",
    )
}
