//! The discovery section of the settings: where the registry is and how long a call to another
//! process may take; and [`InstanceConfig`], what a registered process reads to serve.
//!
//! The lease's keys (`heartbeat_ms`, `ttl_ms`) belong to the registry's section, which enforces
//! them and checks the rule between them; a registering process receives their values as a
//! [`Lease`]. Loading the settings is the binary's job.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_identity::IdentityConfig;
use flotilla_kit::ServerSettings;
use flotilla_kit::settings::{Invalid, Section};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::Discovery;

/// Flat keys at the top of the settings (`registry_url`, `FLOTILLA_REQUEST_TIMEOUT_MS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoverySettings {
    /// Base URL of the registry (`http://127.0.0.1:7070`); `None` runs without registering
    /// and without finding peers.
    pub registry_url: Option<String>,
    /// Deadline of one request through the gateway and of one service-to-service call, in
    /// milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            registry_url: None,
            request_timeout_ms: 10_000,
        }
    }
}

impl Section for DiscoverySettings {
    /// Checks the section's rules.
    fn validate(&self) -> Result<(), Invalid> {
        if self.request_timeout_ms == 0 {
            return Err(Invalid::new("request_timeout_ms", "must be positive"));
        }
        if let Some(url) = &self.registry_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Invalid::new(
                "registry_url",
                "must be an http:// or https:// URL",
            ));
        }
        Ok(())
    }
}

impl DiscoverySettings {
    /// The deadline of one call.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// A discovery client watching the registry until `shutdown`, or, without a registry, one
    /// that knows no instance.
    pub fn discovery(&self, shutdown: &CancellationToken) -> Discovery {
        match &self.registry_url {
            Some(registry) => Discovery::new(registry, self.request_timeout(), shutdown.clone()),
            None => Discovery::fixed(HashMap::new(), self.request_timeout()),
        }
    }
}

/// The lease a registering instance asks for: the values of the registry section's
/// `heartbeat_ms` and `ttl_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Interval between two heartbeats.
    pub heartbeat: Duration,
    /// Time after which the registry evicts the instance if no heartbeat came.
    pub ttl: Duration,
}

impl Lease {
    /// The lease of `heartbeat_ms` and `ttl_ms`.
    pub fn from_millis(heartbeat_ms: u64, ttl_ms: u64) -> Self {
        Self {
            heartbeat: Duration::from_millis(heartbeat_ms),
            ttl: Duration::from_millis(ttl_ms),
        }
    }
}

impl Default for Lease {
    /// The registry section's defaults: a heartbeat every 500 ms, evicted after 1.5 s.
    fn default() -> Self {
        Self::from_millis(500, 1_500)
    }
}

/// What a registered process reads to serve ([`crate::serve`]): its server section, the
/// discovery section and the registry's lease.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceConfig {
    /// Where it listens, how it stops, its request limits.
    pub server: ServerSettings,
    /// The registry it registers with.
    pub discovery: DiscoverySettings,
    /// The lease it asks for.
    pub lease: Lease,
    /// The identity provider: the verifier of its callers' tokens, and its own client
    /// credentials for the registry and the services it calls.
    pub identity: IdentityConfig,
}

impl InstanceConfig {
    /// A discovery client ([`DiscoverySettings::discovery`]) whose calls carry the process's
    /// own token when the request has none ([`Discovery::with_token`]).
    pub fn discovery(&self, shutdown: &CancellationToken) -> Discovery {
        self.discovery
            .discovery(shutdown)
            .with_token(self.identity.token_source())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_url_must_be_http() {
        assert_eq!(DiscoverySettings::key_broken_by(|_| {}), None);
        let no_scheme =
            DiscoverySettings::key_broken_by(|s| s.registry_url = Some("127.0.0.1:7070".into()));
        assert_eq!(no_scheme, Some("registry_url"));
        let no_time = DiscoverySettings::key_broken_by(|s| s.request_timeout_ms = 0);
        assert_eq!(no_time, Some("request_timeout_ms"));
    }
}
