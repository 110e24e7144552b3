//! Typed settings, layered once at start-up: defaults → file → `FLOTILLA_*` environment → flags.
//!
//! Every process reads its [`Settings`] here and passes them down; nothing deeper in the code
//! reads the environment. An invalid value stops start-up with a message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use flotilla_resilience::BreakerConfig;
use flotilla_resilience::retry::RetryConfig;
use serde::{Deserialize, Serialize};

/// Where the log lines go and how they look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Settings shared by every Flotilla process. Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address to listen on; port 0 lets the OS choose (the process then registers the port).
    pub listen: SocketAddr,
    /// Host name or address other processes use to reach this one.
    pub advertise_host: String,
    /// Base URL of the registry (`http://127.0.0.1:7070`); `None` runs without registering.
    pub registry_url: Option<String>,
    /// Directory of the embedded databases (`<data_dir>/<service>.db`).
    pub data_dir: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    pub log_level: String,
    /// Largest request body a service accepts, in bytes.
    pub max_body_bytes: usize,
    /// Time given to in-flight requests to finish on shutdown.
    pub shutdown_grace_ms: u64,
    /// Interval between two heartbeats of a registered instance.
    pub heartbeat_ms: u64,
    /// Time after which the registry evicts an instance that stopped heart-beating.
    pub ttl_ms: u64,
    /// Interval between two active `/readyz` probes of each instance by the registry.
    pub probe_interval_ms: u64,
    /// Timeout of one active probe.
    pub probe_timeout_ms: u64,
    /// Deadline of one request through the gateway (and of service-to-service calls).
    pub request_timeout_ms: u64,
    /// Set by the supervisor: the process stops when its standard input closes (the supervisor
    /// died), so that no child outlives it.
    pub supervised: bool,
    /// The circuit breaker put in front of each upstream service (by the gateway) and each
    /// internal client. Nested keys in the environment use `__`:
    /// `FLOTILLA_BREAKER__WAIT_IN_OPEN_MS=1000`.
    pub breaker: BreakerConfig,
    /// The retry policy of the gateway (per upstream) and of internal clients:
    /// `FLOTILLA_RETRY__MAX_ATTEMPTS=2`. Only safe requests and retryable failures are retried.
    pub retry: RetryConfig,
    /// Services whose writes the gateway queues while their breaker is open (queue for later),
    /// e.g. `["order"]`; `FLOTILLA_QUEUE_FOR_LATER='["order"]'`.
    pub queue_for_later: Vec<String>,
    /// Serve the operator API (`/admin/breakers` on the gateway: states, forcing, run-time
    /// configuration). Never enable it where untrusted clients can reach the port.
    pub admin_api: bool,
    /// Serve `/admin/faults`, which makes this process fail a share of its requests or answer
    /// late, for demos and tests. Never enable it in production.
    pub fault_injection: bool,
    /// How services exchange messages (the saga's commands and replies):
    /// `FLOTILLA_MESSAGING__TRANSPORT=nats`.
    pub messaging: MessagingSettings,
    /// How sagas run by default: `FLOTILLA_SAGA_STYLE=choreography`. A request may choose with
    /// the header `X-Saga-Style`.
    pub saga_style: SagaStyle,
    /// How long the order service prices a SKU from the catalog price it last read from the
    /// inventory, instead of asking again (cache-aside; 0 asks for every order). A price changed
    /// in the catalog reaches new orders within this time.
    pub catalog_cache_ms: u64,
    /// How long a choreographed order has to end before the order service expires it
    /// (`OrderExpired`: shipping refuses it unless its shipment is scheduled, and the others undo
    /// their work). The orchestrated saga's timeouts are per step (5 s, 3 attempts).
    pub choreography_deadline_ms: u64,
}

/// How a saga's steps are coordinated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStyle {
    /// A persistent orchestrator sends each step's command and waits for its reply.
    #[default]
    Orchestration,
    /// The participants react to each other's events; nobody coordinates.
    Choreography,
}

