//! Running messaging inside a service: the transport chosen by settings, the outbox relay and
//! the consumers as background tasks ([`start`], given its [`Options`]).
//!
//! It does not serve the service: a saga participant runs through [`crate::participant`], the
//! order service through its own start-up.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use flotilla_discovery::Discovery;
use sqlx::SqlitePool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Message;
use crate::embedded::{Embedded, Subscriptions};
use crate::inbox::{Consumer, Handler};
use crate::nats::{Nats, NatsConfig};
use crate::outbox::{Relay, RelayConfig};
use crate::retention::Retention;
use crate::settings::{MessagingSettings, TransportKind};
use crate::transport::{Deliveries, Transport, TransportError};

/// The transport a service runs with, chosen by `messaging.transport`.
#[derive(Debug, Clone)]
pub enum AnyTransport {
    /// HTTP push through the registry.
    Embedded(Embedded),
    /// NATS JetStream (boxed: its client is large).
    Nats(Box<Nats>),
}

impl AnyTransport {
    /// The transport `settings` name: embedded (publishing through `discovery` to the groups
    /// `subscriptions` names) or NATS.
    pub async fn from_settings(
        settings: &MessagingSettings,
        discovery: Discovery,
        subscriptions: Subscriptions,
    ) -> Result<Self, TransportError> {
        Ok(match settings.transport {
            TransportKind::Embedded => {
                let token = settings.push_token.clone();
                if token.is_empty() {
                    tracing::warn!(
                        "messaging.push_token is not set: the push endpoint accepts messages from anyone who can reach it"
                    );
                }
                AnyTransport::Embedded(
                    Embedded::new(discovery, subscriptions).with_token(Some(token)),
                )
            }
            TransportKind::Nats => AnyTransport::Nats(Box::new(
                Nats::connect(NatsConfig {
                    url: settings.nats_url.clone(),
                    stream: settings.nats_stream.clone(),
                    subject_prefix: settings.nats_subject_prefix.clone(),
                    ..NatsConfig::default()
                })
                .await?,
            )),
        })
    }

    /// The routes the transport needs the service to serve (the embedded push endpoint).
    pub fn routes(&self) -> Router {
        match self {
            AnyTransport::Embedded(embedded) => embedded.routes(),
            AnyTransport::Nats(_) => Router::new(),
        }
    }
}

impl Transport for AnyTransport {
    async fn publish(&self, message: &Message) -> Result<(), TransportError> {
        match self {
            AnyTransport::Embedded(embedded) => embedded.publish(message).await,
            AnyTransport::Nats(nats) => nats.publish(message).await,
        }
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Deliveries, TransportError> {
        match self {
            AnyTransport::Embedded(embedded) => embedded.subscribe(group, topics).await,
            AnyTransport::Nats(nats) => nats.subscribe(group, topics).await,
        }
    }
}

/// Starts the relay of `pool`'s outbox; returns what wakes it (notify it after committing
/// outbox rows).
pub fn start_relay(
    pool: SqlitePool,
    transport: Arc<AnyTransport>,
    shutdown: CancellationToken,
) -> Arc<Notify> {
    let relay = Relay::new(pool, transport, RelayConfig::default());
    let waker = relay.waker();
    tokio::spawn(relay.run(shutdown));
    waker
}

/// Starts consumer `group` of `topics` running `handler` on `pool`, on `subscribed` if given
/// (a subscription made already), else subscribing; it wakes `relay` when the handler wrote to
/// the outbox, and subscribes again (after a second) if the subscription fails.
#[allow(clippy::too_many_arguments)]
pub fn start_consumer<H: Handler>(
    group: &'static str,
    pool: SqlitePool,
    handler: H,
    transport: Arc<AnyTransport>,
    topics: &'static [&'static str],
    relay: Arc<Notify>,
    subscribed: Option<Deliveries>,
    shutdown: CancellationToken,
) {
    let consumer = Arc::new(Consumer::new(group, pool, handler).waking(relay));
    tokio::spawn(async move {
        let mut subscribed = subscribed;
        while !shutdown.is_cancelled() {
            let served = match subscribed.take() {
                Some(deliveries) => {
                    consumer
                        .serve_subscribed(deliveries, shutdown.clone())
                        .await
                }
                None => {
                    consumer
                        .serve(transport.as_ref(), topics, shutdown.clone())
                        .await
                }
            };
            match served {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%group, %error, "consumer stopped; subscribing again");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    });
}

/// A service's messaging, running.
#[derive(Debug)]
pub struct Messaging {
    /// The routes the service must serve for the transport.
    pub routes: Router,
    /// Wakes the outbox relay (after committing outbox rows outside a consumer).
    pub relay: Arc<Notify>,
    /// The transport.
    pub transport: Arc<AnyTransport>,
}

/// How the system wires a service's messaging, as its contracts say (this crate cannot know
/// them): who consumes which topic, and which topics this service consumes.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// The consumer groups of every topic: where the embedded transport pushes what it publishes.
    pub subscriptions: Subscriptions,
    /// The topics the service's consumer subscribes to.
    pub topics: &'static [&'static str],
}

