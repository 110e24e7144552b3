-- Fewer pages written per transition (every page a transaction changes is written to the
-- write-ahead log at its commit, docs/benchmarks.md):
-- * the log moves into the instance's row, a JSON array, written with the row the transition
--   updates anyway, instead of a row in `saga_log`, its index and `sqlite_sequence`;
-- * `saga_commands` and `saga_facts`, looked up only by their keys, become WITHOUT ROWID
--   tables: one B-tree each instead of a table and the index of its key.
-- JSON: [{"at": microseconds, "entry": text}, …], oldest first
ALTER TABLE saga_instances ADD COLUMN log TEXT NOT NULL DEFAULT '[]';
UPDATE saga_instances SET log = (
    SELECT json_group_array(json_object('at', at, 'entry', entry)) FROM (
        SELECT at, entry FROM saga_log WHERE saga_log.saga_id = saga_instances.saga_id ORDER BY seq
    )
);
DROP TABLE saga_log;

CREATE TABLE saga_commands_compact (
    message_id  TEXT PRIMARY KEY NOT NULL,
    saga_id     TEXT NOT NULL REFERENCES saga_instances (saga_id),
    step        INTEGER NOT NULL,
    phase       TEXT NOT NULL CHECK (phase IN ('ACTION', 'COMPENSATION')),
    sent_at     INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
INSERT INTO saga_commands_compact (message_id, saga_id, step, phase, sent_at)
    SELECT message_id, saga_id, step, phase, sent_at FROM saga_commands;
DROP TABLE saga_commands;
ALTER TABLE saga_commands_compact RENAME TO saga_commands;

CREATE TABLE saga_facts_compact (
    saga_id     TEXT NOT NULL,
    fact        TEXT NOT NULL,
    detail      TEXT NOT NULL,                   -- JSON
    observed_at INTEGER NOT NULL,
    PRIMARY KEY (saga_id, fact)
) STRICT, WITHOUT ROWID;
INSERT INTO saga_facts_compact (saga_id, fact, detail, observed_at)
    SELECT saga_id, fact, detail, observed_at FROM saga_facts;
DROP TABLE saga_facts;
ALTER TABLE saga_facts_compact RENAME TO saga_facts;
