-- Shipments, and the destinations the carrier refuses.
CREATE TABLE shipments (
    shipment_id   TEXT PRIMARY KEY NOT NULL,
    order_id      TEXT NOT NULL,
    name          TEXT NOT NULL,
    street        TEXT NOT NULL,
    city          TEXT NOT NULL,
    postal_code   TEXT NOT NULL,
    country       TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('SCHEDULED', 'CANCELLED', 'DISPATCHED', 'DELIVERED')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) STRICT;

CREATE INDEX shipments_by_order ON shipments (order_id);

CREATE TABLE refused_destinations (
    country  TEXT PRIMARY KEY NOT NULL CHECK (length(country) = 2),
    reason   TEXT NOT NULL
) STRICT;