/// What [`start`] runs: a service's messaging settings, its discovery, its consumer group and
/// wiring, its database and the handler of what it consumes.
#[derive(Debug)]
pub struct Options<'a, H> {
    /// The `messaging` section of the service's settings: the transport and retention.
    pub settings: &'a MessagingSettings,
    /// Finds the subscribers the embedded transport pushes to.
    pub discovery: Discovery,
    /// The consumer group: the service's name, its key in the inbox.
    pub group: &'static str,
    /// Who consumes what ([`Wiring`]).
    pub wiring: Wiring,
    /// The service's database: its outbox and inbox.
    pub pool: SqlitePool,
    /// Applies each message consumed.
    pub handler: H,
    /// The service's probes: start-up is not done until the consumer is subscribed.
    pub health: flotilla_kit::Health,
}

/// Starts a service's messaging: the transport its settings choose, its outbox relay, its
/// consumer group of the wired topics running the handler, and the pruning of messages past
/// their retention ([`crate::retention`]), all on the service's database, until `shutdown`.
pub async fn start<H: Handler>(
    options: Options<'_, H>,
    shutdown: &CancellationToken,
) -> Result<Messaging, TransportError> {
    let Options {
        settings,
        discovery,
        group,
        wiring,
        pool,
        handler,
        health,
    } = options;
    crate::describe_metrics();
    flotilla_sqlite::describe_metrics();
    // Connected before start-up is done, retried each second: a service waits for its broker
    // rather than exiting (`/startupz` says what it waits for).
    let transport = loop {
        health.starting(format!(
            "connecting to the {:?} transport",
            settings.transport
        ));
        match AnyTransport::from_settings(settings, discovery.clone(), wiring.subscriptions.clone())
            .await
        {
            Ok(transport) => break Arc::new(transport),
            Err(error) => {
                tracing::warn!(%error, "the transport cannot be reached; retrying");
                health.starting(format!(
                    "connecting to the {:?} transport: {error}; retrying",
                    settings.transport
                ));
                tokio::select! {
                    () = shutdown.cancelled() => return Err(error),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let relay = start_relay(pool.clone(), transport.clone(), shutdown.clone());
    let outbox = Duration::from_millis(settings.outbox_retention_ms);
    let retention = Retention {
        outbox,
        inbox: Duration::from_millis(settings.inbox_retention_ms),
        // A short window is pruned as often as it passes (down to every 100 ms).
        interval: Retention::default()
            .interval
            .min(outbox)
            .max(Duration::from_millis(100)),
    };
    tokio::spawn(crate::depth::run(pool.clone(), shutdown.clone()));
    tokio::spawn(crate::retention::run(
        pool.clone(),
        group.to_owned(),
        retention,
        shutdown.clone(),
    ));
    // Subscribed before start-up is done: a service that cannot receive its messages yet has
    // not started (`/startupz` says why, and it is retried each second).
    let topics = wiring.topics.join(", ");
    let subscribed = loop {
        health.starting(format!("subscribing consumer group `{group}` to {topics}"));
        match transport.subscribe(group, wiring.topics).await {
            Ok(deliveries) => break deliveries,
            Err(error) => {
                tracing::warn!(%group, %error, "subscribing failed; retrying");
                health.starting(format!(
                    "subscribing consumer group `{group}` to {topics}: {error}; retrying"
                ));
                tokio::select! {
                    () = shutdown.cancelled() => {
                        return Err(TransportError::Unavailable(
                            "stopped before the consumer could subscribe".to_owned(),
                        ));
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    start_consumer(
        group,
        pool,
        handler,
        transport.clone(),
        wiring.topics,
        relay.clone(),
        Some(subscribed),
        shutdown.clone(),
    );
    Ok(Messaging {
        routes: transport.routes(),
        relay,
        transport,
    })
}
