//! The order service's section of the settings (flat keys: `saga_style`, `catalog_cache_ms`,
//! `choreography_deadline_ms`) and [`Config`], everything [`crate::run`] reads. Loading the
//! settings is the binary's job.

use flotilla_kit::settings::{Invalid, Section};
use flotilla_messaging::ServiceConfig;
use flotilla_resilience::settings::ResilienceSettings;
use flotilla_saga::SagaStyle;
use serde::{Deserialize, Serialize};

/// Keys only the order service reads. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderSettings {
    /// How sagas run by default: `FLOTILLA_SAGA_STYLE=choreography`. A request may choose with
    /// the header `X-Saga-Style`.
    pub saga_style: SagaStyle,
    /// How long the service prices a SKU from the catalog price it last read from the
    /// inventory, instead of asking again (cache-aside; 0 asks for every order). A price changed
    /// in the catalog reaches new orders within this time.
    pub catalog_cache_ms: u64,
    /// How long a choreographed order has to end before the service expires it
    /// (`OrderExpired`: shipping refuses it unless its shipment is scheduled, and the others undo
    /// their work). The orchestrated saga's timeouts are per step (5 s, 3 attempts).
    pub choreography_deadline_ms: u64,
}

impl Default for OrderSettings {
    fn default() -> Self {
        Self {
            saga_style: SagaStyle::Orchestration,
            catalog_cache_ms: 10_000,
            choreography_deadline_ms: 30_000,
        }
    }
}

impl Section for OrderSettings {
    /// Checks the section's rules.
    fn validate(&self) -> Result<(), Invalid> {
        if self.choreography_deadline_ms == 0 {
            return Err(Invalid::new("choreography_deadline_ms", "must be positive"));
        }
        Ok(())
    }
}

/// What the order service reads: how it serves and exchanges messages, the breaker and retry
/// policy of its calls to the inventory (prices), and its own keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Server, discovery, lease and messaging.
    pub service: ServiceConfig,
    /// The breaker and retry policy of its internal client.
    pub resilience: ResilienceSettings,
    /// Saga style, price cache, choreography deadline.
    pub order: OrderSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choreography_deadline_must_leave_some_time() {
        assert_eq!(OrderSettings::key_broken_by(|_| {}), None);
        let no_time = OrderSettings::key_broken_by(|s| s.choreography_deadline_ms = 0);
        assert_eq!(no_time, Some("choreography_deadline_ms"));
    }
}
