//! Load balancing through the whole gateway: version weights, the canary pin, power of two
//! choices, passive outlier ejection.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_discovery::Registration;
use flotilla_testkit::register_instance_with;
use http::StatusCode;

use super::harness::*;

/// Registers `address` as an instance of `service` at `version`.
async fn register_version(
    harness: &Harness,
    service: &str,
    address: &str,
    version: &str,
) -> Registration {
    let metadata = BTreeMap::from([("version".to_owned(), version.to_owned())]);
    register_instance_with(
        &harness.registry,
        service,
        address,
        metadata,
        &harness.shutdown,
    )
    .await
}

/// Sends `total` GETs of `path`, `concurrency` at a time, and counts the answers by `from`.
async fn spread(
    harness: &Harness,
    path: &str,
    headers: &[(&str, &str)],
    total: usize,
    concurrency: usize,
) -> BTreeMap<String, usize> {
    let url = format!("{}{path}", harness.gateway);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (url, headers) = (url.clone(), headers.clone());
        let share = total / concurrency + usize::from(worker < total % concurrency);
        workers.spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            let mut counts = BTreeMap::<String, usize>::new();
            for _ in 0..share {
                let (status, _, body) = call(http::Method::GET, &url, &headers, Vec::new()).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let from = body["from"].as_str().unwrap_or("?").to_owned();
                *counts.entry(from).or_default() += 1;
            }
            counts
        });
    }
    let mut counts = BTreeMap::new();
    while let Some(done) = workers.join_next().await {
        for (from, n) in done.expect("worker") {
            *counts.entry(from).or_default() += n;
        }
    }
    counts
}

/// Waits until both versions have answered through the gateway (the registry's news takes a
/// moment to reach it).
async fn wait_for_both(harness: &Harness, path: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let counts = spread(harness, path, &[("x-canary", "always")], 1, 1).await;
        let canary = counts.contains_key("v2");
        let counts = spread(harness, path, &[("x-canary", "never")], 1, 1).await;
        if canary && counts.contains_key("v1") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both versions never showed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both instances of `catalog` have answered `/v1/items` through the gateway.
async fn wait_for_two(harness: &Harness) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while spread(harness, "/v1/items", &[], 20, 2).await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "one instance never showed"
        );
    }
}

const CANARY: &str = r#"
[[routes]]
name = "items"
service = "catalog"
path = "/v1/items"

[upstreams.catalog]
weights = { v1 = 90, v2 = 10 }
"#;

#[tokio::test]
async fn weights_split_traffic_by_version_within_five_points_over_two_thousand_requests() {
    let harness = harness_routes(CANARY).await;
    let (stable, _) = named_upstream("v1").await;
    let (canary, _) = named_upstream("v2").await;
    let _v1 = register_version(&harness, "catalog", &stable, "v1").await;
    let _v2 = register_version(&harness, "catalog", &canary, "v2").await;
    wait_for_both(&harness, "/v1/items").await;
    let counts = spread(&harness, "/v1/items", &[], 2_000, 16).await;
    let total: usize = counts.values().sum();
    assert_eq!(total, 2_000);
    let share = counts.get("v2").copied().unwrap_or(0) as f64 / total as f64;
    assert!(
        (share - 0.10).abs() <= 0.05,
        "v2 took {:.1} % of the requests, not 10 % ± 5: {counts:?}",
        share * 100.0
    );
}

#[tokio::test]
async fn the_canary_header_pins_a_request_to_the_canary_or_away_from_it() {
    let harness = harness_routes(CANARY).await;
    let (stable, _) = named_upstream("v1").await;
    let (canary, _) = named_upstream("v2").await;
    let _v1 = register_version(&harness, "catalog", &stable, "v1").await;
    let _v2 = register_version(&harness, "catalog", &canary, "v2").await;
    wait_for_both(&harness, "/v1/items").await;
    let always = spread(&harness, "/v1/items", &[("x-canary", "always")], 60, 4).await;
    assert_eq!(always, BTreeMap::from([("v2".to_owned(), 60)]));
    let never = spread(&harness, "/v1/items", &[("x-canary", "Never")], 60, 4).await;
    assert_eq!(never, BTreeMap::from([("v1".to_owned(), 60)]));
}

