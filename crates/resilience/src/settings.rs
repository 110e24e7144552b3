//! The resilience section of a process's settings: the circuit breaker and the retry policy put
//! in front of each upstream service (by the gateway, per upstream) and of internal clients.
//!
//! It owns the two nested keys `breaker` and `retry` and their validation; it does not load
//! them (the binary does) nor build the primitives (the gateway and the clients do).

use serde::{Deserialize, Serialize};

use crate::breaker::{BreakerConfig, ConfigError};
use crate::retry::RetryConfig;

/// The `breaker` and `retry` tables of the settings. Nested keys in the environment use `__`:
/// `FLOTILLA_BREAKER__WAIT_IN_OPEN_MS=1000`, `FLOTILLA_RETRY__MAX_ATTEMPTS=2`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResilienceSettings {
    /// The circuit breaker put in front of each upstream service (by the gateway) and each
    /// internal client.
    pub breaker: BreakerConfig,
    /// The retry policy of the gateway (per upstream) and of internal clients. Only safe
    /// requests and retryable failures are retried.
    pub retry: RetryConfig,
}

/// A resilience setting that breaks a rule: `key` is the table (`breaker` or `retry`), the
/// source names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid setting `{key}`: {source}")]
pub struct InvalidSetting {
    /// The table: `breaker` or `retry`.
    pub key: &'static str,
    /// The rule broken, naming the field.
    pub source: ConfigError,
}

impl ResilienceSettings {
    /// Checks both tables' rules.
    ///
    /// ```
    /// use flotilla_resilience::settings::ResilienceSettings;
    /// let mut settings = ResilienceSettings::default();
    /// assert!(settings.validate().is_ok());
    /// settings.retry.max_attempts = 0;
    /// assert!(settings.validate().unwrap_err().to_string().starts_with("invalid setting `retry`"));
    /// ```
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.breaker.validate().map_err(|source| InvalidSetting {
            key: "breaker",
            source,
        })?;
        self.retry.validate().map_err(|source| InvalidSetting {
            key: "retry",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_breaker_names_its_table_and_field() {
        let mut settings = ResilienceSettings::default();
        settings.breaker.success_threshold = 0;
        let error = settings.validate().expect_err("no success can close it");
        assert_eq!(error.key, "breaker");
        assert!(error.to_string().contains("success_threshold"), "{error}");
    }
}
