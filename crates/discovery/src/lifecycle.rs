//! The life of a registered process.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use flotilla_kit::{App, Health, Routers};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{InstanceConfig, Registration, Spec};

/// What a process serves: its public routers, and its admin listener's routes.
#[derive(Debug)]
pub struct Listeners {
    /// The public listener's routers (one per worker).
    pub routers: Routers,
    /// `/metrics` and `/admin/*` ([`flotilla_kit::app::admin_routes`], plus the process's
    /// own), served behind an operator's token.
    pub admin: Router,
    /// The process's verifier of tokens (the one its own routes check callers with, shared so
    /// that a process fetches and caches the provider's keys once); `None`: the admin listener
    /// refuses everything.
    pub verifier: Option<flotilla_identity::Verifier>,
}

/// Serves `routers` on `listener` as an instance of `service` until `shutdown`, and `admin`
/// (`/metrics`, `/admin/*`: see [`flotilla_kit::app::admin_routes`]) on the admin listener
/// (`admin_listen`), behind an operator's token ([`flotilla_identity::admin`]), in this order:
///
/// The registration's metadata always carries `pid`, `version` and `admin_address`.
///
/// 1. start serving, both listeners (so the registry's probe can reach us);
/// 2. register with the registry named in `config` (if any) and start heart-beating;
/// 3. be ready (from the registration request on, see [`Registration::start`]);
/// 4. on shutdown: become not ready, deregister (so clients stop picking us), then stop
///    accepting and drain in-flight requests, for at most `shutdown_grace_ms`.
pub async fn serve(
    service: &str,
    mut metadata: BTreeMap<String, String>,
    config: &InstanceConfig,
    listener: TcpListener,
    Listeners {
        routers,
        admin,
        verifier,
    }: Listeners,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    crate::outbound::describe_metrics();
    let port = listener.local_addr()?.port();
    let address = format!("{}:{port}", config.server.advertise_host);
    let drain = CancellationToken::new();
    let admin = flotilla_identity::admin::serve(
        config.server.admin_listen,
        admin,
        verifier,
        config.server.connection_limits(),
        drain.clone(),
    )
    .await?;
    metadata.insert(
        "admin_address".to_owned(),
        format!("{}:{}", config.server.advertise_host, admin.address.port()),
    );
    metadata
        .entry("pid".to_owned())
        .or_insert_with(|| std::process::id().to_string());
    metadata
        .entry("version".to_owned())
        .or_insert_with(|| env!("CARGO_PKG_VERSION").to_owned());
    let workers = routers.workers();
    let server = tokio::spawn(flotilla_kit::serve_workers(
        listener,
        routers,
        config.server.connection_limits(),
        drain.clone(),
    ));
    tracing::info!(%service, %address, workers, "listening");

    let registration = match &config.discovery.registry_url {
        Some(registry) => {
            let spec = Spec {
                registry,
                service,
                address: &address,
                metadata,
                heartbeat: config.lease.heartbeat,
                ttl: config.lease.ttl,
                token: config.identity.token_source(),
            };
            Registration::start(spec, &health, &shutdown).await
        }
        None => None,
    };
    if !shutdown.is_cancelled() {
        // Registered (or running without a registry): ready.
        health.set_ready(true);
        shutdown.cancelled().await;
    }

    health.not_ready(
        "shutdown",
        "stopping: deregistering, then draining in-flight requests",
    );
    health.set_ready(false);
    if let Some(registration) = registration {
        registration.deregister().await;
    }
    drain.cancel();
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish in time; stopping anyway"
            );
            Ok(())
        }
    }
}

/// Serves a service's `api` routes, each request checked for a caller's token
/// ([`flotilla_identity::guard`], with the verifier of `config.identity`), and its `unguarded`
/// routes (the transport's push endpoint, which checks a credential of its own), inside the
/// kit's stack ([`App`]) as an instance of `service`, with the probes of `health`: marks
/// start-up done, then runs [`serve`]. Call it once start-up work (opening the database,
/// subscribing) is done; [`starting`] serves the probes until then.
pub async fn serve_routes(
    service: &str,
    config: &InstanceConfig,
    listener: TcpListener,
    api: Router,
    unguarded: Router,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let verifier = config
        .identity
        .verifier()
        .map_err(|invalid| std::io::Error::other(invalid.to_string()))?;
    if verifier.is_none() {
        tracing::warn!(
            %service,
            "identity.url is not set: every call to the API is refused (503) for want of a token checker"
        );
    }
    let routes = flotilla_identity::guard::guard(api, verifier.clone()).merge(unguarded);
    let faults = config
        .server
        .fault_injection
        .then(flotilla_kit::faults::Faults::default);
    let router = app(config, &health, faults.clone())
        .routes(routes)
        .into_router();
    health.set_started();
    serve(
        service,
        BTreeMap::new(),
        config,
        listener,
        Listeners {
            routers: Routers::one(router),
            admin: flotilla_kit::app::admin_routes(faults.as_ref()),
            verifier,
        },
        health,
        shutdown,
    )
    .await
}

/// Serves the probes of `health` on `listener` while the process starts
/// ([`flotilla_kit::serve_starting`]): `/startupz` says which step is under way. Stopped when
/// dropped, or by [`serve_routes`] taking over the listener.
pub fn starting(
    config: &InstanceConfig,
    listener: &TcpListener,
    health: &Health,
) -> std::io::Result<flotilla_kit::Starting> {
    flotilla_kit::serve_starting(listener, health, config.server.connection_limits())
}

/// The kit's stack as `config` sets it (body limit), applying `faults` (made when the
/// `fault_injection` setting is on, and set on the admin listener), with the probes of `health`
/// and no routes yet.
pub fn app(
    config: &InstanceConfig,
    health: &Health,
    faults: Option<flotilla_kit::faults::Faults>,
) -> App {
    App::new(health.clone())
        .max_body_bytes(config.server.max_body_bytes)
        .faults(faults)
}
