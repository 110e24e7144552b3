//! The registry on HTTP, and the loops that keep it true.
//!
//! | method and path | meaning |
//! | --- | --- |
//! | `PUT /v1/registry/instances/{id}` | register (body: [`Registration`]) |
//! | `PUT /v1/registry/instances/{id}/heartbeat` | renew the lease; 404 means "register again" |
//! | `DELETE /v1/registry/instances/{id}` | deregister |
//! | `GET /v1/registry/services` | every instance by service |
//! | `GET /v1/registry/services/{name}?index=N&wait_ms=W` | blocking query: answers when the change index passes `N`, or after `W` ms (at most 60 s) with the same index |
//! | `GET /v1/registry/prometheus` | every instance's admin listener as Prometheus HTTP service discovery targets (`http_sd_configs`), labelled `service`, `instance_id`, `version`, `registry_status` |
//!
//! Writes (register, heartbeat, deregister) need a bearer token with the scope
//! `registry:write` when the registry knows an identity provider (`identity.url`, as under
//! `flotilla up`): 401 without a valid token, 403 without the scope. A platform process may
//! register only the service its client is named after (`order`'s token registers `order`
//! instances); an `admin` token may register any service (third-party registration, which the
//! prober keeps honest). An instance is held by whoever registered it: another token may not
//! renew, replace or remove it (403 `not-your-instance`), so a registered id cannot be taken
//! over at a new address. Without an identity provider the writes are open, and the registry
//! says so at start.
//!
//! Reads stay open (the catalog, the watch, and the Prometheus targets): they hold service names
//! and addresses, and every address it lists
//! checks its callers' tokens itself; the services' discovery caches and the operator's
//! `flotilla status` read it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use flotilla_identity::{IdentityConfig, Principal, Verifier};
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

/// The scope a token needs to write to the registry.
pub const WRITE_SCOPE: &str = "registry:write";

/// The registry's routes; writes are checked with `verifier` (open without one).
pub fn routes(registry: Registry, verifier: Option<Verifier>) -> Router {
    let writes = Router::new()
        .route(
            "/v1/registry/instances/{id}",
            put(register).delete(deregister),
        )
        .route("/v1/registry/instances/{id}/heartbeat", put(heartbeat))
        .with_state(Writes {
            registry: registry.clone(),
            verifier,
        });
    Router::new()
        .route("/v1/registry/services", get(list))
        .route("/v1/registry/services/{service}", get(watch))
        .route("/v1/registry/prometheus", get(prometheus_targets))
        .with_state(registry)
        .merge(writes)
}

/// What a write handler is given.
#[derive(Debug, Clone)]
struct Writes {
    registry: Registry,
    verifier: Option<Verifier>,
}

impl Writes {
    /// The writer's token, checked: `None` when the registry checks no credential, the
    /// principal when the token verifies and carries [`WRITE_SCOPE`], the refusal otherwise.
    async fn writer(&self, headers: &HeaderMap) -> Result<Option<Principal>, Response> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let principal = verifier
            .verify_headers(headers)
            .await
            .map_err(IntoResponse::into_response)?;
        principal
            .require_scope(WRITE_SCOPE)
            .map_err(IntoResponse::into_response)?;
        Ok(Some(principal))
    }
}

/// `Ok` if `writer` may register instances of `service`: an admin any, another principal the
/// service named as its subject only.
fn may_register(writer: &Principal, service: &str) -> Result<(), Response> {
    if writer.has_role("admin") || writer.subject == service {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "not-your-service",
        format!(
            "`{}` may register instances of its own service only, not of `{service}`",
            writer.subject
        ),
    )
    .into_response())
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
            RegistryError::NotHolder(_) => Problem::new(
                StatusCode::FORBIDDEN,
                "not-your-instance",
                error.to_string(),
            ),
        }
    }
}

