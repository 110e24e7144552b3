//! Builds the order service from its settings and runs it: the database, the sagas and their
//! timers, discovery, messaging, the projections and the HTTP API, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use flotilla_discovery::Discovery;
use flotilla_kit::Settings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::SERVICE;
use crate::api::{self, Context, prices::Prices};
use crate::consumer::Inbox;
use crate::sagas::Sagas;
use crate::store::{self, projections};

/// Opens the order database under the settings' data directory and wires the sagas to it.
pub async fn open(settings: &Settings) -> Result<Sagas, flotilla_eventstore::Error> {
    let db = store::open(&settings.database_path(SERVICE)).await?;
    Ok(Sagas::new(
        db,
        Duration::from_millis(settings.choreography_deadline_ms),
    ))
}

/// Runs the service on `listener` until `shutdown`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let sagas = open(&settings).await.map_err(std::io::Error::other)?;
    let db = sagas.db.clone();
    let timeout = Duration::from_millis(settings.request_timeout_ms);
    let discovery = match &settings.registry_url {
        Some(registry) => Discovery::new(registry, timeout, shutdown.clone()),
        None => Discovery::fixed(Default::default(), timeout),
    }
    .with_resilience(settings.breaker.clone(), settings.retry.clone())
    .map_err(std::io::Error::other)?;
    projections::spawn(&db.events, &shutdown);
    let messaging = flotilla_messaging::runtime::start(
        &settings,
        discovery.clone(),
        flotilla_contracts::subscriptions(),
        SERVICE,
        db.pool.clone(),
        Inbox::new(&sagas),
        flotilla_contracts::topics_of(SERVICE),
        &shutdown,
    )
    .await
    .map_err(std::io::Error::other)?;
    sagas.spawn_timers(messaging.relay.clone(), &shutdown);
    let context = Context {
        sagas: sagas.clone(),
        discovery,
        prices: Arc::new(Prices::new(Duration::from_millis(
            settings.catalog_cache_ms,
        ))),
        relay: messaging.relay.clone(),
        style: settings.saga_style,
    };
    let result = flotilla_discovery::serve_routes(
        SERVICE,
        &settings,
        listener,
        api::routes(context).merge(messaging.routes),
        shutdown,
    )
    .await;
    db.pool.close().await;
    result
}

/// `flotilla projections rebuild order`: rebuilds the order's read models from its events.
pub async fn rebuild_projections(
    settings: &Settings,
) -> Result<Vec<(&'static str, u64)>, flotilla_eventstore::Error> {
    let db = store::open(&settings.database_path(SERVICE)).await?;
    let rebuilt = projections::rebuild(&db.events).await;
    db.pool.close().await;
    rebuilt
}
