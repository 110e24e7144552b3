//! Events as written and as read: the envelope.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// What an append expects of the stream, checked in the append's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet (hold no event).
    NoStream,
    /// The stream must be at exactly this version (its number of events).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies the expectation.
    ///
    /// ```
    /// use flotilla_eventstore::ExpectedVersion;
    /// assert!(ExpectedVersion::Any.admits(7));
    /// assert!(ExpectedVersion::NoStream.admits(0));
    /// assert!(!ExpectedVersion::NoStream.admits(1));
    /// assert!(ExpectedVersion::Exact(3).admits(3));
    /// assert!(!ExpectedVersion::Exact(3).admits(4));
    /// ```
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(version) => actual == version,
        }
    }
}

/// Who caused an event and which flow it belongs to, plus free-form fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The id of the message or event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The id shared by every message and event of one business flow (an order's saga).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Anything else (a `traceparent`, the acting user, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl Metadata {
    /// Metadata that carries a correlation id.
    ///
    /// ```
    /// let metadata = flotilla_eventstore::Metadata::correlated("order-42");
    /// assert_eq!(metadata.correlation_id.as_deref(), Some("order-42"));
    /// ```
    pub fn correlated(correlation_id: impl Into<String>) -> Self {
        Self {
            correlation_id: Some(correlation_id.into()),
            ..Self::default()
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// A unique id (UUIDv7 by default); appending an id the store already holds fails.
    pub id: Uuid,
    /// The event's type, such as `OrderPlaced`.
    pub event_type: String,
    /// The version of the type's schema `data` follows (1 for a new type).
    pub schema_version: u32,
    /// The payload.
    pub data: Value,
    /// Causation, correlation and the rest.
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event of schema version 1 with a fresh id and no metadata.
    ///
    /// ```
    /// use flotilla_eventstore::NewEvent;
    /// let event = NewEvent::new("Deposited", serde_json::json!({ "cents": 100 }));
    /// assert_eq!((event.event_type.as_str(), event.schema_version), ("Deposited", 1));
    /// ```
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data,
            metadata: Metadata::default(),
        }
    }

    /// The same event with another schema version.
    ///
    /// ```
    /// use flotilla_eventstore::NewEvent;
    /// let event = NewEvent::new("OrderPlaced", serde_json::json!({})).schema(2);
    /// assert_eq!(event.schema_version, 2);
    /// ```
    pub fn schema(mut self, schema_version: u32) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// The same event with this metadata.
    ///
    /// ```
    /// use flotilla_eventstore::{Metadata, NewEvent};
    /// let event = NewEvent::new("Deposited", serde_json::json!({}))
    ///     .with_metadata(Metadata::correlated("flow-1"));
    /// assert_eq!(event.metadata.correlation_id.as_deref(), Some("flow-1"));
    /// ```
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// An event as stored, with its place in its stream and in the global log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Position in the global log (from 1, no gaps, in commit order).
    pub position: u64,
    /// The stream it belongs to.
    pub stream_id: String,
    /// Its version in the stream (from 1, no gaps).
    pub version: u64,
    /// Its id.
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The schema version of `data` as read (after upcasting: the current one).
    pub schema_version: u32,
    /// The payload.
    pub data: Value,
    /// Causation, correlation and the rest.
    pub metadata: Metadata,
    /// When it was appended (UTC, microsecond precision).
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
}

/// The category of a stream: its id up to the first `-` (`order-42` is in `order`).
///
/// ```
/// assert_eq!(flotilla_eventstore::category("order-0190f1"), "order");
/// assert_eq!(flotilla_eventstore::category("ledger"), "ledger");
/// ```
pub fn category(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// Microseconds since the Unix epoch, as stored.
pub(crate) use flotilla_kit::clock::micros;

/// The instant `micros` microseconds after the Unix epoch.
pub(crate) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Where an event sits, for aggregates that keep it (an `updated_at`, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventContext {
    /// The event's version in its stream.
    pub version: u64,
    /// When it was appended.
    pub recorded_at: OffsetDateTime,
}
