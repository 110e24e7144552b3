//! A registry of a test's own on a loopback port, for the tests of the crates that talk to one
//! (discovery, the gateway, the embedded transport), and an instance's registration with it on
//! a test's time scale. What an instance serves is the test's business.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_discovery::{Registration, Spec};
use flotilla_kit::Health;
use flotilla_registry::RegistrySettings;
use flotilla_registry::server::{Config, run};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Starts a registry on `127.0.0.1:0` that probes its instances every `probe_interval_ms`
/// and runs until `shutdown` is cancelled; returns its base URL (`http://127.0.0.1:PORT`).
///
/// Tests that kill instances on purpose pass a long interval, so that the prober cannot take
/// a dead instance out of rotation in the middle of the test.
pub async fn start_registry(probe_interval_ms: u64, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let config = Config {
        registry: RegistrySettings {
            probe_interval_ms,
            ..RegistrySettings::default()
        },
        ..Default::default()
    };
    tokio::spawn(run(config, listener, shutdown.clone()));
    url
}

/// Registers `address` as an instance of `service` with the registry at `registry`, without
/// metadata, heartbeating every 500 ms with a 1.5 s time to live (so a test sees an instance
/// expire quickly), until `shutdown` is cancelled or the registration dropped.
pub async fn register_instance(
    registry: &str,
    service: &str,
    address: &str,
    shutdown: &CancellationToken,
) -> Registration {
    register_instance_with(registry, service, address, BTreeMap::new(), shutdown).await
}

/// [`register_instance`] with `metadata` (a `version`, say).
pub async fn register_instance_with(
    registry: &str,
    service: &str,
    address: &str,
    metadata: BTreeMap<String, String>,
    shutdown: &CancellationToken,
) -> Registration {
    Registration::start(
        Spec {
            registry,
            service,
            address,
            metadata,
            heartbeat: Duration::from_millis(500),
            ttl: Duration::from_millis(1_500),
            token: None,
        },
        &Health::new(),
        shutdown,
    )
    .await
    .expect("registered")
}
