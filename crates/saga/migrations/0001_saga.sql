-- Saga instances, persisted in the orchestrator's own database at every step, in the same
-- transaction as the commands they send (through the messaging outbox).
CREATE TABLE saga_instances (
    saga_id       TEXT PRIMARY KEY NOT NULL,
    saga_type     TEXT NOT NULL,
    data          TEXT NOT NULL,                 -- JSON: the saga's own data
    status        TEXT NOT NULL CHECK (status IN ('RUNNING', 'COMPENSATING', 'COMPLETED', 'FAILED')),
    step          INTEGER NOT NULL,              -- the step being run or compensated
    attempt       INTEGER NOT NULL,              -- attempts of that step so far
    deadline      INTEGER NOT NULL,              -- microseconds; past it, the step is retried
    reason        TEXT,                          -- why it is compensating / failed
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX saga_instances_unfinished ON saga_instances (deadline) WHERE status IN ('RUNNING', 'COMPENSATING');

-- Every command sent, so that a reply is matched to the step and phase it answers (replies to
-- an earlier attempt still count; replies to an earlier step are stale and ignored).
CREATE TABLE saga_commands (
    message_id  TEXT PRIMARY KEY NOT NULL,
    saga_id     TEXT NOT NULL REFERENCES saga_instances (saga_id),
    step        INTEGER NOT NULL,
    phase       TEXT NOT NULL CHECK (phase IN ('ACTION', 'COMPENSATION')),
    sent_at     INTEGER NOT NULL
) STRICT;

-- What happened, in order, for timelines and the console.
CREATE TABLE saga_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id   TEXT NOT NULL,
    entry     TEXT NOT NULL,
    at        INTEGER NOT NULL
) STRICT;
CREATE INDEX saga_log_by_saga ON saga_log (saga_id, seq);
