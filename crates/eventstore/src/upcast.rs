//! Upcasting: old schema versions of an event turned into the current one as they are read.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

type Upcast = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// The upcasters of a store, one per event type and schema version it upgrades from.
///
/// Each turns the payload of version `n` into version `n + 1`; a read applies them in a chain
/// until no upcaster is left, so a v1 event written years ago reads as the current version.
///
/// ```
/// use flotilla_eventstore::Upcasters;
/// use serde_json::json;
/// let upcasters = Upcasters::default().with("Deposited", 1, |mut data| {
///     // v1 stored whole euros in `amount`; v2 stores cents.
///     let euros = data["amount"].as_i64().ok_or("amount is not a number")?;
///     data.as_object_mut().ok_or("not an object")?.remove("amount");
///     data["cents"] = json!(euros * 100);
///     Ok(data)
/// });
/// let (version, data) = upcasters.upcast("Deposited", 1, json!({ "amount": 5 })).unwrap();
/// assert_eq!((version, data), (2, json!({ "cents": 500 })));
/// // Current versions and other types pass through.
/// assert_eq!(upcasters.upcast("Deposited", 2, json!({})).unwrap().0, 2);
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Arc<Upcast>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<_> = self.steps.keys().collect();
        steps.sort();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

impl Upcasters {
    /// Adds the step that turns `event_type` version `from` into version `from + 1`.
    #[must_use]
    pub fn with(
        mut self,
        event_type: impl Into<String>,
        from: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.insert((event_type.into(), from), Arc::new(step));
        self
    }

    /// Merges another set of upcasters into this one.
    ///
    /// ```
    /// use flotilla_eventstore::Upcasters;
    /// let a = Upcasters::default().with("A", 1, Ok);
    /// let both = a.merge(Upcasters::default().with("B", 1, Ok));
    /// assert_eq!(both.upcast("B", 1, serde_json::json!({})).unwrap().0, 2);
    /// ```
    #[must_use]
    pub fn merge(mut self, other: Upcasters) -> Self {
        self.steps.extend(other.steps);
        self
    }

    /// Whether an event of `event_type` at schema `version` would be changed by a read.
    ///
    /// ```
    /// use flotilla_eventstore::Upcasters;
    /// let upcasters = Upcasters::default().with("Deposited", 1, Ok);
    /// assert!(upcasters.applies("Deposited", 1));
    /// assert!(!upcasters.applies("Deposited", 2));
    /// ```
    pub fn applies(&self, event_type: &str, version: u32) -> bool {
        !self.steps.is_empty() && self.steps.contains_key(&(event_type.to_owned(), version))
    }

    /// Brings `data` of `event_type` from schema `version` to the newest one there is an
    /// upcaster chain to: `(new version, new data)`.
    pub fn upcast(
        &self,
        event_type: &str,
        mut version: u32,
        mut data: Value,
    ) -> Result<(u32, Value), String> {
        if self.steps.is_empty() {
            return Ok((version, data));
        }
        let mut key = (event_type.to_owned(), version);
        while let Some(step) = self.steps.get(&key) {
            data = step(data).map_err(|e| format!("upcasting from v{version}: {e}"))?;
            version += 1;
            key.1 = version;
        }
        Ok((version, data))
    }
}
