//! The SQLite backend's own statements: a page of events read as one JSON row through sqlx, the
//! one-statement append after a known version, and the store's SQL on a connection (direct
//! calls inside the caller's transaction, on the process's own connection or an sqlx
//! connection's borrowed handle, `flotilla_sqlite`: no round trip to sqlx's worker per
//! statement).

use flotilla_sqlite::{execute, query_optional, sqlx_error};
use rusqlite::Connection;
use time::OffsetDateTime;

use super::sql::{
    CHECKPOINT_AND_CATEGORY_HEAD, CHECKPOINT_AND_HEAD, Encoded, SAVE_SNAPSHOT, STREAM_VERSION,
    Snapshot, duplicate_or_first, recorded, repeated, to_i64, to_u64,
};
use super::stored::StoredEvent;
use crate::event::{from_micros, micros};
use crate::{Error, ExpectedVersion, NewEvent, RecordedEvent, category};

/// The events of `SELECT * FROM eventstore_events <rest>` as **one** row holding a JSON array
/// of `[position, stream_id, …]` arrays, read through sqlx. The driver's cost per row (a copy
/// of every value and a message from its worker thread, about 7 µs) dominated reads; one row
/// per page and one `serde_json` pass over it read about twice as fast (see
/// docs/benchmarks.md). The array's order is not guaranteed by SQLite: [`from_page`] sorts it
/// by position (an `ORDER BY` inside the aggregate would sort the payloads again in SQLite,
/// which costs more).
macro_rules! page {
    ($rest:literal) => {
        concat!(
            "SELECT json_group_array(json_array(position, stream_id, version, event_id, \
             event_type, schema_version, json(data), json(metadata), causation_id, \
             correlation_id, recorded_at)) \
             FROM (SELECT * FROM eventstore_events ",
            $rest,
            ")"
        )
    };
}
pub(super) use page;

/// The events of a [`page!`].
pub(super) fn from_page(page: Option<String>) -> Result<Vec<StoredEvent>, Error> {
    match page {
        None => Ok(Vec::new()),
        Some(page) => {
            let mut events: Vec<StoredEvent> =
                serde_json::from_str(&page).map_err(|e| Error::Decode {
                    position: 0,
                    event_type: String::new(),
                    schema_version: 0,
                    reason: format!("page of events: {e}"),
                })?;
            events.sort_unstable_by_key(|e| e.position);
            Ok(events)
        }
    }
}

/// The last global position and the stream's version, in one round trip.
pub(super) const HEAD_AND_VERSION: &str = "SELECT COALESCE((SELECT MAX(position) FROM eventstore_events), 0), \
     COALESCE((SELECT version FROM eventstore_events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1), 0)";

/// One event after a known version: inserted only if the stream is at version `$4`, at the
/// position SQLite assigns (the last one plus one: `position` is the `INTEGER PRIMARY KEY`).
const INSERT_AFTER_VERSION: &str = "INSERT INTO eventstore_events (event_id, stream_id, category, \
     version, event_type, schema_version, data, metadata, causation_id, correlation_id, recorded_at) \
     SELECT $1, $2, $3, $4 + 1, $5, $6, $7, $8, $9, $10, $11 \
     WHERE COALESCE((SELECT version FROM eventstore_events WHERE stream_id = $2 \
                     ORDER BY version DESC LIMIT 1), 0) = $4 \
     RETURNING position";

/// One event at a known position (`$12`), its other values as [`INSERT_AFTER_VERSION`] numbers
/// them, `$4` its own version.
const INSERT_AT_POSITION: &str = concat!(
    insert_events!(),
    "VALUES ($12, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
);

/// Whether an event id is stored (`$1`).
const EVENT_STORED: &str = "SELECT position FROM eventstore_events WHERE event_id = $1";

