-- The catalog and its stock. `reserved` is stock held for orders in flight.
CREATE TABLE products (
    sku          TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    price_cents  INTEGER NOT NULL CHECK (price_cents >= 0),
    on_hand      INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved     INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand)
) STRICT;
