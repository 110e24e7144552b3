//! Builds the order service from its settings and runs it: the database, the sagas and their
//! timers, discovery, messaging, the projections and the HTTP API, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use flotilla_messaging::runtime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::SERVICE;
use crate::api::{self, Context, prices::Prices};
use crate::consumer::Inbox;
use crate::sagas::Sagas;
use crate::settings::Config;
use crate::store::{self, projections};

/// Opens the order database under the settings' data directory and wires the sagas to it.
pub async fn open(config: &Config) -> Result<Sagas, flotilla_eventstore::Error> {
    let (server, settings) = (&config.service.instance.server, &config.order);
    let db = store::open(&server.database_path(SERVICE)).await?;
    Ok(Sagas::new(
        db,
        Duration::from_millis(settings.choreography_deadline_ms),
    ))
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    flotilla_eventstore::describe_metrics();
    flotilla_saga::describe_metrics();
    // The probes answer from the start, saying which step is under way.
    let health = flotilla_kit::Health::new();
    let starting = flotilla_discovery::starting(&config.service.instance, &listener, &health)?;
    health.starting("opening the database: migrations, the event store");
    let sagas = open(&config).await.map_err(std::io::Error::other)?;
    let db = sagas.db.clone();
    let (service, settings) = (&config.service, &config.order);
    let discovery = service
        .instance
        .discovery(&shutdown)
        .with_resilience(
            config.resilience.breaker.clone(),
            config.resilience.retry.clone(),
        )
        .map_err(std::io::Error::other)?;
    projections::spawn(&db.events, &shutdown);
    tokio::spawn(flotilla_saga::watch_unfinished(
        db.pool.clone(),
        &["place_order", "cancel_order"],
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    let messaging = runtime::start(
        runtime::Options {
            settings: &service.messaging,
            discovery: discovery.clone(),
            group: SERVICE,
            wiring: flotilla_contracts::wiring(SERVICE),
            pool: db.pool.clone(),
            handler: Inbox::new(&sagas),
            health: health.clone(),
        },
        &shutdown,
    )
    .await
    .map_err(std::io::Error::other)?;
    sagas.spawn_timers(messaging.relay.clone(), &shutdown);
    starting.stop();
    let context = Context {
        sagas: sagas.clone(),
        discovery,
        prices: Arc::new(Prices::new(Duration::from_millis(
            settings.catalog_cache_ms,
        ))),
        customers: Arc::default(),
        relay: messaging.relay.clone(),
        style: settings.saga_style,
    };
    let result = flotilla_discovery::serve_routes(
        SERVICE,
        &service.instance,
        listener,
        api::routes(context),
        messaging.routes,
        health,
        shutdown,
    )
    .await;
    db.pool.close().await;
    result
}

/// `flotilla projections rebuild order`: rebuilds the order's read models from its events.
pub async fn rebuild_projections(
    config: &Config,
) -> Result<Vec<(&'static str, u64)>, flotilla_eventstore::Error> {
    let server = &config.service.instance.server;
    let db = store::open(&server.database_path(SERVICE)).await?;
    let rebuilt = projections::rebuild(&db.events).await;
    db.pool.close().await;
    rebuilt
}
