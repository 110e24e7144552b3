//! Running messaging inside a service: the transport chosen by settings, the outbox relay and
//! the consumers as background tasks.

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
use crate::settings::{MessagingSettings, ServiceConfig, TransportKind};
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

/// Starts consumer `group` of `topics` running `handler` on `pool`; it wakes `relay` when the
/// handler wrote to the outbox, and subscribes again (after a second) if the subscription fails.
pub fn start_consumer<H: Handler>(
    group: &'static str,
    pool: SqlitePool,
    handler: H,
    transport: Arc<AnyTransport>,
    topics: &'static [&'static str],
    relay: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let consumer = Arc::new(Consumer::new(group, pool, handler).waking(relay));
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            match consumer
                .serve(transport.as_ref(), topics, shutdown.clone())
                .await
            {
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

/// Starts a service's messaging: the transport `settings` choose, its outbox relay, its
/// consumer `group` of `topics` running `handler`, and the pruning of messages past their
/// retention ([`crate::retention`]), all on the service's database `pool`, until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn start<H: Handler>(
    settings: &MessagingSettings,
    discovery: Discovery,
    subscriptions: Subscriptions,
    group: &'static str,
    pool: SqlitePool,
    handler: H,
    topics: &'static [&'static str],
    shutdown: &CancellationToken,
) -> Result<Messaging, TransportError> {
    let transport =
        Arc::new(AnyTransport::from_settings(settings, discovery, subscriptions).await?);
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
    tokio::spawn(crate::retention::run(
        pool.clone(),
        group.to_owned(),
        retention,
        shutdown.clone(),
    ));
    start_consumer(
        group,
        pool,
        handler,
        transport.clone(),
        topics,
        relay.clone(),
        shutdown.clone(),
    );
    Ok(Messaging {
        routes: transport.routes(),
        relay,
        transport,
    })
}

/// Runs a service that takes part in messaging: opens discovery, starts [`start`]'s messaging,
/// serves `routes` plus the transport's own, registered as `service`, until `shutdown`; then
/// closes `pool`.
#[allow(clippy::too_many_arguments)]
pub async fn serve<H: Handler>(
    service: &'static str,
    config: ServiceConfig,
    listener: tokio::net::TcpListener,
    pool: SqlitePool,
    routes: Router,
    subscriptions: Subscriptions,
    handler: H,
    topics: &'static [&'static str],
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let discovery = config.instance.discovery.discovery(&shutdown);
    let messaging = start(
        &config.messaging,
        discovery,
        subscriptions,
        service,
        pool.clone(),
        handler,
        topics,
        &shutdown,
    )
    .await
    .map_err(std::io::Error::other)?;
    let result = flotilla_discovery::serve_routes(
        service,
        &config.instance,
        listener,
        routes.merge(messaging.routes),
        shutdown,
    )
    .await;
    pool.close().await;
    result
}