impl SagaStyle {
    /// Its name, as in settings and the `X-Saga-Style` header.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStyle::Orchestration => "orchestration",
            SagaStyle::Choreography => "choreography",
        }
    }

    /// The style named `name` (case-insensitive).
    ///
    /// ```
    /// use flotilla_kit::settings::SagaStyle;
    /// assert_eq!(SagaStyle::parse("Choreography"), Some(SagaStyle::Choreography));
    /// assert_eq!(SagaStyle::parse("both"), None);
    /// ```
    pub fn parse(name: &str) -> Option<Self> {
        [SagaStyle::Orchestration, SagaStyle::Choreography]
            .into_iter()
            .find(|style| style.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

/// The message transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// HTTP push from the sender's relay to the subscribing services, found through the
    /// registry: no broker.
    #[default]
    Embedded,
    /// NATS JetStream.
    Nats,
}

/// Messaging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingSettings {
    /// `embedded` (default) or `nats`.
    pub transport: TransportKind,
    /// The NATS server, for the `nats` transport.
    pub nats_url: String,
    /// The JetStream stream that holds every topic (one per system sharing a server).
    pub nats_stream: String,
    /// The prefix of the stream's subjects (`<prefix>.<topic>`).
    pub nats_subject_prefix: String,
    /// The secret the embedded transport's pushes carry (`Authorization: Bearer …`) and its
    /// push endpoint requires: shared by every service of one system, which alone may deliver
    /// messages to each other. `flotilla up` makes a new one at each start unless it is set;
    /// empty, the endpoint accepts any push (and says so at start-up).
    pub push_token: String,
    /// How long the outbox keeps a published message before it is pruned (1 h).
    pub outbox_retention_ms: u64,
    /// How long the inbox keeps a processed message's id before it is pruned (7 days); at
    /// least an hour, longer than any redelivery can come late.
    pub inbox_retention_ms: u64,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        Self {
            transport: TransportKind::Embedded,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_stream: "FLOTILLA".into(),
            nats_subject_prefix: "flotilla".into(),
            push_token: String::new(),
            outbox_retention_ms: 3_600_000,
            inbox_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: "127.0.0.1".to_owned(),
            registry_url: None,
            data_dir: PathBuf::from(".flotilla"),
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
            max_body_bytes: 64 * 1024,
            shutdown_grace_ms: 10_000,
            heartbeat_ms: 500,
            ttl_ms: 1_500,
            probe_interval_ms: 500,
            probe_timeout_ms: 400,
            request_timeout_ms: 10_000,
            supervised: false,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            queue_for_later: Vec::new(),
            admin_api: false,
            fault_injection: false,
            messaging: MessagingSettings::default(),
            saga_style: SagaStyle::Orchestration,
            catalog_cache_ms: 10_000,
            choreography_deadline_ms: 30_000,
        }
    }
}

/// A setting that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value could not be read or has the wrong type.
    #[error("invalid settings: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value was read but breaks a rule.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Settings {
    /// Loads the layers: defaults, then `file` (TOML, if given and present), then `FLOTILLA_*`
    /// environment variables (`FLOTILLA_REGISTRY_URL`, `FLOTILLA_TTL_MS`, …), then `overrides`
    /// (command-line flags, serialised; absent fields are left alone). Validates the result.
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file(file));
        }
        let settings: Settings = figment
            .merge(Env::prefixed("FLOTILLA_").split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the rules between values.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key, reason: &str| {
            Err(SettingsError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.heartbeat_ms == 0 {
            return invalid("heartbeat_ms", "must be positive");
        }
        if self.ttl_ms < 2 * self.heartbeat_ms {
            return invalid(
                "ttl_ms",
                "must be at least twice heartbeat_ms, or one late heartbeat evicts a live instance",
            );
        }
        if self.probe_interval_ms == 0 || self.probe_timeout_ms == 0 {
            return invalid(
                "probe_interval_ms",
                "probe interval and timeout must be positive",
            );
        }
        if self.request_timeout_ms == 0 {
            return invalid("request_timeout_ms", "must be positive");
        }
        if self.max_body_bytes == 0 {
            return invalid("max_body_bytes", "must be positive");
        }
        if self.messaging.outbox_retention_ms == 0 {
            return invalid("messaging.outbox_retention_ms", "must be positive");
        }
        if self.messaging.inbox_retention_ms < 3_600_000 {
            return invalid(
                "messaging.inbox_retention_ms",
                "must be at least an hour (3600000): a redelivered message must still find its id",
            );
        }
        if self.choreography_deadline_ms == 0 {
            return invalid("choreography_deadline_ms", "must be positive");
        }
        if let Some(url) = &self.registry_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid("registry_url", "must be an http:// or https:// URL");
        }
        if let Err(error) = self.breaker.validate() {
            return Err(SettingsError::Invalid {
                key: "breaker",
                reason: error.to_string(),
            });
        }
        if let Err(error) = self.retry.validate() {
            return Err(SettingsError::Invalid {
                key: "retry",
                reason: error.to_string(),
            });
        }
        if self.advertise_host.is_empty() {
            return invalid("advertise_host", "must not be empty");
        }
        Ok(())
    }

    /// The path of a service's embedded database.
    pub fn database_path(&self, service: &str) -> PathBuf {
        self.data_dir.join(format!("{service}.db"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_rules_are_checked() {
        #[derive(Serialize)]
        struct Flags {
            ttl_ms: u64,
        }
        let settings = Settings::load(None, Flags { ttl_ms: 5_000 }).expect("valid");
        assert_eq!(settings.ttl_ms, 5_000);

        let error = Settings::load(None, Flags { ttl_ms: 10 }).expect_err("too short");
        assert!(error.to_string().contains("ttl_ms"), "{error}");
    }

    #[test]
    fn retention_and_deadline_rules_are_checked() {
        let mut settings = Settings::default();
        assert!(settings.validate().is_ok());
        settings.messaging.inbox_retention_ms = 60_000;
        let error = settings
            .validate()
            .expect_err("an inbox forgetting within a minute");
        assert!(error.to_string().contains("inbox_retention_ms"), "{error}");
        let mut settings = Settings::default();
        settings.messaging.outbox_retention_ms = 0;
        assert!(settings.validate().is_err());
        let settings = Settings {
            choreography_deadline_ms: 0,
            ..Settings::default()
        };
        let error = settings.validate().expect_err("no time at all");
        assert!(
            error.to_string().contains("choreography_deadline_ms"),
            "{error}"
        );
    }
}
