//! The whole settings of a process, assembled from the sections their crates own, loaded in
//! layers (defaults → TOML file → `FLOTILLA_*` environment with `__` nesting → flags) and
//! validated once, section by section; then cut into the small configuration each component's
//! entry point takes.
//!
//! | section | keys | owner |
//! | --- | --- | --- |
//! | server | `listen`, `admin_listen`, `advertise_host`, `data_dir`, `log_format`, `log_level`, `max_body_bytes`, `header_read_timeout_ms`, `idle_timeout_ms`, `max_headers`, `max_header_bytes`, `max_uri_bytes`, `shutdown_grace_ms`, `supervised`, `fault_injection` | `flotilla_kit::settings::ServerSettings` |
//! | discovery | `registry_url`, `request_timeout_ms` | `flotilla_discovery::DiscoverySettings` |
//! | registry | `heartbeat_ms`, `ttl_ms`, `probe_interval_ms`, `probe_timeout_ms` | `flotilla_registry::RegistrySettings` |
//! | resilience | `breaker.*`, `retry.*` | `flotilla_resilience::settings::ResilienceSettings` |
//! | gateway | `queue_for_later`, `admin_api`, `routes_file`, `access_log`, `access_log_sample`, `workers`, `rate_limit.*` (`redis_url`, `on_redis_down`, `redis_timeout_ms`, `redis_retry_ms`, `key_prefix`) | `flotilla_gateway::GatewaySettings` |
//! | order | `saga_style`, `catalog_cache_ms`, `choreography_deadline_ms` | `flotilla_order::OrderSettings` |
//! | messaging | `messaging.*` | `flotilla_messaging::MessagingSettings` |
//! | identity | `identity.url`, `identity.issuer`, `identity.audiences`, `identity.max_clock_skew_ms`, `identity.max_token_bytes`, `identity.jwks_*`, `identity.cache_capacity` (checking tokens), `identity.client_id`, `identity.client_secret` (the process's own tokens); `identity.token_lifetime_ms`, `identity.key_file`, `identity.rotation_interval_ms`, `identity.public_url`, `identity.seed_file`, `identity.platform_secret`, `identity.token_requests_per_second`, `identity.attempts_per_account_per_minute` (the provider) | `flotilla_identity::IdentityConfig`, `flotilla_identity::IdpSettings` |
//!
//! The sections other than messaging and identity keep their keys at the top of a file and of the
//! environment (`ttl_ms`, `FLOTILLA_TTL_MS`): each is extracted from the top level of the merged
//! layers, ignoring the other sections' keys, and messaging from its table. Extracting section
//! by section rather than deserialising one struct with `#[serde(flatten)]` keeps figment's
//! errors naming the key and its source (`for key "default.ttl_ms" in FLOTILLA_TTL_MS
//! environment variable(s)`: flattening loses the key) and lets the `breaker` and `retry` tables
//! keep `deny_unknown_fields`. It also means two sections could both read one key: a test checks
//! that no key belongs to two sections.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use flotilla_discovery::{DiscoverySettings, InstanceConfig, Lease};
use flotilla_gateway::GatewaySettings;
use flotilla_identity::{IdentityConfig, IdpSettings, VerifierSettings};
use flotilla_kit::ServerSettings;
use flotilla_kit::settings::{Invalid, Section};
use flotilla_messaging::{MessagingSettings, ServiceConfig};
use flotilla_order::OrderSettings;
use flotilla_registry::RegistrySettings;
use flotilla_resilience::settings::ResilienceSettings;
use serde::{Deserialize, Serialize};

/// Every section, as one settings file holds them (serialised flat, as the lowest layer).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Settings {
    /// Where the process listens, logs and keeps its databases.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// The registry's address and the deadline of a call.
    #[serde(flatten)]
    pub discovery: DiscoverySettings,
    /// The lease and the registry's probes.
    #[serde(flatten)]
    pub registry: RegistrySettings,
    /// The `breaker` and `retry` tables.
    #[serde(flatten)]
    pub resilience: ResilienceSettings,
    /// The gateway's keys.
    #[serde(flatten)]
    pub gateway: GatewaySettings,
    /// The order service's keys.
    #[serde(flatten)]
    pub order: OrderSettings,
    /// The `messaging` table.
    pub messaging: MessagingSettings,
    /// The `identity` table: where the identity provider is and how tokens are checked, and
    /// the provider's own keys.
    pub identity: IdentityTable,
}

/// The `identity` table: read by every process that checks tokens ([`IdentityConfig`]) and by
/// the identity provider ([`IdpSettings`]); the keys they share (`issuer`, `audiences`,
/// `max_clock_skew_ms`, `jwks_max_age_ms`) mean the same to both.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct IdentityTable {
    /// What a token-checking process reads.
    #[serde(flatten)]
    pub client: IdentityConfig,
    /// What the provider reads (its keys are read from the same table, not written twice).
    #[serde(skip)]
    pub provider: IdpSettings,
}

