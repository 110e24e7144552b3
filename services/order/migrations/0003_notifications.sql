-- The customer notifications the order sends (fire-and-forget on `order.notifications`), as
-- the notification consumer records them: one row per message, whatever the redeliveries.
CREATE TABLE notifications (
    message_id  TEXT PRIMARY KEY NOT NULL,
    order_id    TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    kind        TEXT NOT NULL,      -- OrderConfirmed, OrderRejected, OrderCancelled, ...
    detail      TEXT NOT NULL,      -- JSON payload
    recorded_at TEXT NOT NULL
) STRICT;
CREATE INDEX notifications_by_order ON notifications (order_id, recorded_at);
