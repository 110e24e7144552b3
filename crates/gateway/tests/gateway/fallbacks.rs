//! Each fallback of the route file, through the whole gateway: what a route answers when its
//! upstream cannot.

use std::time::Duration;

use flotilla_testkit::dead_address;
use http::{Method, StatusCode};

use super::harness::*;

/// A breaker that stays closed through a test's failures: the fallbacks are under test.
const PATIENT: &str = r#"
[upstreams.catalog]
breaker = { window = { kind = "count", calls = 1000 }, minimum_calls = 1000 }
retry = { max_attempts = 1 }
"#;

/// A gateway whose route `items` (`/v1/items` → `catalog`) falls back as `fallback` says
/// (the inside of its inline table), behind a [`PATIENT`] breaker.
async fn items_with(fallback: &str) -> Harness {
    harness_routes(&format!(
        r#"
[[routes]]
name = "items"
service = "catalog"
path = "/v1/items"
fallback = {{ {fallback} }}
{PATIENT}"#
    ))
    .await
}

#[tokio::test]
async fn the_error_fallback_answers_the_failure_and_an_open_breaker_says_when_to_retry() {
    let harness = items_with(r#"kind = "error""#).await;
    let dead = dead_address().await;
    let _dead = register(&harness, "catalog", &dead).await;
    wait_for(&harness, "/v1/items", StatusCode::BAD_GATEWAY).await;
    let (_, body) = harness
        .problem("/v1/items", StatusCode::BAD_GATEWAY, "upstream-unreachable")
        .await;
    assert_eq!(body["service"], "catalog");
    let (status, _, _) = harness
        .put_admin("/catalog/force", r#"{ "state": "open" }"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (headers, _) = harness
        .problem("/v1/items", StatusCode::SERVICE_UNAVAILABLE, "circuit-open")
        .await;
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(!headers.contains_key("x-fallback"));
}

#[tokio::test]
async fn the_cached_fallback_serves_the_last_good_answer_marked_stale_until_it_is_too_old() {
    let harness = items_with(r#"kind = "cached", max_age_ms = 1500"#).await;
    let (address, switch) = named_upstream("catalog-1").await;
    let _live = register(&harness, "catalog", &address).await;
    wait_for(&harness, "/v1/items?page=2", StatusCode::OK).await;
    let (_, fresh_headers, fresh) = harness.get("/v1/items?page=2").await;
    assert!(!fresh_headers.contains_key("x-fallback"));

    switch.fail(true);
    let (status, headers, stale) = harness.get("/v1/items?page=2").await;
    assert_eq!(status, StatusCode::OK, "{stale}");
    assert_eq!(stale, fresh, "the last good answer, as it was");
    assert_eq!(headers["x-fallback"], "stale");
    assert!(headers.contains_key("age"));
    // Another query was never answered: nothing to fall back on.
    let (status, _, _) = harness.get("/v1/items?page=3").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // A write is never answered from the cache.
    let (status, headers, _) = call_text(
        Method::POST,
        &format!("{}/v1/items?page=2", harness.gateway),
        &[],
        "{}",
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!headers.contains_key("x-fallback"));

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, headers, _) = harness.get("/v1/items?page=2").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "older than max_age_ms"
    );
    assert!(!headers.contains_key("x-fallback"));
}

#[tokio::test]
async fn the_default_fallback_answers_the_route_file_s_response() {
    let harness =
        items_with(r#"kind = "default", status = 200, body = '{"items":[],"degraded":true}'"#)
            .await;
    let (address, switch) = named_upstream("catalog-1").await;
    let _live = register(&harness, "catalog", &address).await;
    wait_for(&harness, "/v1/items", StatusCode::OK).await;
    let (_, headers, body) = harness.get("/v1/items").await;
    assert!(!headers.contains_key("x-fallback"));
    assert_eq!(body["from"], "catalog-1");

    switch.fail(true);
    let (status, headers, body) = harness.get("/v1/items").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-fallback"], "default");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, serde_json::json!({ "items": [], "degraded": true }));
}

#[tokio::test]
async fn the_service_fallback_asks_the_alternative_service() {
    let harness = items_with(r#"kind = "service", service = "catalog-replica""#).await;
    let dead = dead_address().await;
    let _dead = register(&harness, "catalog", &dead).await;
    let (replica, _) = named_upstream("replica-1").await;
    let _replica = register(&harness, "catalog-replica", &replica).await;
    wait_for(&harness, "/v1/items/7", StatusCode::OK).await;
    let (status, headers, body) = harness.get("/v1/items/7").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-fallback"], "service");
    assert_eq!(body["from"], "replica-1");
    assert_eq!(body["path"], "/v1/items/7", "the same request");
}

#[tokio::test]
async fn the_queue_fallback_stores_a_keyed_write_and_replays_it_once_the_service_is_back() {
    let harness = items_with(r#"kind = "queue""#).await;
    // No instance at all: nothing can have reached the service.
    let url = format!("{}/v1/items", harness.gateway);
    let (status, headers, body) = call(
        Method::POST,
        &url,
        &[
            ("idempotency-key", "item-42"),
            ("content-type", "application/json"),
        ],
        br#"{"sku":"SKU-1"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(headers["x-fallback"], "queued");
    let location = headers["location"].to_str().expect("location").to_owned();
    assert_eq!(body["status"], "QUEUED");
    // Without an idempotency key, a write cannot be replayed safely: the failure stands.
    let (status, _, _) = call(Method::POST, &url, &[], b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let (address, switch) = named_upstream("catalog-1").await;
    let _live = register(&harness, "catalog", &address).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, view) = harness.get(&location).await;
        if view["status"] == "REPLAYED" {
            assert_eq!(view["response"]["status"], 200, "{view}");
            assert_eq!(view["response"]["body"]["length"], 15, "{view}");
            assert_eq!(
                view["response"]["body"]["headers"]["idempotency-key"], "item-42",
                "{view}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never replayed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(switch.calls(), 1, "replayed once");
}