/// The identity table's parts, each extracted on its own: figment's errors lose the key's name
/// through `#[serde(flatten)]`.
#[derive(Deserialize)]
struct IdentityVerifierTable {
    #[serde(default)]
    identity: VerifierSettings,
}

#[derive(Deserialize, Default)]
struct IdentityUrl {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

#[derive(Deserialize)]
struct IdentityUrlTable {
    #[serde(default)]
    identity: IdentityUrl,
}

#[derive(Deserialize)]
struct IdentityProviderTable {
    #[serde(default)]
    identity: IdpSettings,
}

/// The `messaging` table, extracted from the top level so that figment's errors name its keys
/// `messaging.transport` (`extract_inner("messaging")` names them the other way round).
#[derive(Deserialize)]
struct MessagingTable {
    #[serde(default)]
    messaging: MessagingSettings,
}

/// Settings that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value could not be read or has the wrong type.
    #[error("invalid settings: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value was read but breaks a rule.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl Settings {
    /// Loads the layers: defaults, then `file` (TOML, if given and present), then `FLOTILLA_*`
    /// environment variables (`FLOTILLA_REGISTRY_URL`, `FLOTILLA_TTL_MS`,
    /// `FLOTILLA_MESSAGING__TRANSPORT`, …), then `overrides` (command-line flags, serialised;
    /// absent fields are left alone). Validates the result.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file(file));
        }
        let figment = figment
            .merge(Env::prefixed("FLOTILLA_").split("__"))
            .merge(Serialized::defaults(overrides));
        let settings = Settings {
            server: figment.extract().map_err(Box::new)?,
            discovery: figment.extract().map_err(Box::new)?,
            registry: figment.extract().map_err(Box::new)?,
            resilience: figment.extract().map_err(Box::new)?,
            gateway: figment.extract().map_err(Box::new)?,
            order: figment.extract().map_err(Box::new)?,
            messaging: figment
                .extract::<MessagingTable>()
                .map_err(Box::new)?
                .messaging,
            identity: IdentityTable {
                client: {
                    let own = figment
                        .extract::<IdentityUrlTable>()
                        .map_err(Box::new)?
                        .identity;
                    IdentityConfig {
                        url: own.url,
                        verifier: figment
                            .extract::<IdentityVerifierTable>()
                            .map_err(Box::new)?
                            .identity,
                        client_id: own.client_id,
                        client_secret: own.client_secret,
                    }
                },
                provider: figment
                    .extract::<IdentityProviderTable>()
                    .map_err(Box::new)?
                    .identity,
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every section's rules.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.server.validate()?;
        self.discovery.validate()?;
        self.registry.validate()?;
        self.resilience.validate().map_err(|error| Invalid {
            key: error.key,
            reason: error.source.to_string(),
        })?;
        self.gateway.validate()?;
        self.order.validate()?;
        self.messaging.validate()?;
        self.identity.client.validate()?;
        self.identity.provider.validate()?;
        Ok(())
    }

    /// What a registered process reads: server, discovery and the registry's lease.
    pub fn instance(&self) -> InstanceConfig {
        InstanceConfig {
            server: self.server.clone(),
            discovery: self.discovery.clone(),
            lease: Lease::from_millis(self.registry.heartbeat_ms, self.registry.ttl_ms),
            identity: self.identity.client.clone(),
        }
    }

    /// What the registry reads.
    pub fn registry(&self) -> flotilla_registry::server::Config {
        flotilla_registry::server::Config {
            server: self.server.clone(),
            registry: self.registry.clone(),
            identity: self.identity.client.clone(),
        }
    }

    /// What the gateway reads.
    pub fn gateway(&self) -> flotilla_gateway::Config {
        flotilla_gateway::Config {
            instance: self.instance(),
            resilience: self.resilience.clone(),
            gateway: self.gateway.clone(),
        }
    }

    /// What the identity provider reads.
    pub fn idp(&self) -> flotilla_identity::process::IdpConfig {
        flotilla_identity::process::IdpConfig {
            server: self.server.clone(),
            idp: self.identity.provider.clone(),
        }
    }

    /// What a participant (payment, inventory, shipping) reads.
    pub fn service(&self) -> ServiceConfig {
        ServiceConfig {
            instance: self.instance(),
            messaging: self.messaging.clone(),
        }
    }

    /// What the order service reads.
    pub fn order(&self) -> flotilla_order::Config {
        flotilla_order::Config {
            service: self.service(),
            resilience: self.resilience.clone(),
            order: self.order.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
