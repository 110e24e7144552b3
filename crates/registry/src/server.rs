//! The registry on HTTP, and the loops that keep it true.
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `PUT /v1/registry/instances/{id}` | register (body: [`Registration`]) |
//! | `PUT /v1/registry/instances/{id}/heartbeat` | renew the lease; 404 means "register again" |
//! | `DELETE /v1/registry/instances/{id}` | deregister |
//! | `GET /v1/registry/services` | every instance by service |
//! | `GET /v1/registry/services/{name}?index=N&wait_ms=W` | blocking query: answers when the change index passes `N`, or after `W` ms (at most 60 s) with the same index |
//!
//! Third-party registration is the same `PUT`: anything may register an instance on another's
//! behalf, and the prober keeps it honest.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use flotilla_kit::client;
use flotilla_kit::{Json, Problem, Query, ServerSettings};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::model::RegistryError;
use crate::{Instance, Registration, Registry, RegistrySettings, Status};

/// Header carrying the change index of a blocking-query answer.
pub const INDEX_HEADER: &str = "x-flotilla-index";

/// Longest a blocking query may wait.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The registry's routes.
pub fn routes(registry: Registry) -> Router {
    Router::new()
        .route("/v1/registry/services", get(list))
        .route("/v1/registry/services/{service}", get(watch))
        .route(
            "/v1/registry/instances/{id}",
            put(register).delete(deregister),
        )
        .route("/v1/registry/instances/{id}/heartbeat", put(heartbeat))
        .with_state(registry)
}

impl From<RegistryError> for Problem {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::UnknownInstance(_) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown-instance", error.to_string())
            }
            RegistryError::Invalid(_) => {
                Problem::unprocessable("invalid-registration", error.to_string())
            }
        }
    }
}

async fn register(
    State(registry): State<Registry>,
    Path(id): Path<String>,
    Json(registration): Json<Registration>,
) -> Result<axum::Json<Instance>, Problem> {
    let instance = registry.register(&id, registration)?;
    tracing::info!(instance = %instance.id, service = %instance.service, address = %instance.address, "registered");
    Ok(axum::Json(instance))
}

async fn heartbeat(
    State(registry): State<Registry>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    registry.heartbeat(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deregister(
    State(registry): State<Registry>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let instance = registry.deregister(&id)?;
    tracing::info!(instance = %instance.id, service = %instance.service, "deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// Every registered instance, by service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    /// The change index.
    pub index: u64,
    /// Instances by service name.
    pub services: BTreeMap<String, Vec<Instance>>,
}

async fn list(State(registry): State<Registry>) -> Response {
    let (index, services) = registry.all();
    with_index(index, axum::Json(Catalog { index, services }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    index: Option<u64>,
    wait_ms: Option<u64>,
}

async fn watch(
    State(registry): State<Registry>,
    Path(service): Path<String>,
    Query(query): Query<WatchQuery>,
) -> Response {
    if let Some(seen) = query.index {
        let wait = Duration::from_millis(query.wait_ms.unwrap_or(30_000)).min(MAX_WAIT);
        registry.wait_for_change(seen, wait).await;
    }
    let snapshot = registry.snapshot(&service);
    with_index(snapshot.index, axum::Json(snapshot))
}

fn with_index(index: u64, body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    response
}

/// Evicts expired leases every tenth of the shortest interval that matters.
pub async fn sweep(registry: Registry, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for instance in registry.evict_expired() {
            tracing::warn!(instance = %instance.id, service = %instance.service, "evicted: lease expired");
        }
    }
}

/// Probes every instance's `/readyz` each `every`; a failed probe takes the instance out of
/// rotation at once, a passing one brings it back.
///
/// Each instance is probed on its own: a slow instance (its probe waits up to `timeout`) delays
/// nobody else's verdict, and an instance is never probed twice at once.
pub async fn probe(
    registry: Registry,
    every: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let http = client::client();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    // The first round comes one interval after start, not at once.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for (id, address) in registry.probe_targets() {
            if !lock(&in_flight).insert(id.clone()) {
                continue;
            }
            let (http, registry, in_flight) = (http.clone(), registry.clone(), in_flight.clone());
            tokio::spawn(async move {
                let url = format!("http://{address}/readyz");
                let status = match client::send(
                    &http,
                    http::Method::GET,
                    &url,
                    None::<&()>,
                    timeout,
                )
                .await
                {
                    Ok((status, _)) if status.is_success() => Status::Passing,
                    Ok(_) | Err(_) => Status::Critical,
                };
                registry.set_status(&id, status);
                lock(&in_flight).remove(&id);
            });
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// What the registry reads: the server section and its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The server section (the registry reads `max_body_bytes` and the connection limits).
    pub server: ServerSettings,
    /// The lease and the probes.
    pub registry: RegistrySettings,
}

/// Runs the registry on `listener` until `shutdown`: the HTTP API, the sweeper and the prober.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let settings = &config.registry;
    let registry = Registry::new(Duration::from_millis(settings.ttl_ms));
    let health = flotilla_kit::Health::new();
    let router = flotilla_kit::App::new(health.clone())
        .max_body_bytes(config.server.max_body_bytes)
        .routes(routes(registry.clone()))
        .into_router();
    let sweep_every = Duration::from_millis((settings.heartbeat_ms / 5).clamp(10, 100));
    tokio::spawn(sweep(registry.clone(), sweep_every, shutdown.clone()));
    tokio::spawn(probe(
        registry.clone(),
        Duration::from_millis(settings.probe_interval_ms),
        Duration::from_millis(settings.probe_timeout_ms),
        shutdown.clone(),
    ));
    health.set_started();
    health.set_ready(true);
    tracing::info!(address = %listener.local_addr()?, "registry listening");
    let drain = shutdown.clone();
    let limits = config.server.connection_limits();
    flotilla_kit::serve(listener, router, limits, async move {
        drain.cancelled().await;
        health.set_ready(false);
        registry.close();
    })
    .await
}
