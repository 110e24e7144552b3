-- Choreography: the facts of each saga a service has observed (one row per fact, whatever the
-- redeliveries), so that it decides from all of them whatever order they arrived in.
CREATE TABLE saga_facts (
    saga_id     TEXT NOT NULL,
    fact        TEXT NOT NULL,
    detail      TEXT NOT NULL,                   -- JSON
    observed_at INTEGER NOT NULL,
    PRIMARY KEY (saga_id, fact)
) STRICT;
