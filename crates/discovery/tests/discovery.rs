//! The discovery client against a real registry on loopback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use flotilla_discovery::Discovery;
use flotilla_testkit::{
    dead_address, register_instance, serve_instance, start_registry, wait_until,
};
use http::{HeaderMap, Method, StatusCode};
use tokio_util::sync::CancellationToken;

async fn registry(shutdown: &CancellationToken) -> String {
    // Probes are slowed down so that they cannot take the dead instance out of rotation in the
    // middle of a test: failover, not the prober, is under test here.
    start_registry(60_000, shutdown).await
}

/// An instance answering `GET /who` with its name.
async fn instance(name: &'static str) -> String {
    let router = Router::new().route("/who", get(move || async move { name }));
    serve_instance(router).await
}

async fn who(
    discovery: &Discovery,
    service: &str,
) -> Result<String, flotilla_discovery::DiscoveryError> {
    let (status, body) = discovery
        .send(
            service,
            Method::GET,
            "/who",
            &HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn calls_fail_over_from_a_dead_instance_to_a_live_one() {
    let shutdown = CancellationToken::new();
    let registry = registry(&shutdown).await;
    let live = instance("live").await;
    let dead = dead_address().await;
    let _live = register_instance(&registry, "inventory", &live, &shutdown).await;
    let _dead = register_instance(&registry, "inventory", &dead, &shutdown).await;

    let discovery = Discovery::new(&registry, Duration::from_secs(2), shutdown.clone());
    assert_eq!(discovery.instances("inventory").await.len(), 2);
    // Whichever instance the balancer picks first, every call must land on the live one.
    for _ in 0..6 {
        assert_eq!(
            who(&discovery, "inventory").await.expect("failover"),
            "live"
        );
    }
    // The dead instance was set aside (it is tried last), the live one not.
    let instances = discovery.instances("inventory").await;
    let id_of = |address: &str| {
        instances
            .iter()
            .find(|endpoint| endpoint.address == address)
            .map(|endpoint| endpoint.id.clone())
            .expect("registered")
    };
    assert!(discovery.is_set_aside("inventory", &id_of(&dead)));
    assert!(!discovery.is_set_aside("inventory", &id_of(&live)));
    shutdown.cancel();
}

#[tokio::test]
async fn calls_spread_over_instances() {
    let shutdown = CancellationToken::new();
    let registry = registry(&shutdown).await;
    let a = instance("a").await;
    let b = instance("b").await;
    let _a = register_instance(&registry, "payment", &a, &shutdown).await;
    let _b = register_instance(&registry, "payment", &b, &shutdown).await;
    let discovery = Discovery::new(&registry, Duration::from_secs(2), shutdown.clone());
    let mut seen: HashMap<String, usize> = HashMap::new();
    // Power of two choices between two idle instances is a coin toss: over 40 calls each
    // gets 8 or more but with a chance of about one in 100,000.
    for _ in 0..40 {
        *seen
            .entry(who(&discovery, "payment").await.expect("call"))
            .or_default() += 1;
    }
    assert!(seen.get("a").is_some_and(|n| *n >= 8), "{seen:?}");
    assert!(seen.get("b").is_some_and(|n| *n >= 8), "{seen:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn the_cache_learns_of_changes_through_the_watch_in_well_under_a_second() {
    let shutdown = CancellationToken::new();
    let registry = registry(&shutdown).await;
    let discovery = Discovery::new(&registry, Duration::from_secs(2), shutdown.clone());
    assert!(discovery.instances("shipping").await.is_empty());
    let error = who(&discovery, "shipping")
        .await
        .expect_err("nobody is registered");
    assert!(
        matches!(
            error,
            flotilla_discovery::DiscoveryError::NoInstances { .. }
        ),
        "{error}"
    );

    let address = instance("s").await;
    let started = Instant::now();
    let registration = register_instance(&registry, "shipping", &address, &shutdown).await;
    wait_until(Duration::from_secs(5), "shipping learned", || async {
        discovery.instances("shipping").await.len() == 1
    })
    .await;
    let learned = started.elapsed();
    assert!(learned < Duration::from_millis(500), "took {learned:?}");

    let started = Instant::now();
    registration.deregister().await;
    wait_until(Duration::from_secs(5), "shipping forgotten", || async {
        discovery.instances("shipping").await.is_empty()
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_fixed_table_provider_works_without_a_registry() {
    let address = instance("fixed").await;
    let discovery = Discovery::fixed(
        HashMap::from([("order".to_owned(), vec![dead_address().await, address])]),
        Duration::from_secs(2),
    );
    assert_eq!(who(&discovery, "order").await.expect("failover"), "fixed");
    assert!(discovery.instances("unknown").await.is_empty());
}

/// An instance answering `/who` with 503 for its first `failures` calls, then 200.
async fn failing_instance(failures: u32) -> String {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let router = Router::new().route(
        "/who",
        get(move || {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < failures {
                    (StatusCode::SERVICE_UNAVAILABLE, "down")
                } else {
                    (StatusCode::OK, "up")
                }
            }
        }),
    );
    serve_instance(router).await
}

#[tokio::test]
async fn with_resilience_calls_are_retried_and_a_failing_service_trips_its_breaker() {
    use flotilla_resilience::breaker::{BreakerConfig, Window};
    use flotilla_resilience::retry::RetryConfig;

    let shutdown = CancellationToken::new();
    let registry = registry(&shutdown).await;
    let flaky = failing_instance(1).await;
    let _flaky = register_instance(&registry, "inventory", &flaky, &shutdown).await;
    let broken = failing_instance(u32::MAX).await;
    let _broken = register_instance(&registry, "payment", &broken, &shutdown).await;
    let breaker = BreakerConfig {
        window: Window::Count { calls: 4 },
        minimum_calls: 4,
        ..BreakerConfig::default()
    };
    let discovery = Discovery::new(&registry, Duration::from_secs(2), shutdown.clone())
        .with_resilience(breaker, RetryConfig::default())
        .expect("valid");

    // One 503, then the retry succeeds.
    assert_eq!(who(&discovery, "inventory").await.expect("retried"), "up");

    // Every call fails: 3 attempts, then 1 more, and the breaker opens; then calls fail fast.
    let headers = HeaderMap::new();
    let send = || discovery.send("payment", Method::GET, "/who", &headers, Bytes::new());
    let (status, _) = send().await.expect("answered");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error = send()
        .await
        .expect_err("the breaker opened during the retries");
    assert!(
        matches!(error, flotilla_discovery::DiscoveryError::CircuitOpen(_)),
        "{error}"
    );
    let error = send().await.expect_err("fails fast");
    assert!(
        matches!(error, flotilla_discovery::DiscoveryError::CircuitOpen(_)),
        "{error}"
    );
    shutdown.cancel();
}
