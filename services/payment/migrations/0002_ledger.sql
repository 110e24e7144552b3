-- The saga participant's ledger (see `src/ledger.rs`).

-- At most one payment per order: authorizing again for an order answers with the first payment.
-- It supersedes the plain index of 0001.
DROP INDEX payments_by_order;
CREATE UNIQUE INDEX payments_one_per_order ON payments (order_id);

-- Orders whose authorization was refused, so that a redelivered request gets the same answer.
-- Also orders voided before any authorization arrived (`customer_id` and `amount_cents` are then
-- NULL): a late authorization for them is refused instead of holding money nobody will release.
-- An order has a payment or a refusal, never both.
CREATE TABLE payment_refusals (
    order_id      TEXT PRIMARY KEY NOT NULL,
    -- As requested: the customer may be unknown and the amount invalid, hence no constraints.
    customer_id   TEXT,
    amount_cents  INTEGER,
    reason        TEXT NOT NULL,
    created_at    TEXT NOT NULL
) STRICT;
