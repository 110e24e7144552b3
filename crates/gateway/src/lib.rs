//! The API gateway: the one door of the system.
//!
//! It routes by the route file ([`routes::Routes`]: path prefix or template, host, method,
//! headers, API version) to the services it finds through discovery, and forwards over hyper
//! ([`proxy`]):
//!
//! * request and response bodies stream; a request body that is small and of known length
//!   (up to [`proxy::REPLAY_LIMIT`]) is held so that the request can fail over to another
//!   instance when one refuses the connection (Envoy makes the same trade with its retry buffer);
//! * every request gets a deadline to the response head (`request_timeout_ms`);
//! * `x-request-id` is set if missing and forwarded; W3C `traceparent` is continued (same trace,
//!   new parent id) or started;
//! * no instance → 503, no instance reachable → 502, deadline passed → 504, all problem+json;
//! * a circuit breaker per upstream service (`breaker`): 5xx, unreachable instances
//!   and timeouts count as failures; while it is open the gateway answers at once with 503
//!   `/problems/circuit-open` and `Retry-After`, without calling the service;
//! * a retry policy per upstream service (`retry`): requests safe to repeat (idempotent
//!   method or `Idempotency-Key`, replayable body) are retried after 502/503/504 or a transport
//!   failure, with full-jitter backoff, within a retry budget; every attempt passes the breaker;
//! * queue for later ([`deferred`]): for the services named in `queue_for_later`, a write with
//!   an `Idempotency-Key` that meets an open breaker is stored and answered 202; it is replayed
//!   in order when the service takes calls again;
//! * a client's faults stay the client's ([`inbound`]): the path is normalised before a route is
//!   chosen, a body over `max_body_bytes` is 413 (before reading a declared one), a body that
//!   breaks off is 400, and none of them counts against the upstream's breaker;
//! * operator controls of the breakers ([`admin`], when `admin_api` is on).
//!
//! The listener itself (header and idle timeouts, head limits, `Host` rules) is the kit's
//! ([`flotilla_kit::server`]), shared by every process.
//!
//! What it reads is [`Config`]: its own keys ([`GatewaySettings`]) and the sections of the
//! crates it builds on.

pub mod access;
pub mod admin;
pub mod deferred;
pub mod fallback;
pub mod inbound;
pub mod routes;
pub mod settings;
pub mod stack;
pub mod transform;

use flotilla_discovery::Discovery;
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
    };
    let gateway = Gateway::new(discovery, routes, settings, deferred).map_err(invalid)?;
    for service in gateway.deferred_services() {
        tokio::spawn(gateway.clone().replay(service, shutdown.clone()));
    }
    let mut router = gateway.router();
    if config.gateway.admin_api {
        router = router.merge(admin::routes(gateway.clone()));
    }
    flotilla_discovery::serve_routes("gateway", &config.instance, listener, router, shutdown).await
}
