-- Orders as placed. The order saga and the event-sourced model arrive in later versions.
CREATE TABLE orders (
    order_id     TEXT PRIMARY KEY NOT NULL,
    customer_id  TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'CANCELLED')),
    total_cents  INTEGER NOT NULL CHECK (total_cents >= 0),
    ship_to      TEXT NOT NULL,  -- JSON: {name, street, city, postal_code, country}
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
) STRICT;

CREATE TABLE order_items (
    order_id          TEXT NOT NULL REFERENCES orders (order_id),
    line              INTEGER NOT NULL,
    sku               TEXT NOT NULL,
    quantity          INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents  INTEGER NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line)
) STRICT;

-- One row per Idempotency-Key: a replay with the same body gets the same order, another
-- body is refused.
CREATE TABLE idempotency_keys (
    key           TEXT PRIMARY KEY NOT NULL,
    request_hash  TEXT NOT NULL,
    order_id      TEXT NOT NULL REFERENCES orders (order_id),
    created_at    TEXT NOT NULL
) STRICT;
