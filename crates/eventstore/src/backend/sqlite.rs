//! The SQLite backend on a connection: the store's SQL run with direct calls inside the caller's
//! transaction (on the process's own connection, or an sqlx connection's borrowed handle,
//! `flotilla_sqlite`), with no round trip to sqlx's worker per statement.

use flotilla_sqlite::{execute, query_optional, sqlx_error};
use rusqlite::Connection;
use time::OffsetDateTime;

use super::{
    CHECKPOINT_AND_CATEGORY_HEAD, CHECKPOINT_AND_HEAD, SQLITE_HEAD_AND_VERSION, STREAM_VERSION,
    StoredEvent, recorded, to_i64, to_u64,
};
use crate::event::{from_micros, micros};
use crate::{Error, ExpectedVersion, NewEvent, RecordedEvent, category};

fn failed(error: rusqlite::Error) -> Error {
    Error::Database(sqlx_error(error))
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    error.sqlite_error().is_some_and(|failure| {
        matches!(
            failure.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    })
}

/// A projection's checkpoint and the last position of its category (of the whole log if
/// `None`): [`super::checkpoint_and_head`] on a borrowed handle.
pub(crate) fn checkpoint_and_head(
    db: &Connection,
    name: &str,
    category: Option<&str>,
) -> Result<(u64, u64), Error> {
    let row = |row: &rusqlite::Row<'_>| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?));
    let found = match category {
        Some(category) => {
            query_optional(db, CHECKPOINT_AND_CATEGORY_HEAD, &[&name, &category], row)
        }
        None => query_optional(db, CHECKPOINT_AND_HEAD, &[&name], row),
    }
    .map_err(failed)?;
    let (checkpoint, head) = found.unwrap_or((0, 0));
    Ok((to_u64(checkpoint), to_u64(head)))
}

/// A projection's checkpoint, created at 0 if it has none, within the caller's write
/// transaction (which excludes every other writer): [`super::lock_checkpoint`] on SQLite.
pub(crate) fn lock_checkpoint(db: &Connection, name: &str) -> Result<u64, Error> {
    let now = micros(OffsetDateTime::now_utc());
    execute(
        db,
        "INSERT INTO eventstore_checkpoints (name, position, updated_at) VALUES ($1, 0, $2) \
         ON CONFLICT (name) DO NOTHING",
        &[&name, &now],
    )
    .map_err(failed)?;
    let position: Option<i64> = query_optional(
        db,
        "SELECT position FROM eventstore_checkpoints WHERE name = $1",
        &[&name],
        |row| row.get(0),
    )
    .map_err(failed)?;
    Ok(position.map_or(0, to_u64))
}

/// Sets a checkpoint taken with [`lock_checkpoint`].
pub(crate) fn set_checkpoint(db: &Connection, name: &str, to: u64) -> Result<(), Error> {
    let now = micros(OffsetDateTime::now_utc());
    execute(
        db,
        "UPDATE eventstore_checkpoints SET position = $2, updated_at = $3 WHERE name = $1",
        &[&name, &to_i64(to), &now],
    )
    .map_err(failed)?;
    Ok(())
}

/// A page of the global log (of one category or all) after `after`: [`super::read_all`] on
/// a borrowed handle.
pub(crate) fn read_all(
    db: &Connection,
    after: u64,
    limit: usize,
    category: Option<&str>,
) -> Result<Vec<StoredEvent>, Error> {
    // No `LIMIT` (a bound one would make SQLite prepare the statement again each time):
    // the key or the category's index gives the order, and `rows` stops at `limit`.
    let after = to_i64(after);
    match category {
        None => rows(
            db,
            concat!(direct_rows!(), "WHERE position > $1 ORDER BY position"),
            &[&after],
            limit,
        ),
        Some(category) => rows(
            db,
            concat!(
                direct_rows!(),
                "WHERE category = $1 AND position > $2 ORDER BY position"
            ),
            &[&category, &after],
            limit,
        ),
    }
}

/// The events of `stream` from version `from` on.
pub(crate) fn read_stream(
    db: &Connection,
    stream: &str,
    from: u64,
) -> Result<Vec<StoredEvent>, Error> {
    rows(
        db,
        concat!(
            direct_rows!(),
            "WHERE stream_id = $1 AND version >= $2 ORDER BY version"
        ),
        &[&stream, &to_i64(from)],
        usize::MAX,
    )
}

/// The first `max` events a query of [`direct_rows!`] finds, row by row (stepping stops
/// there): SQLite hands over each row's columns and only the payloads are parsed (the sqlx
/// path has SQLite build one JSON page instead, one row through sqlx's worker thread rather
/// than one per event; here rows cost no round trip, and building and parsing the page
/// would be work for nothing).
fn rows(
    db: &Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
    max: usize,
) -> Result<Vec<StoredEvent>, Error> {
    let mut statement = db.prepare_cached(sql).map_err(failed)?;
    flotilla_sqlite::bind_numbered(&mut statement, values).map_err(failed)?;
    let mut found = statement.raw_query();
    let mut events = Vec::new();
    while events.len() < max
        && let Some(row) = found.next().map_err(failed)?
    {
        let position: i64 = row.get(0).map_err(failed)?;
        let event_type: String = row.get(4).map_err(failed)?;
        let schema_version: i32 = row.get(5).map_err(failed)?;
        let decode = |what: &str, e: serde_json::Error| Error::Decode {
            position: to_u64(position),
            event_type: event_type.clone(),
            schema_version: u32::try_from(schema_version).unwrap_or(0),
            reason: format!("{what}: {e}"),
        };
        let data = serde_json::from_slice(text(row, 6)?).map_err(|e| decode("data", e))?;
        let metadata = serde_json::from_slice(text(row, 7)?).map_err(|e| decode("metadata", e))?;
        events.push(StoredEvent {
            position,
            stream_id: row.get(1).map_err(failed)?,
            version: row.get(2).map_err(failed)?,
            event_id: row.get(3).map_err(failed)?,
            event_type,
            schema_version,
            data,
            metadata,
            causation_id: row.get(8).map_err(failed)?,
            correlation_id: row.get(9).map_err(failed)?,
            recorded_at: row.get(10).map_err(failed)?,
        });
    }
    Ok(events)
}

/// Column `column` of `row` as the bytes of its text.
fn text<'r>(row: &'r rusqlite::Row<'_>, column: usize) -> Result<&'r [u8], Error> {
    let value = row.get_ref(column).map_err(failed)?;
    value.as_bytes().map_err(|e| failed(e.into()))
}

/// [`super::append`] on SQLite: one statement for a single event after a known version, else
/// the head and the version in one read and one `INSERT` per event.
pub(crate) fn append(
    db: &Connection,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<Vec<RecordedEvent>, Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let known = match expected {
        ExpectedVersion::Exact(version) => Some(version),
        ExpectedVersion::NoStream => Some(0),
        ExpectedVersion::Any => None,
    };
    let now = OffsetDateTime::now_utc();
    let recorded_at = micros(now);
    let now = from_micros(recorded_at);
    let category = category(stream);
    let conflict = |actual: u64| Error::Conflict {
        stream: stream.to_owned(),
        expected,
        actual,
    };
    if let (Some(version), [event]) = (known, events.as_slice()) {
        let [data, metadata] = encoded(event)?;
        let position: Option<i64> = query_optional(
            db,
            "INSERT INTO eventstore_events (event_id, stream_id, category, version, event_type, \
             schema_version, data, metadata, causation_id, correlation_id, recorded_at) \
             SELECT $1, $2, $3, $4 + 1, $5, $6, $7, $8, $9, $10, $11 \
             WHERE COALESCE((SELECT version FROM eventstore_events WHERE stream_id = $2 \
                             ORDER BY version DESC LIMIT 1), 0) = $4 \
             RETURNING position",
            &[
                &event.id.to_string(),
                &stream,
                &category,
                &to_i64(version),
                &event.event_type,
                &schema_version(event)?,
                &data,
                &metadata,
                &event.metadata.causation_id,
                &event.metadata.correlation_id,
                &recorded_at,
            ],
            |row| row.get(0),
        )
        .map_err(|e| unique_or(db, &events, e, || conflict(version)))?;
        let Some(position) = position else {
            return Err(conflict(stream_version(db, stream)?));
        };
        return Ok(recorded(events, stream, to_u64(position), version + 1, now));
    }
    let (last, actual): (i64, i64) =
        query_optional(db, SQLITE_HEAD_AND_VERSION, &[&stream], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .map_err(failed)?
        .unwrap_or((0, 0));
    let (first_position, actual) = (to_u64(last) + 1, to_u64(actual));
    if !expected.admits(actual) {
        return Err(conflict(actual));
    }
    for (offset, event) in (0u64..).zip(&events) {
        let [data, metadata] = encoded(event)?;
        execute(
            db,
            "INSERT INTO eventstore_events (position, event_id, stream_id, category, version, \
             event_type, schema_version, data, metadata, causation_id, correlation_id, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &to_i64(first_position + offset),
                &event.id.to_string(),
                &stream,
                &category,
                &to_i64(actual + 1 + offset),
                &event.event_type,
                &schema_version(event)?,
                &data,
                &metadata,
                &event.metadata.causation_id,
                &event.metadata.correlation_id,
                &recorded_at,
            ],
        )
        .map_err(|e| unique_or(db, &events, e, || conflict(actual)))?;
    }
    Ok(recorded(events, stream, first_position, actual + 1, now))
}

fn encoded(event: &NewEvent) -> Result<[String; 2], Error> {
    let encode = |e: serde_json::Error| Error::Encode(e.to_string());
    Ok([
        serde_json::to_string(&event.data).map_err(encode)?,
        serde_json::to_string(&event.metadata.extra).map_err(encode)?,
    ])
}

fn schema_version(event: &NewEvent) -> Result<i32, Error> {
    i32::try_from(event.schema_version)
        .map_err(|_| Error::Encode("schema version out of range".into()))
}

fn stream_version(db: &Connection, stream: &str) -> Result<u64, Error> {
    let actual: Option<i64> =
        query_optional(db, STREAM_VERSION, &[&stream], |row| row.get(0)).map_err(failed)?;
    Ok(to_u64(actual.unwrap_or(0)))
}

/// A unique violation of an `INSERT`: an event id stored already, named in
/// [`Error::DuplicateEvent`], or a version taken (`conflict`); any other error as it is.
fn unique_or(
    db: &Connection,
    events: &[NewEvent],
    error: rusqlite::Error,
    conflict: impl FnOnce() -> Error,
) -> Error {
    if !is_unique_violation(&error) {
        return failed(error);
    }
    if !error.to_string().contains("event_id") {
        return conflict();
    }
    let first = events.first().map_or(uuid::Uuid::nil(), |e| e.id);
    let mut seen = std::collections::HashSet::new();
    if let Some(repeated) = events.iter().find(|e| !seen.insert(e.id)) {
        return Error::DuplicateEvent(repeated.id);
    }
    // SQLite rolled back only the statement: ask which id is stored.
    let stored = events.iter().find(|event| {
        query_optional(
            db,
            "SELECT position FROM eventstore_events WHERE event_id = $1",
            &[&event.id.to_string()],
            |row| row.get::<_, i64>(0),
        )
        .ok()
        .flatten()
        .is_some()
    });
    Error::DuplicateEvent(stored.map_or(first, |e| e.id))
}

/// [`super::save_snapshot`] on SQLite.
pub(crate) fn save_snapshot(
    db: &Connection,
    stream: &str,
    version: u64,
    state_version: u32,
    state: &str,
) -> Result<(), Error> {
    let state_version = i32::try_from(state_version)
        .map_err(|_| Error::Encode("state version out of range".into()))?;
    execute(
        db,
        "INSERT INTO eventstore_snapshots (stream_id, version, state_version, state, taken_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
         state_version = excluded.state_version, state = excluded.state, taken_at = excluded.taken_at",
        &[
            &stream,
            &to_i64(version),
            &state_version,
            &state,
            &micros(OffsetDateTime::now_utc()),
        ],
    )
    .map_err(failed)?;
    Ok(())
}
