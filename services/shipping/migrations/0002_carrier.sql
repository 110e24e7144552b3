-- The carrier's saga operations: at most one shipment per order, and a stable answer for refusals.

-- One shipment per order, enforced by the database; it also serves the lookups by order, so the
-- plain index of 0001 is redundant.
CREATE UNIQUE INDEX shipments_one_per_order ON shipments (order_id);
DROP INDEX shipments_by_order;

-- Orders the carrier refused to ship (refused or invalid destination, or cancelled before they
-- were scheduled), so that a repeated request gets the same answer. `country` is the destination
-- asked for, NULL when the order was cancelled before any request to schedule it.
CREATE TABLE shipment_refusals (
    order_id    TEXT PRIMARY KEY NOT NULL,
    country     TEXT,
    reason      TEXT NOT NULL,
    refused_at  TEXT NOT NULL
) STRICT;
