-- Requests queued for later while their service's circuit breaker was open, replayed in order
-- (by seq) when it lets calls through again.
CREATE TABLE deferred (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    deferred_id      TEXT NOT NULL UNIQUE,
    service          TEXT NOT NULL,
    method           TEXT NOT NULL,
    path_and_query   TEXT NOT NULL,
    headers          TEXT NOT NULL,  -- JSON: [[name, value], ...]
    body             BLOB NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('QUEUED', 'REPLAYED')),
    response_status  INTEGER,
    response_body    BLOB,
    queued_at        TEXT NOT NULL,
    replayed_at      TEXT
) STRICT;

CREATE INDEX deferred_queued ON deferred (service, state, seq);
