-- Choreography: the business deadline of each saga a service watches (the order's place-order
-- sagas), removed when the saga ends; a due row is the saga's timeout.
CREATE TABLE saga_deadlines (
    saga_id  TEXT PRIMARY KEY,
    deadline INTEGER NOT NULL                    -- microseconds since the Unix epoch
) STRICT, WITHOUT ROWID;

CREATE INDEX saga_deadlines_due ON saga_deadlines (deadline);
