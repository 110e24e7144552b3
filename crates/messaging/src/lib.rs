//! Reliable messaging for services with their own database: a transactional **outbox**
//! ([`outbox`]), an idempotent **inbox** ([`inbox`]), a **relay** that publishes the outbox,
//! and **transports** behind one trait ([`Transport`]): the embedded HTTP push through the
//! registry ([`embedded`], the default: no broker) and NATS JetStream ([`nats`]).
//!
//! The guarantees, end to end: a message is published if and only if the state change it
//! announces committed (outbox in the same transaction); it is published at least once (the
//! relay marks it only after the transport's acknowledgement); each consumer applies its effect
//! exactly once (the inbox row is written in the same transaction as the effect). Messages of one
//! key are published in order.
//!
//! Patterns: publish-subscribe (a topic, several consumer groups), fire-and-forget (a message
//! nobody answers), request-reply ([`Message::replying_to`], [`Message::reply`]).
//!
//! Its section of the settings, [`MessagingSettings`] (the `messaging` table), lives in
//! [`settings`]; [`runtime`] starts a service's messaging from it, and [`participant`] runs a
//! saga participant (inventory, payment, shipping) from its declaration.

pub mod depth;
pub mod embedded;
mod envelope;
pub mod inbox;
pub mod nats;
pub mod outbox;
pub mod participant;
pub mod retention;
pub mod runtime;
pub mod settings;
mod transport;

use sqlx::SqlitePool;

pub use crate::envelope::{Message, valid_topic};
pub use crate::settings::{MessagingSettings, ServiceConfig, TransportKind};
pub use crate::transport::{Deliveries, Delivery, Settlement, Transport, TransportError};

/// Registers the HELP text and unit of every messaging metric (call it once the process's
/// recorder exists: `flotilla_kit::metrics::handle`).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter};
    describe_counter!(
        "messaging_outbox_published_total",
        Unit::Count,
        "Outbox messages the relay published (acknowledged by the transport)"
    );
    describe_counter!(
        "messaging_outbox_dead_lettered_total",
        Unit::Count,
        "Outbox messages the relay gave up on after its attempts (dead letters)"
    );
    describe_counter!(
        "messaging_outbox_mark_commits_total",
        Unit::Count,
        "Commits marking published outbox rows"
    );
    describe_counter!(
        "messaging_outbox_pruned_total",
        Unit::Count,
        "Published outbox rows deleted past their retention"
    );
    describe_counter!(
        "messaging_inbox_commits_total",
        Unit::Count,
        "Inbox commits (each applies a group of deliveries), by consumer"
    );
    describe_counter!(
        "messaging_inbox_pruned_total",
        Unit::Count,
        "Inbox rows deleted past their retention"
    );
    describe_counter!(
        "messaging_consumed_total",
        Unit::Count,
        "Deliveries consumed, by consumer and outcome (applied, duplicate, rejected, retried)"
    );
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A topic that transports cannot carry.
    #[error("invalid topic `{0}`: use lower-case letters, digits, `.`, `-` and `_`")]
    InvalidTopic(String),
    /// A message could not be encoded.
    #[error("message cannot be encoded: {0}")]
    Encode(serde_json::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The schema could not be set up.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Creates the outbox, dead-letter and inbox tables in a service's database if needed
/// (migrations recorded in `_messaging_migrations`, apart from the service's own).
pub async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_messaging_migrations");
    migrator.run(pool).await?;
    Ok(())
}
