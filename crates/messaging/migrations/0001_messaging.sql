-- Reliable messaging in a service's own database (SQLite).

-- The transactional outbox: a message is written here in the same local transaction as the
-- state change it announces; the relay publishes it and marks it published.
CREATE TABLE messaging_outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- publication order
    message_id       TEXT NOT NULL UNIQUE,
    topic            TEXT NOT NULL,
    key              TEXT NOT NULL,                      -- messages of one key go out in order
    envelope         TEXT NOT NULL,                      -- the whole message, JSON
    created_at       INTEGER NOT NULL,                   -- microseconds since the Unix epoch
    published_at     INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT
) STRICT;
CREATE INDEX messaging_outbox_pending ON messaging_outbox (seq) WHERE published_at IS NULL;

-- Messages the relay gave up on after its maximum attempts; they can be listed and replayed.
CREATE TABLE messaging_dead_letters (
    seq          INTEGER PRIMARY KEY NOT NULL,  -- the outbox seq it had
    message_id   TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    key          TEXT NOT NULL,
    envelope     TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    last_error   TEXT NOT NULL,
    dead_at      INTEGER NOT NULL
) STRICT;

-- The idempotent inbox: one row per (consumer, message id) processed, written in the same
-- transaction as the consumer's effect. At-least-once delivery, exactly-once effect.
CREATE TABLE messaging_inbox (
    consumer      TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    processed_at  INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) STRICT;
