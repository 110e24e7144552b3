//! The NATS JetStream transport: one stream holds every topic (`<prefix>.<topic>` subjects);
//! each consumer group has a durable pull consumer per topic; publishing carries the message id
//! as `Nats-Msg-Id`, so the stream drops a duplicate published within its window, and returns
//! only on the stream's publish acknowledgement.
//!
//! **Durability.** Jepsen's analysis of NATS 2.12.1 (December 2025) found that JetStream, with
//! its default `sync_interval` (fsync every two minutes), could lose writes it had acknowledged
//! when nodes lost power. A production deployment that relies on the acknowledgement — which
//! the outbox does: a row is marked published on it — must run nats-server 2.10 or later with
//! `jetstream { sync_interval: always }` in its configuration file (there is no command-line
//! flag) and replicated streams (`num_replicas: 3`), or accept the window. The development and
//! CI server (Debian's 2.9.10) has no such setting; see `docs/patterns/messaging.md`.
//!
//! **Restarts.** The client reconnects without limit (async-nats's default) and the pull
//! consumers ask for messages again after a reconnect; publishes that time out are retried by
//! the relay and deduplicated by id. `tests/nats_restart.rs` restarts the server mid-run.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::transport::{Deliveries, Delivery, Settlement, Transport, TransportError};
use crate::{Message, valid_topic};

/// Where and how to use JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL, such as `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream's name. Default `FLOTILLA`.
    pub stream: String,
    /// The subjects' prefix: topic `order.events` is subject `<prefix>.order.events`.
    /// Default `flotilla`.
    pub subject_prefix: String,
    /// How long the stream remembers message ids to drop duplicates. Default 2 minutes.
    pub duplicate_window: Duration,
    /// How long a delivery may stay unsettled before it is delivered again. Default 30 s.
    pub ack_wait: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "FLOTILLA".into(),
            subject_prefix: "flotilla".into(),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// The JetStream transport.
#[derive(Debug, Clone)]
pub struct Nats {
    config: NatsConfig,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: stream::Stream,
}

fn unavailable(error: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable(error.to_string())
}

impl Nats {
    /// Connects and makes sure the stream exists.
    pub async fn connect(config: NatsConfig) -> Result<Self, TransportError> {
        let client = async_nats::connect(config.url.as_str())
            .await
            .map_err(unavailable)?;
        let jetstream = jetstream::new(client.clone());
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                storage: stream::StorageType::File,
                duplicate_window: config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(Self {
            config,
            client,
            jetstream,
            stream,
        })
    }

    /// Deletes the stream and everything in it (tests).
    pub async fn delete_stream(&self) -> Result<(), TransportError> {
        self.jetstream
            .delete_stream(&self.config.stream)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn subject(&self, topic: &str) -> Result<String, TransportError> {
        if valid_topic(topic) {
            Ok(format!("{}.{topic}", self.config.subject_prefix))
        } else {
            Err(TransportError::Refused(format!("invalid topic `{topic}`")))
        }
    }
}

impl Transport for Nats {
    async fn publish(&self, message: &Message) -> Result<(), TransportError> {
        let subject = self.subject(&message.topic)?;
        let payload =
            serde_json::to_vec(message).map_err(|e| TransportError::Refused(e.to_string()))?;
        let ack = self
            .jetstream
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(Bytes::from(payload))
                    .message_id(message.id.to_string()),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        if ack.duplicate {
            tracing::debug!(message_id = %message.id, "duplicate publish dropped by the stream");
        }
        Ok(())
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Deliveries, TransportError> {
        let (sender, receiver) = mpsc::channel(256);
        for topic in topics {
            let subject = self.subject(topic)?;
            let name = format!("{group}-{}", topic.replace('.', "_"));
            let consumer: consumer::PullConsumer = self
                .stream
                .get_or_create_consumer(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: subject,
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: self.config.ack_wait,
                        ..Default::default()
                    },
                )
                .await
                .map_err(unavailable)?;
            let mut messages = consumer.messages().await.map_err(unavailable)?;
            let sender = sender.clone();
            tokio::spawn(async move {
                use futures_util::StreamExt as _;
                while let Some(next) = messages.next().await {
                    let delivery = match next {
                        Ok(message) => to_delivery(message),
                        Err(error) => Err(unavailable(error)),
                    };
                    if sender.send(delivery).await.is_err() {
                        return; // the subscriber is gone
                    }
                }
            });
        }
        Ok(Deliveries::new(receiver))
    }
}

fn to_delivery(message: jetstream::Message) -> Result<Delivery, TransportError> {
    let attempt = message
        .info()
        .map(|info| u64::try_from(info.delivered).unwrap_or(1))
        .unwrap_or(1);
    let (message, acker) = message.split();
    let decoded: Message = match serde_json::from_slice(&message.payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            // Not ours to read: acknowledge it so that it does not come back forever.
            tracing::warn!(subject = %message.subject, %error, "unreadable message dropped");
            tokio::spawn(async move { acker.ack().await });
            return Err(TransportError::Refused(format!(
                "unreadable message: {error}"
            )));
        }
    };
    Ok(Delivery::new(decoded, attempt, move |settlement| {
        Box::pin(async move {
            let kind = match settlement {
                Settlement::Ack => AckKind::Ack,
                Settlement::Retry(delay) => AckKind::Nak(Some(delay)),
            };
            acker.ack_with(kind).await.map_err(unavailable)
        })
    }))
}