#[tokio::test]
async fn power_of_two_choices_sends_more_to_a_fast_instance_than_to_a_slow_one() {
    let harness = harness_routes(
        r#"
[[routes]]
name = "items"
service = "catalog"
path = "/v1/items"

[upstreams.catalog]
balance = "p2c"
"#,
    )
    .await;
    let (fast, _) = named_upstream("fast").await;
    let (slow, slow_switch) = named_upstream("slow").await;
    let _fast = register(&harness, "catalog", &fast).await;
    let _slow = register(&harness, "catalog", &slow).await;
    // Both in the gateway's view before the slow one turns slow.
    wait_for_two(&harness).await;
    slow_switch.delay_ms.store(50, Ordering::SeqCst);
    let counts = spread(&harness, "/v1/items", &[], 400, 8).await;
    let (fast, slow) = (counts["fast"], counts.get("slow").copied().unwrap_or(0));
    assert!(
        fast >= 3 * slow,
        "the fast instance should take most requests: {counts:?}"
    );
}

#[tokio::test]
async fn an_instance_failing_in_a_row_is_ejected_then_taken_back() {
    let harness = harness_routes(
        r#"
[[routes]]
name = "items"
service = "catalog"
path = "/v1/items"

[upstreams.catalog]
balance = "round_robin"
ejection = { consecutive_failures = 3, base_ms = 1000, max_ms = 10000, max_percent = 50 }
breaker = { window = { kind = "count", calls = 1000 }, minimum_calls = 1000 }
"#,
    )
    .await;
    let (good, _) = named_upstream("good").await;
    let (bad, bad_switch) = named_upstream("bad").await;
    let _good = register(&harness, "catalog", &good).await;
    let _bad = register(&harness, "catalog", &bad).await;
    wait_for_two(&harness).await;
    let before = bad_switch.calls();
    bad_switch.fail(true);
    // Each GET that meets the bad instance is retried on the good one: the client sees 200.
    let counts = spread(&harness, "/v1/items", &[], 20, 1).await;
    assert_eq!(counts, BTreeMap::from([("good".to_owned(), 20)]));
    let calls = bad_switch.calls() - before;
    assert!(
        (3..=4).contains(&calls),
        "ejected after 3 failures in a row, not {calls}"
    );
    let counts = spread(&harness, "/v1/items", &[], 20, 1).await;
    assert_eq!(counts, BTreeMap::from([("good".to_owned(), 20)]));
    assert_eq!(
        bad_switch.calls() - before,
        calls,
        "an ejected instance gets nothing"
    );

    let metrics = harness.metrics().await;
    assert!(
        metrics.contains("upstream_ejections_total{service=\"catalog\"} 1"),
        "{metrics}"
    );
    // Counted by route and upstream, bounded labels, with HELP text.
    for line in [
        "# HELP upstream_ejections_total ",
        "# HELP gateway_route_requests_total ",
        "# HELP gateway_route_duration_seconds ",
        "gateway_route_requests_total{route=\"items\",class=\"2xx\"}",
        "gateway_upstream_requests_total{service=\"catalog\",outcome=\"ok\"}",
        "upstream_retries_total{service=\"catalog\"}",
    ] {
        assert!(metrics.contains(line), "no `{line}` in {metrics}");
    }

    bad_switch.fail(false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let counts = spread(&harness, "/v1/items", &[], 20, 1).await;
    assert!(
        counts.get("bad").copied().unwrap_or(0) >= 5,
        "taken back after its ejection: {counts:?}"
    );
}