/// One event after a known version (the common append: an aggregate's new event) within an
/// sqlx transaction: one statement, no head read ([`INSERT_AFTER_VERSION`]). If the stream is
/// not at `version`, its actual version comes back in a [`Error::Conflict`].
pub(super) async fn append_one_in(
    c: &mut sqlx::SqliteConnection,
    stream: &str,
    expected: ExpectedVersion,
    version: u64,
    events: Vec<NewEvent>,
) -> Result<Vec<RecordedEvent>, Error> {
    let Some(event) = events.first() else {
        return Ok(Vec::new());
    };
    let now = OffsetDateTime::now_utc();
    let recorded_at = micros(now);
    let now = from_micros(recorded_at);
    let row = Encoded::new(event)?;
    let inserted: Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(INSERT_AFTER_VERSION)
        .bind(row.id.as_str())
        .bind(stream)
        .bind(category(stream))
        .bind(to_i64(version))
        .bind(&event.event_type)
        .bind(row.schema_version)
        .bind(row.data.as_str())
        .bind(row.metadata.as_str())
        .bind(event.metadata.causation_id.as_deref())
        .bind(event.metadata.correlation_id.as_deref())
        .bind(recorded_at)
        .fetch_optional(&mut *c)
        .await;
    let position = match inserted {
        Ok(Some(position)) => position,
        Ok(None) => {
            let actual: i64 = sqlx::query_scalar(STREAM_VERSION)
                .bind(stream)
                .fetch_one(&mut *c)
                .await?;
            return Err(Error::Conflict {
                stream: stream.to_owned(),
                expected,
                actual: to_u64(actual),
            });
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            let found = match repeated(&events) {
                Some(id) => Some(id),
                None => duplicate_in(c, &events).await,
            };
            return Err(Error::DuplicateEvent(duplicate_or_first(&events, found)));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(recorded(events, stream, to_u64(position), version + 1, now))
}

/// The first event of `events` whose id is stored, asked within an sqlx transaction (SQLite
/// rolled back only the failed statement).
pub(super) async fn duplicate_in(
    c: &mut sqlx::SqliteConnection,
    events: &[NewEvent],
) -> Option<uuid::Uuid> {
    for event in events {
        let stored: Option<i64> = sqlx::query_scalar(EVENT_STORED)
            .bind(event.id.to_string())
            .fetch_optional(&mut *c)
            .await
            .ok()
            .flatten();
        if stored.is_some() {
            return Some(event.id);
        }
    }
    None
}

/// Takes a projection's checkpoint for an sqlx transaction (created at 0 if it has none), both
/// statements in one round trip; the `IMMEDIATE` transaction already excludes every other
/// writer.
pub(super) async fn lock_checkpoint_in(
    c: &mut sqlx::SqliteConnection,
    name: &str,
    now: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(concat!(create_checkpoint!(), "; ", checkpoint_position!()))
        .bind(name)
        .bind(now)
        .fetch_one(c)
        .await
}

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
    execute(db, create_checkpoint!(), &[&name, &now]).map_err(failed)?;
    let position: Option<i64> =
        query_optional(db, checkpoint_position!(), &[&name], |row| row.get(0)).map_err(failed)?;
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
            select_events!("WHERE position > $1 ORDER BY position"),
            &[&after],
            limit,
        ),
        Some(category) => rows(
            db,
            select_events!("WHERE category = $1 AND position > $2 ORDER BY position"),
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
        select_events!("WHERE stream_id = $1 AND version >= $2 ORDER BY version"),
        &[&stream, &to_i64(from)],
        usize::MAX,
    )
}

/// The first `max` events a query of `select_events!` finds, row by row (stepping stops
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
        let row = Encoded::new(event)?;
        let position: Option<i64> = query_optional(
            db,
            INSERT_AFTER_VERSION,
            &row.values(&stream, &category, &to_i64(version), &recorded_at),
            |row| row.get(0),
        )
        .map_err(|e| unique_or(db, &events, e, || conflict(version)))?;
        let Some(position) = position else {
            return Err(conflict(stream_version(db, stream)?));
        };
        return Ok(recorded(events, stream, to_u64(position), version + 1, now));
    }
    let (last, actual): (i64, i64) = query_optional(db, HEAD_AND_VERSION, &[&stream], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })
    .map_err(failed)?
    .unwrap_or((0, 0));
    let (first_position, actual) = (to_u64(last) + 1, to_u64(actual));
    if !expected.admits(actual) {
        return Err(conflict(actual));
    }
    for (offset, event) in (0u64..).zip(&events) {
        let row = Encoded::new(event)?;
        let (position, version) = (to_i64(first_position + offset), to_i64(actual + 1 + offset));
        // The plain `INSERT` takes the values of the one after a version, and its position.
        let mut values = row
            .values(&stream, &category, &version, &recorded_at)
            .to_vec();
        values.push(&position);
        execute(db, INSERT_AT_POSITION, &values)
            .map_err(|e| unique_or(db, &events, e, || conflict(actual)))?;
    }
    Ok(recorded(events, stream, first_position, actual + 1, now))
}

impl Encoded<'_> {
    /// The values of an `INSERT` of the event into `stream` (of `category`), numbered as both
    /// `INSERT`s here number them: `$1` its id, `$2` the stream, `$3` the category, `$4`
    /// `version` (the stream's before it for [`INSERT_AFTER_VERSION`], its own for
    /// [`INSERT_AT_POSITION`]), `$5` to `$10` its type, schema version, data, metadata,
    /// causation and correlation ids, `$11` `recorded_at`.
    fn values<'v>(
        &'v self,
        stream: &'v &str,
        category: &'v &str,
        version: &'v i64,
        recorded_at: &'v i64,
    ) -> [&'v dyn rusqlite::ToSql; 11] {
        [
            &self.id,
            stream,
            category,
            version,
            &self.event.event_type,
            &self.schema_version,
            &self.data,
            &self.metadata,
            &self.event.metadata.causation_id,
            &self.event.metadata.correlation_id,
            recorded_at,
        ]
    }
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
    if let Some(repeated) = repeated(events) {
        return Error::DuplicateEvent(repeated);
    }
    // SQLite rolled back only the statement: ask which id is stored.
    let stored = events.iter().find(|event| {
        query_optional(db, EVENT_STORED, &[&event.id.to_string()], |row| {
            row.get::<_, i64>(0)
        })
        .ok()
        .flatten()
        .is_some()
    });
    Error::DuplicateEvent(stored.map_or(first, |e| e.id))
}

/// [`super::save_snapshot`] on SQLite.
pub(crate) fn save_snapshot(db: &Connection, snapshot: &Snapshot) -> Result<(), Error> {
    let (stream, version, state_version, state, now) = snapshot.values()?;
    execute(
        db,
        SAVE_SNAPSHOT,
        &[&stream, &version, &state_version, &state, &now],
    )
    .map_err(failed)?;
    Ok(())
}
