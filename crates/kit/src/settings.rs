//! The process section of the settings: what every Flotilla process reads (where it listens,
//! how it logs, where its databases live, how it stops), and the error every section's
//! validation returns.
//!
//! Each crate owns the section it reads (discovery, registry, resilience, messaging, gateway,
//! order); the binary assembles them into the whole settings, loads the layers (defaults → file
//! → `FLOTILLA_*` environment → flags) and validates every section once. This module neither
//! loads nor knows the other sections; nothing deeper in the code reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

/// The server section, read by every process: flat keys at the top of the settings
/// (`listen`, `FLOTILLA_DATA_DIR`, …). Durations are in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// Address to listen on; port 0 lets the OS choose (the process then registers the port).
    pub listen: SocketAddr,
    /// Address of the admin listener: `/metrics` and `/admin/*`, each behind a token (see
    /// `flotilla_identity::admin`); port 0 lets the OS choose (a registered process publishes
    /// it as its `admin_address`).
    pub admin_listen: SocketAddr,
    /// Host name or address other processes use to reach this one.
    pub advertise_host: String,
    /// Directory of the embedded databases (`<data_dir>/<service>.db`).
    pub data_dir: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    pub log_level: String,
    /// Largest request body a service accepts, in bytes.
    pub max_body_bytes: usize,
    /// The longest a client may take to send a request's head, from its first byte (or from
    /// opening the connection); the connection is closed past it.
    pub header_read_timeout_ms: u64,
    /// The longest a kept-alive connection may wait for its next request before it is closed.
    pub idle_timeout_ms: u64,
    /// The most header fields a request may carry (431 beyond).
    pub max_headers: usize,
    /// The most bytes a request's header fields may hold, names and values (431 beyond).
    pub max_header_bytes: usize,
    /// The longest request target, in bytes (414 beyond).
    pub max_uri_bytes: usize,
    /// Time given to in-flight requests to finish on shutdown.
    pub shutdown_grace_ms: u64,
    /// Set by the supervisor: the process stops when its standard input closes (the supervisor
    /// died), so that no child outlives it.
    pub supervised: bool,
    /// Serve `/admin/faults` (on the admin listener), which makes this process fail a share
    /// of its requests or answer late, for demos and tests. Never enable it in production.
    pub fault_injection: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: "127.0.0.1".to_owned(),
            data_dir: PathBuf::from(".flotilla"),
            log_format: LogFormat::Auto,
            log_level: "info".to_owned(),
            max_body_bytes: 64 * 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
            shutdown_grace_ms: 10_000,
            supervised: false,
            fault_injection: false,
        }
    }
}

impl Section for ServerSettings {
    fn validate(&self) -> Result<(), Invalid> {
        if self.max_body_bytes == 0 {
            return Err(Invalid::new("max_body_bytes", "must be positive"));
        }
        if self.advertise_host.is_empty() {
            return Err(Invalid::new("advertise_host", "must not be empty"));
        }
        let positive = [
            ("header_read_timeout_ms", self.header_read_timeout_ms == 0),
            ("idle_timeout_ms", self.idle_timeout_ms == 0),
            ("max_headers", self.max_headers == 0),
            ("max_header_bytes", self.max_header_bytes == 0),
            ("max_uri_bytes", self.max_uri_bytes == 0),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(Invalid::new(key, "must be positive"));
        }
        Ok(())
    }
}

impl ServerSettings {
    /// What the process's listener allows its clients.
    pub fn connection_limits(&self) -> crate::ConnectionLimits {
        crate::ConnectionLimits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            max_uri_bytes: self.max_uri_bytes,
        }
    }

    /// The path of a service's embedded database.
    pub fn database_path(&self, service: &str) -> PathBuf {
        self.data_dir.join(format!("{service}.db"))
    }
}

/// A section of the settings, owned by the crate that reads it: its defaults and its rules.
/// The binary assembles the sections and checks each before anything starts.
pub trait Section: Default {
    /// Checks the section's rules; the error names the first key that breaks one.
    fn validate(&self) -> Result<(), Invalid>;

    /// The key that the default section breaks once `change` is applied to it, if any. A
    /// crate's tests state each rule of its section in one line with it:
    ///
    /// ```
    /// use flotilla_kit::settings::{Section, ServerSettings};
    ///
    /// assert_eq!(ServerSettings::key_broken_by(|_| {}), None);
    /// assert_eq!(
    ///     ServerSettings::key_broken_by(|s| s.max_body_bytes = 0),
    ///     Some("max_body_bytes")
    /// );
    /// ```
    fn key_broken_by(change: impl FnOnce(&mut Self)) -> Option<&'static str> {
        let mut section = Self::default();
        change(&mut section);
        section.validate().err().map(|invalid| invalid.key)
    }
}

/// A setting that was read but breaks a rule; the message names the key as written in a
/// settings file (`ttl_ms`, `messaging.inbox_retention_ms`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{key}`: {reason}")]
pub struct Invalid {
    /// The offending key.
    pub key: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    /// The key `key` breaks a rule, said by `reason`.
    pub fn new(key: &'static str, reason: impl Into<String>) -> Self {
        Self {
            key,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_rules_name_their_key() {
        assert_eq!(ServerSettings::key_broken_by(|_| {}), None);
        let no_body = ServerSettings::key_broken_by(|s| s.max_body_bytes = 0);
        assert_eq!(no_body, Some("max_body_bytes"));
        let nowhere = ServerSettings::key_broken_by(|s| s.advertise_host.clear());
        assert_eq!(nowhere, Some("advertise_host"));
        let no_head_time = ServerSettings::key_broken_by(|s| s.header_read_timeout_ms = 0);
        assert_eq!(no_head_time, Some("header_read_timeout_ms"));
        let no_idle = ServerSettings::key_broken_by(|s| s.idle_timeout_ms = 0);
        assert_eq!(no_idle, Some("idle_timeout_ms"));
        let no_headers = ServerSettings::key_broken_by(|s| s.max_headers = 0);
        assert_eq!(no_headers, Some("max_headers"));
        let error = ServerSettings {
            advertise_host: String::new(),
            ..ServerSettings::default()
        }
        .validate()
        .expect_err("nowhere to be reached");
        assert!(error.to_string().contains("advertise_host"), "{error}");
    }
}
