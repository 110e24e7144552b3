-- Customer accounts with a credit limit, and the payments made against them.
CREATE TABLE accounts (
    customer_id         TEXT PRIMARY KEY NOT NULL,
    name                TEXT NOT NULL,
    credit_limit_cents  INTEGER NOT NULL CHECK (credit_limit_cents >= 0),
    -- Authorised (held) and not yet captured or voided.
    held_cents          INTEGER NOT NULL DEFAULT 0 CHECK (held_cents >= 0),
    -- Captured and not refunded.
    charged_cents       INTEGER NOT NULL DEFAULT 0 CHECK (charged_cents >= 0)
) STRICT;

CREATE TABLE payments (
    payment_id    TEXT PRIMARY KEY NOT NULL,
    order_id      TEXT NOT NULL,
    customer_id   TEXT NOT NULL REFERENCES accounts (customer_id),
    amount_cents  INTEGER NOT NULL CHECK (amount_cents > 0),
    status        TEXT NOT NULL CHECK (status IN ('AUTHORIZED', 'CAPTURED', 'VOIDED', 'REFUNDED')),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) STRICT;

CREATE INDEX payments_by_order ON payments (order_id);
