//! The API gateway: the one door of the system.
//!
//! It is one tower stack ([`stack`]), assembled in one place and read top to bottom:
//!
//! * server layers: [`edge`] (request id, a debug span, the gateway's own problems stamped
//!   with the request id: what the kit's layers do for a process's own routes, without their
//!   per-request costs), then [`access`] (one line and the route's metrics per request) and
//!   [`inbound`] (the path normalised before a
//!   route is chosen; a declared body over `max_body_bytes` is 413 before it is read; a body
//!   that is small and of known length, up to [`inbound::REPLAY_LIMIT`], is held so that the
//!   request can be sent again; a body that breaks off is 400 — a client's fault, never the
//!   upstream's);
//! * the route ([`routes::Routes`], read from the route file: path prefix or template, host,
//!   method, headers, API version);
//! * the route's policies: [`auth`] (a valid bearer token, roles and scopes, unless the route
//!   is public; identity headers from clients removed), [`ratelimit`] (a token bucket and a
//!   quota per client and route, 429 with `RateLimit` headers), [`transform`] (headers, path rewrite, JSON fields), [`fallback`]
//!   (error, cached, default, another service, or queue for later with [`deferred`]), the
//!   call's deadline, then the upstream's client stack from [`flotilla_discovery::outbound`]:
//!   retry of safe requests within a budget, circuit breaker, bulkhead, load balancer (power of
//!   two choices, weights, canary pin, outlier ejection), endpoint with failover;
//! * `x-request-id` is set if missing and forwarded; W3C `traceparent` is continued (same
//!   trace, new parent id) or started; every answer the gateway makes itself is problem+json;
//! * operator controls of the breakers ([`admin`], when `admin_api` is on).
//!
//! The listener itself (header and idle timeouts, head limits, `Host` rules) is the kit's
//! ([`flotilla_kit::server`]), shared by every process. The gateway serves it with one worker
//! per core (`workers`): each a thread with a current-thread runtime, its own connection pool
//! and route stacks ([`Gateway::worker`]), the upstreams' state (breakers, balancers,
//! bulkheads) and the route table shared by all.
//!
//! What it reads is [`Config`]: its own keys ([`GatewaySettings`]) and the sections of the
//! crates it builds on.

pub mod access;
pub mod admin;
pub mod auth;
pub mod deferred;
pub mod edge;
pub mod fallback;
pub mod inbound;
pub mod ratelimit;
pub mod routes;
pub mod settings;
pub mod stack;
pub mod transform;

use std::collections::BTreeMap;

use flotilla_discovery::Discovery;
use flotilla_kit::{Health, Routers};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use settings::{Config, GatewaySettings};
pub use stack::Gateway;

/// Runs the gateway on `listener` until `shutdown`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    let found = &config.instance.discovery;
    let registry = found.registry_url.clone().ok_or_else(|| {
        invalid(
            "the gateway needs `registry_url` (FLOTILLA_REGISTRY_URL) to find the services"
                .to_owned(),
        )
    })?;
    // The breakers register their metrics when made: the recorder must exist first.
    flotilla_kit::metrics::handle();
    let timeout = found.request_timeout();
    let routes = match &config.gateway.routes_file {
        Some(path) => routes::Routes::load(path).map_err(|e| invalid(e.to_string()))?,
        None => routes::Routes::default(),
    };
    let queueing = stack::queueing_services(&routes, &config.gateway.queue_for_later);
    let deferred = deferred::Deferred::open(&config, queueing)
        .await
        .map_err(std::io::Error::other)?;
    let verifier = config
        .instance
        .identity
        .verifier()
        .map_err(|error| invalid(error.to_string()))?;
    let discovery = Discovery::new(&registry, timeout, shutdown.clone());
    let settings = stack::Settings {
        timeout,
        breaker: config.resilience.breaker.clone(),
        retry: config.resilience.retry.clone(),
        max_body_bytes: config.instance.server.max_body_bytes as u64,
        queue_for_later: config.gateway.queue_for_later.clone(),
        access: access::AccessSettings {
            enabled: config.gateway.access_log,
            sample: config.gateway.access_log_sample,
            json: flotilla_kit::telemetry::is_json(config.instance.server.log_format),
        },
        verifier: verifier.clone(),
        own_token: config.instance.identity.token_source(),
        rate_limit: config.gateway.rate_limit.clone(),
    };
    let gateway = Gateway::new(discovery, routes, settings, deferred).map_err(invalid)?;
    for service in gateway.deferred_services() {
        tokio::spawn(gateway.clone().replay(service, shutdown.clone()));
    }
    let workers = config.gateway.worker_count();
    let health = Health::new();
    // One set of faults for every worker, set on the admin listener.
    let faults = config
        .instance
        .server
        .fault_injection
        .then(flotilla_kit::faults::Faults::default);
    let mut admin_routes = flotilla_kit::app::admin_routes(faults.as_ref());
    if config.gateway.admin_api {
        admin_routes = admin_routes.merge(admin::routes(gateway.clone()));
    }
    let routers = {
        let (instance, health) = (config.instance.clone(), health.clone());
        // Called on each worker's thread: its own pool and stacks.
        Routers::per_worker(workers, move || {
            let gateway = gateway.worker();
            flotilla_discovery::app(&instance, &health, faults.clone())
                .routes(gateway.router())
                .proxy(gateway.service())
                .into_router()
        })
    };
    health.set_started();
    let served = flotilla_discovery::serve(
        "gateway",
        BTreeMap::new(),
        &config.instance,
        listener,
        flotilla_discovery::Listeners {
            routers,
            admin: admin_routes,
            verifier,
        },
        health,
        shutdown,
    )
    .await;
    access::flush();
    served
}
