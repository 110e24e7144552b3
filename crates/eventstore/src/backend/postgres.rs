//! The PostgreSQL backend's own statements: positions reserved on the head row (which
//! serialises appends and keeps positions in commit order), checkpoints locked for the
//! transaction, events read row by row, and the duplicate id named in the error's detail.

use uuid::Uuid;

use super::sql::{to_i64, to_u64};
use super::stored::StoredEvent;
use crate::{Error, NewEvent};

/// An event row as PostgreSQL returns it (payloads as text).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    position: i64,
    stream_id: String,
    version: i64,
    event_id: String,
    event_type: String,
    schema_version: i32,
    data: String,
    metadata: String,
    causation_id: Option<String>,
    correlation_id: Option<String>,
    recorded_at: i64,
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Self, Error> {
        let fail = |what: &str, e: serde_json::Error| Error::Decode {
            position: to_u64(row.position),
            event_type: row.event_type.clone(),
            schema_version: u32::try_from(row.schema_version).unwrap_or(0),
            reason: format!("{what}: {e}"),
        };
        let data = serde_json::from_str(&row.data).map_err(|e| fail("payload", e))?;
        let metadata = serde_json::from_str(&row.metadata).map_err(|e| fail("metadata", e))?;
        Ok(StoredEvent {
            position: row.position,
            stream_id: row.stream_id,
            version: row.version,
            event_id: row.event_id,
            event_type: row.event_type,
            schema_version: row.schema_version,
            data,
            metadata,
            causation_id: row.causation_id,
            correlation_id: row.correlation_id,
            recorded_at: row.recorded_at,
        })
    }
}

pub(super) fn from_rows(rows: Vec<EventRow>) -> Result<Vec<StoredEvent>, Error> {
    rows.into_iter().map(StoredEvent::try_from).collect()
}

/// Reserves `count` positions on the head row (locked until the transaction ends); returns the
/// first.
pub(super) async fn reserve_positions(
    c: &mut sqlx::PgConnection,
    count: u64,
) -> Result<u64, sqlx::Error> {
    if count == 0 {
        return Ok(0);
    }
    let last: i64 = sqlx::query_scalar(
        "UPDATE eventstore_head SET position = position + $1 WHERE id = 1 RETURNING position",
    )
    .bind(to_i64(count))
    .fetch_one(c)
    .await?;
    Ok(to_u64(last) + 1 - count)
}

/// The event of `events` whose id PostgreSQL names in the unique violation's detail (the
/// transaction is aborted: it cannot be asked).
pub(super) fn duplicate(
    events: &[NewEvent],
    error: &dyn sqlx::error::DatabaseError,
) -> Option<Uuid> {
    error
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|e| e.detail())
        .and_then(|detail| events.iter().find(|e| detail.contains(&e.id.to_string())))
        .map(|e| e.id)
}

/// Takes a projection's checkpoint for the transaction (created at 0 if it has none), its row
/// locked (`FOR UPDATE`) until the transaction ends.
pub(super) async fn lock_checkpoint(
    tx: &mut sqlx::PgConnection,
    name: &str,
    now: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query(create_checkpoint!())
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query_scalar(concat!(checkpoint_position!(), " FOR UPDATE"))
        .bind(name)
        .fetch_one(&mut *tx)
        .await
}
