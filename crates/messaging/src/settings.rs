//! The messaging section of the settings (the nested `messaging` table:
//! `FLOTILLA_MESSAGING__TRANSPORT=nats`): the transport, its server and secret, and how long
//! the outbox and the inbox keep their rows; and [`ServiceConfig`], what a service taking part
//! in messaging reads ([`crate::participant::Participant::run`]). Loading the settings is the
//! binary's job.

use flotilla_discovery::InstanceConfig;
use flotilla_kit::settings::{Invalid, Section};
use serde::{Deserialize, Serialize};

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

/// How services exchange messages (the saga's commands, replies and events).
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

impl Section for MessagingSettings {
    /// Checks the section's rules; the keys are named as in a settings file
    /// (`messaging.inbox_retention_ms`).
    fn validate(&self) -> Result<(), Invalid> {
        if self.outbox_retention_ms == 0 {
            return Err(Invalid::new(
                "messaging.outbox_retention_ms",
                "must be positive",
            ));
        }
        if self.inbox_retention_ms < 3_600_000 {
            return Err(Invalid::new(
                "messaging.inbox_retention_ms",
                "must be at least an hour (3600000): a redelivered message must still find its id",
            ));
        }
        Ok(())
    }
}

/// What a service taking part in messaging reads: how it serves as a registered instance, and
/// its messaging.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceConfig {
    /// The server, discovery and lease it serves with.
    pub instance: InstanceConfig,
    /// Its transport and retention.
    pub messaging: MessagingSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_rules_are_checked() {
        assert_eq!(MessagingSettings::key_broken_by(|_| {}), None);
        let forgetful = MessagingSettings::key_broken_by(|s| s.inbox_retention_ms = 60_000);
        assert_eq!(forgetful, Some("messaging.inbox_retention_ms"));
        let no_outbox = MessagingSettings::key_broken_by(|s| s.outbox_retention_ms = 0);
        assert_eq!(no_outbox, Some("messaging.outbox_retention_ms"));
    }
}
