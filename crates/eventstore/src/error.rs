//! What can go wrong in the event store.

use crate::event::ExpectedVersion;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream was not at the expected version: another writer got there first.
    #[error("stream `{stream}` is at version {actual}, expected {expected:?}")]
    Conflict {
        /// The stream.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append looked.
        actual: u64,
    },
    /// An event with this id is already stored.
    #[error("an event with id {0} is already stored")]
    DuplicateEvent(uuid::Uuid),
    /// A stored event or snapshot could not be turned into what the reader asked for.
    #[error(
        "event at position {position} ({event_type} v{schema_version}) cannot be read: {reason}"
    )]
    Decode {
        /// Its position in the global log.
        position: u64,
        /// Its type.
        event_type: String,
        /// Its stored schema version.
        schema_version: u32,
        /// Why.
        reason: String,
    },
    /// An event could not be encoded (its payload is not a JSON object with a `type`, ...).
    #[error("event cannot be encoded: {0}")]
    Encode(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The schema could not be set up.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// [`EventStore::connect`](crate::EventStore::connect) was given a URL of neither database.
    #[error("unsupported database URL `{0}`: use sqlite:… or postgres://…")]
    UnsupportedUrl(String),
}
