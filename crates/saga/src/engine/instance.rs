//! A saga instance as stored (its row, the command a reply answers) and as loaded (with what a
//! transition writes: its log entries, the commands it sent, its outgoing messages).

use flotilla_messaging::outbox;
use flotilla_sqlite::sqlx_error;

use super::definition::Status;
use crate::Error;

/// A command sent and the instance it belongs to.
pub(super) struct SentRow {
    pub(super) sent_step: i64,
    pub(super) phase: String,
    pub(super) row: Row,
}

/// An instance as stored.
pub(super) struct Row {
    pub(super) saga_id: String,
    pub(super) data: String,
    pub(super) status: String,
    pub(super) step: i64,
    pub(super) attempt: i64,
    pub(super) reason: Option<String>,
    pub(super) done: i64,
}

/// A saga instance as loaded.
pub(super) struct Instance<D> {
    pub(super) saga_id: String,
    pub(super) data: D,
    pub(super) status: Status,
    pub(super) step: usize,
    pub(super) attempt: u32,
    pub(super) reason: Option<String>,
    /// The steps of a concurrent tail that succeeded, one bit each ([`Saga::concurrent_tail`](crate::Saga::concurrent_tail)).
    pub(super) done: u64,
    /// Log entries of this transition, written with the instance (`Orchestrator::write`).
    pub(super) journal: Vec<String>,
    /// The commands this transition sent, recorded with the instance.
    pub(super) sent: Vec<SentCommand>,
    /// Messages of this transition (its command, the saga's own), written to the outbox with
    /// the instance, in this order.
    pub(super) outgoing: Vec<outbox::Staged>,
}

/// A command written to the outbox, to be recorded in `saga_commands`.
pub(super) struct SentCommand {
    pub(super) message_id: String,
    pub(super) step: i64,
    pub(super) phase: &'static str,
}

impl<D> Instance<D> {
    /// Adds `entry` to the instance's log.
    pub(super) fn note(&mut self, entry: impl Into<String>) {
        self.journal.push(entry.into());
    }
}

/// A direct SQLite call's error as the saga's.
pub(super) fn failed(error: rusqlite::Error) -> Error {
    Error::Database(sqlx_error(error))
}

/// An instance row: `saga_id, data, status, step, attempt, reason, done` from column `first`
/// on.
pub(super) fn row_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Row> {
    Ok(Row {
        saga_id: row.get(first)?,
        data: row.get(first + 1)?,
        status: row.get(first + 2)?,
        step: row.get(first + 3)?,
        attempt: row.get(first + 4)?,
        reason: row.get(first + 5)?,
        done: row.get(first + 6)?,
    })
}
