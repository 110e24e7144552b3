//! Customer notifications, **fire-and-forget**: when an order ends (confirmed, rejected,
//! cancelled, cancellation refused) the order writes a message to `order.notifications` in the
//! same transaction as the order's event, and nobody waits for it. This consumer stands in for
//! the mail or push service: it logs each notification and records it in `notifications`.
//!
//! Fire-and-forget still rides the outbox and the inbox: the notification is sent if and only
//! if the order's change committed, and is recorded once whatever the redeliveries.

use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The notification of order `order_id` of `customer_id`, kind `kind` (`OrderConfirmed`...),
/// with the order's total and `extra` fields.
///
/// ```
/// let message = flotilla_order::store::notifications::message("o-1", "c-1", 1200, "OrderRejected",
///     serde_json::json!({ "reason": "out of stock" }));
/// assert_eq!(message.topic, "order.notifications");
/// assert_eq!(message.payload["reason"], "out of stock");
/// assert_eq!(message.payload["total_cents"], 1200);
/// ```
pub fn message(
    order_id: &str,
    customer_id: &str,
    total_cents: i64,
    kind: &str,
    extra: Value,
) -> Message {
    let mut payload = json!({
        "order_id": order_id,
        "customer_id": customer_id,
        "total_cents": total_cents,
    });
    if let (Some(target), Value::Object(extra)) = (payload.as_object_mut(), extra) {
        target.extend(extra);
    }
    Message::new(
        flotilla_contracts::ORDER_NOTIFICATIONS,
        kind,
        order_id,
        payload,
    )
    .correlated(order_id)
}

/// A recorded notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Notification {
    /// The message it came in.
    pub message_id: String,
    /// The order.
    pub order_id: String,
    /// The customer told.
    pub customer_id: String,
    /// `OrderConfirmed`, `OrderRejected`, `OrderCancelled` or `OrderCancellationRefused`.
    pub kind: String,
    /// When it was recorded, RFC 3339.
    pub recorded_at: String,
}

/// The notifications of order `order_id`, oldest first.
pub async fn of_order(pool: &SqlitePool, order_id: &str) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query_as(
        "SELECT message_id, order_id, customer_id, kind, recorded_at FROM notifications
         WHERE order_id = $1 ORDER BY recorded_at, message_id",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// The notification consumer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifications;

impl Handler for Notifications {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        let field = |name: &str| {
            message
                .payload
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    HandlerError::Reject(format!("notification {} has no {name}", message.id))
                })
        };
        let (order_id, customer_id) = (field("order_id")?, field("customer_id")?);
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        flotilla_sqlite::execute(
            db,
            "INSERT INTO notifications (message_id, order_id, customer_id, kind, detail, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
            &[
                &message.id.to_string(),
                &order_id,
                &customer_id,
                &message.message_type,
                &message.payload.to_string(),
                &now,
            ],
        )
        .map_err(flotilla_sqlite::sqlx_error)?;
        tracing::info!(%order_id, customer = %customer_id, kind = %message.message_type, "customer notified");
        Ok(Vec::new())
    }
}
