//! The registry section of the settings: the lease of a registered instance (how often it
//! heart-beats, how long until it is evicted) and the registry's active probes.
//!
//! The registry owns the lease's keys because it enforces them; a registering process receives
//! the same two values (the discovery crate's `Lease`, filled by the binary), so that the rule
//! between them is checked in one place. Loading the settings is the binary's job.

use flotilla_kit::settings::{Invalid, Section};
use serde::{Deserialize, Serialize};

/// Flat keys at the top of the settings (`ttl_ms`, `FLOTILLA_TTL_MS`). Durations are in
/// milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistrySettings {
    /// Interval between two heartbeats of a registered instance; the registry's sweeper runs
    /// five times as often (between 10 and 100 ms).
    pub heartbeat_ms: u64,
    /// Time after which the registry evicts an instance that stopped heart-beating: at least
    /// twice `heartbeat_ms`.
    pub ttl_ms: u64,
    /// Interval between two active `/readyz` probes of each instance by the registry.
    pub probe_interval_ms: u64,
    /// Timeout of one active probe.
    pub probe_timeout_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 500,
            ttl_ms: 1_500,
            probe_interval_ms: 500,
            probe_timeout_ms: 400,
        }
    }
}

impl Section for RegistrySettings {
    /// Checks the section's rules.
    fn validate(&self) -> Result<(), Invalid> {
        if self.heartbeat_ms == 0 {
            return Err(Invalid::new("heartbeat_ms", "must be positive"));
        }
        if self.ttl_ms < 2 * self.heartbeat_ms {
            return Err(Invalid::new(
                "ttl_ms",
                "must be at least twice heartbeat_ms, or one late heartbeat evicts a live instance",
            ));
        }
        if self.probe_interval_ms == 0 {
            return Err(Invalid::new("probe_interval_ms", "must be positive"));
        }
        if self.probe_timeout_ms == 0 {
            return Err(Invalid::new("probe_timeout_ms", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_shorter_than_two_heartbeats_is_refused() {
        assert_eq!(RegistrySettings::key_broken_by(|_| {}), None);
        let too_short = RegistrySettings::key_broken_by(|s| s.ttl_ms = 10);
        assert_eq!(too_short, Some("ttl_ms"));
        let no_heartbeat = RegistrySettings::key_broken_by(|s| s.heartbeat_ms = 0);
        assert_eq!(no_heartbeat, Some("heartbeat_ms"));
        let no_probe = RegistrySettings::key_broken_by(|s| s.probe_interval_ms = 0);
        assert_eq!(no_probe, Some("probe_interval_ms"));
        let no_probe_time = RegistrySettings::key_broken_by(|s| s.probe_timeout_ms = 0);
        assert_eq!(no_probe_time, Some("probe_timeout_ms"));
    }
}