async fn register(
    State(writes): State<Writes>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(registration): Json<Registration>,
) -> Result<axum::Json<Instance>, Response> {
    let writer = writes.writer(&headers).await?;
    if let Some(writer) = &writer {
        may_register(writer, &registration.service)?;
    }
    let holder = writer.as_ref().map(|w| w.subject.as_str());
    let instance = writes
        .registry
        .register_held(&id, registration, holder)
        .map_err(|e| Problem::from(e).into_response())?;
    tracing::info!(instance = %instance.id, service = %instance.service, address = %instance.address, "registered");
    Ok(axum::Json(instance))
}

async fn heartbeat(
    State(writes): State<Writes>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Response> {
    let writer = writes.writer(&headers).await?;
    let holder = writer.as_ref().map(|w| w.subject.as_str());
    writes
        .registry
        .heartbeat_held(&id, holder)
        .map_err(|e| Problem::from(e).into_response())?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deregister(
    State(writes): State<Writes>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Response> {
    let writer = writes.writer(&headers).await?;
    let holder = writer.as_ref().map(|w| w.subject.as_str());
    let instance = writes
        .registry
        .deregister_held(&id, holder)
        .map_err(|e| Problem::from(e).into_response())?;
    tracing::info!(instance = %instance.id, service = %instance.service, "deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// One group of Prometheus HTTP service discovery targets.
#[derive(Debug, Serialize)]
struct TargetGroup {
    targets: [String; 1],
    labels: BTreeMap<&'static str, String>,
}

/// Every instance that publishes an admin listener (`admin_address`: where its `/metrics` is),
/// in the format of Prometheus's `http_sd_configs`.
async fn prometheus_targets(State(registry): State<Registry>) -> axum::Json<Vec<TargetGroup>> {
    let (_, services) = registry.all();
    let groups = services
        .into_iter()
        .flat_map(|(service, instances)| {
            instances.into_iter().filter_map(move |instance| {
                let admin = instance.metadata.get("admin_address")?.clone();
                let mut labels = BTreeMap::from([
                    ("service", service.clone()),
                    ("instance_id", instance.id.clone()),
                    (
                        "registry_status",
                        match instance.status {
                            Status::Passing => "passing",
                            Status::Critical => "critical",
                        }
                        .to_owned(),
                    ),
                ]);
                if let Some(version) = instance.metadata.get("version") {
                    labels.insert("version", version.clone());
                }
                Some(TargetGroup {
                    targets: [admin],
                    labels,
                })
            })
        })
        .collect();
    axum::Json(groups)
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
    /// The identity provider whose tokens writes must carry (`identity.url`); without one the
    /// writes are open.
    pub identity: IdentityConfig,
}

/// Runs the registry on `listener` until `shutdown`: the HTTP API, the sweeper and the prober.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let settings = &config.registry;
    let registry = Registry::new(Duration::from_millis(settings.ttl_ms));
    metrics::describe_gauge!(
        crate::model::INSTANCES,
        metrics::Unit::Count,
        "Registered instances, by service and status (passing, critical)"
    );
    let verifier = config
        .identity
        .verifier()
        .map_err(|invalid| std::io::Error::other(invalid.to_string()))?;
    if verifier.is_none() {
        tracing::warn!(
            "identity.url is not set: the registry takes registrations from anyone who can reach it"
        );
    }
    let health = flotilla_kit::Health::new();
    let router = flotilla_kit::App::new(health.clone())
        .max_body_bytes(config.server.max_body_bytes)
        .routes(routes(registry.clone(), verifier.clone()))
        .into_router();
    // `/metrics` on the admin listener, behind a token with `metrics:read`.
    let admin = flotilla_identity::admin::serve(
        config.server.admin_listen,
        flotilla_kit::app::admin_routes(None),
        verifier,
        config.server.connection_limits(),
        shutdown.clone(),
    )
    .await?;
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
    tracing::info!(address = %listener.local_addr()?, admin = %admin.address, "registry listening");
    let drain = shutdown.clone();
    let limits = config.server.connection_limits();
    flotilla_kit::serve(listener, router, limits, async move {
        drain.cancelled().await;
        health.set_ready(false);
        registry.close();
    })
    .await
}
