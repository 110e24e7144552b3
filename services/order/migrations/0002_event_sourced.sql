-- The order becomes event-sourced: its state lives in the event store's tables
-- (eventstore_*, created by flotilla-eventstore's own migrations in this same file), and
-- the tables below are read models kept by projections, rebuildable from the events.
--
-- The first version's `orders` and `order_items` held only PENDING orders that no saga could
-- complete; they are dropped, not converted.
DROP TABLE idempotency_keys;
DROP TABLE order_items;
DROP TABLE orders;

-- One row per Idempotency-Key, written in the same transaction as the order's first event.
CREATE TABLE idempotency_keys (
    key           TEXT PRIMARY KEY NOT NULL,
    request_hash  TEXT NOT NULL,
    order_id      TEXT NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;

-- Read model: orders by customer and status (projection `order_summaries`).
CREATE TABLE order_summaries (
    order_id     TEXT PRIMARY KEY NOT NULL,
    customer_id  TEXT NOT NULL,
    status       TEXT NOT NULL,
    total_cents  INTEGER NOT NULL,
    lines        INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    version      INTEGER NOT NULL
) STRICT;
CREATE INDEX order_summaries_by_customer ON order_summaries (customer_id, created_at);
CREATE INDEX order_summaries_by_status ON order_summaries (status, created_at);

-- Read model: revenue per UTC day (projection `revenue_per_day`).
CREATE TABLE revenue_per_day (
    day               TEXT PRIMARY KEY NOT NULL,  -- YYYY-MM-DD
    placed_orders     INTEGER NOT NULL DEFAULT 0,
    placed_cents      INTEGER NOT NULL DEFAULT 0,
    approved_orders   INTEGER NOT NULL DEFAULT 0,
    approved_cents    INTEGER NOT NULL DEFAULT 0,
    rejected_orders   INTEGER NOT NULL DEFAULT 0,
    cancelled_orders  INTEGER NOT NULL DEFAULT 0,
    cancelled_cents   INTEGER NOT NULL DEFAULT 0
) STRICT;
-- The totals the revenue projection needs when an order is approved or cancelled later.
CREATE TABLE revenue_order_totals (
    order_id     TEXT PRIMARY KEY NOT NULL,
    total_cents  INTEGER NOT NULL
) STRICT;
