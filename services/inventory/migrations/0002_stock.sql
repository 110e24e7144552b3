-- Stock reservations for orders (the saga's first step and its compensation), and what the
-- invariant checker needs: the stock each product started with.
ALTER TABLE products ADD COLUMN initial_on_hand INTEGER NOT NULL DEFAULT 0;
UPDATE products SET initial_on_hand = on_hand;

-- One row per order that asked for stock, with the outcome the first request got.
CREATE TABLE reservations (
    order_id    TEXT PRIMARY KEY NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('RESERVED', 'REFUSED', 'RELEASED', 'COMMITTED', 'RESTOCKED')),
    reason      TEXT,            -- why it was refused
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

CREATE TABLE reservation_lines (
    order_id  TEXT NOT NULL REFERENCES reservations (order_id),
    sku       TEXT NOT NULL REFERENCES products (sku),
    quantity  INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
) STRICT;
