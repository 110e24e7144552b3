-- The event store (SQLite). Positions and stream versions start at 1 and have no gaps:
-- appends run in `BEGIN IMMEDIATE` transactions, one writer at a time.
CREATE TABLE eventstore_events (
    position        INTEGER PRIMARY KEY NOT NULL,  -- the global log's order
    event_id        TEXT NOT NULL UNIQUE,
    stream_id       TEXT NOT NULL,
    category        TEXT NOT NULL,                 -- stream_id up to its first '-'
    version         INTEGER NOT NULL CHECK (version > 0),
    event_type      TEXT NOT NULL,
    schema_version  INTEGER NOT NULL CHECK (schema_version > 0),
    data            TEXT NOT NULL,                 -- JSON
    metadata        TEXT NOT NULL,                 -- JSON object
    causation_id    TEXT,
    correlation_id  TEXT,
    recorded_at     INTEGER NOT NULL,              -- microseconds since the Unix epoch, UTC
    UNIQUE (stream_id, version)
) STRICT;

CREATE INDEX eventstore_events_by_category ON eventstore_events (category, position);

-- The latest snapshot of a stream's folded state.
CREATE TABLE eventstore_snapshots (
    stream_id      TEXT PRIMARY KEY NOT NULL,
    version        INTEGER NOT NULL,  -- the stream version the state includes
    state_version  INTEGER NOT NULL,  -- the aggregate's state schema; others are ignored
    state          TEXT NOT NULL,     -- JSON
    taken_at       INTEGER NOT NULL
) STRICT;

-- How far each projection has applied the global log.
CREATE TABLE eventstore_checkpoints (
    name        TEXT PRIMARY KEY NOT NULL,
    position    INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
