-- The event store (PostgreSQL). Positions come from the single row of eventstore_head, which an
-- append locks until it commits: positions are gap-free and in commit order, so a reader that
-- has seen position P never later finds an event below P.
CREATE TABLE eventstore_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    position  BIGINT NOT NULL
);
INSERT INTO eventstore_head (id, position) VALUES (1, 0);

CREATE TABLE eventstore_events (
    position        BIGINT PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    stream_id       TEXT NOT NULL,
    category        TEXT NOT NULL,
    version         BIGINT NOT NULL CHECK (version > 0),
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL CHECK (schema_version > 0),
    data            TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    causation_id    TEXT,
    correlation_id  TEXT,
    recorded_at     BIGINT NOT NULL,
    UNIQUE (stream_id, version)
);

CREATE INDEX eventstore_events_by_category ON eventstore_events (category, position);

CREATE TABLE eventstore_snapshots (
    stream_id      TEXT PRIMARY KEY,
    version        BIGINT NOT NULL,
    state_version  INTEGER NOT NULL,
    state          TEXT NOT NULL,
    taken_at       BIGINT NOT NULL
);

CREATE TABLE eventstore_checkpoints (
    name        TEXT PRIMARY KEY,
    position    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
