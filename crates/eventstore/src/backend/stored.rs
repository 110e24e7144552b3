//! An event as the store keeps it, its payload and metadata parsed, and its decoding into a
//! recorded or typed event (upcast first where an upcaster applies). Both backends read into it.

use serde_json::{Map, Value};
use uuid::Uuid;

use super::sql::to_u64;
use crate::event::from_micros;
use crate::{Error, Metadata, RecordedEvent, Upcasters};

/// An event as stored, its payload and metadata parsed.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct StoredEvent {
    pub(super) position: i64,
    pub(super) stream_id: String,
    pub(super) version: i64,
    pub(super) event_id: String,
    pub(super) event_type: String,
    pub(super) schema_version: i32,
    pub(super) data: Value,
    pub(super) metadata: Map<String, Value>,
    pub(super) causation_id: Option<String>,
    pub(super) correlation_id: Option<String>,
    pub(super) recorded_at: i64,
}

impl StoredEvent {
    /// The recorded event, its payload brought to the current schema.
    pub(crate) fn into_recorded(self, upcasters: &Upcasters) -> Result<RecordedEvent, Error> {
        let position = to_u64(self.position);
        let stored_version = u32::try_from(self.schema_version).unwrap_or(0);
        let fail = |reason: String| Error::Decode {
            position,
            event_type: self.event_type.clone(),
            schema_version: stored_version,
            reason,
        };
        let id = Uuid::parse_str(&self.event_id).map_err(|e| fail(format!("id: {e}")))?;
        let (schema_version, data) = upcasters
            .upcast(&self.event_type, stored_version, self.data)
            .map_err(fail)?;
        Ok(RecordedEvent {
            position,
            stream_id: self.stream_id,
            version: to_u64(self.version),
            id,
            event_type: self.event_type,
            schema_version,
            data,
            metadata: Metadata {
                causation_id: self.causation_id,
                correlation_id: self.correlation_id,
                extra: self.metadata,
            },
            recorded_at: from_micros(self.recorded_at),
        })
    }

    /// The typed event and where it sits, upcast first if an upcaster applies.
    pub(crate) fn into_typed<T: serde::de::DeserializeOwned>(
        self,
        upcasters: &Upcasters,
    ) -> Result<(T, crate::EventContext), Error> {
        let context = crate::EventContext {
            version: to_u64(self.version),
            recorded_at: from_micros(self.recorded_at),
        };
        let stored_version = u32::try_from(self.schema_version).unwrap_or(0);
        let (position, event_type, schema_version, data) =
            if upcasters.applies(&self.event_type, stored_version) {
                let recorded = self.into_recorded(upcasters)?;
                (
                    recorded.position,
                    recorded.event_type,
                    recorded.schema_version,
                    recorded.data,
                )
            } else {
                (
                    to_u64(self.position),
                    self.event_type,
                    stored_version,
                    self.data,
                )
            };
        match T::deserialize(data) {
            Ok(typed) => Ok((typed, context)),
            Err(e) => Err(Error::Decode {
                position,
                event_type,
                schema_version,
                reason: e.to_string(),
            }),
        }
    }
}
