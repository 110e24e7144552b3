//! The life of a registered process.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use flotilla_kit::{App, Health, Routers};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{InstanceConfig, Registration, Spec};

/// Serves `routers` on `listener` as an instance of `service` until `shutdown`, in this order:
///
/// The registration's metadata always carries `pid` and `version`.
///
/// 1. start serving (so the registry's probe can reach us);
/// 2. register with the registry named in `config` (if any) and start heart-beating;
/// 3. be ready (from the registration request on, see [`Registration::start`]);
/// 4. on shutdown: become not ready, deregister (so clients stop picking us), then stop
///    accepting and drain in-flight requests, for at most `shutdown_grace_ms`.
pub async fn serve(
    service: &str,
    mut metadata: BTreeMap<String, String>,
    config: &InstanceConfig,
    listener: TcpListener,
    routers: Routers,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let address = format!("{}:{port}", config.server.advertise_host);
    metadata
        .entry("pid".to_owned())
        .or_insert_with(|| std::process::id().to_string());
    metadata
        .entry("version".to_owned())
        .or_insert_with(|| env!("CARGO_PKG_VERSION").to_owned());
    let drain = CancellationToken::new();
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
/// kit's stack ([`App`]) as an instance of `service`: marks start-up done, then runs [`serve`].
/// Call it once start-up work (opening the database) is done.
pub async fn serve_routes(
    service: &str,
    config: &InstanceConfig,
    listener: TcpListener,
    api: Router,
    unguarded: Router,
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
    let routes = flotilla_identity::guard::guard(api, verifier).merge(unguarded);
    let health = Health::new();
    let router = app(config, &health).routes(routes).into_router();
    health.set_started();
    serve(
        service,
        BTreeMap::new(),
        config,
        listener,
        Routers::one(router),
        health,
        shutdown,
    )
    .await
}

/// The kit's stack as `config` sets it (body limit, fault injection), with the probes of
/// `health` and no routes yet.
pub fn app(config: &InstanceConfig, health: &Health) -> App {
    App::new(health.clone())
        .max_body_bytes(config.server.max_body_bytes)
        .fault_injection(config.server.fault_injection)
}
