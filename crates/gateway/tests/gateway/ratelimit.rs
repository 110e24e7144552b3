//! Rate limits and quotas kept by one gateway: each refusal a 429 problem with `Retry-After`
//! and the `RateLimit` headers, each client counted on its own, and nothing of a refused call
//! reaching the upstream (it counts its hits).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use bytes::Bytes;
use flotilla_gateway::Config;
use flotilla_testkit::{TestIdp, body_bytes, serve_instance};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::harness::*;

/// A token every 100 s: within a test, a bucket only drains.
pub(crate) const ROUTES: &str = r#"
[[routes]]
name = "orders"
service = "order"
path = "/orders"
version = 1
rate_limit = { per_second = 0.01, burst = 3 }

[[routes]]
name = "daily"
service = "order"
path = "/daily"
version = 1
quota = { limit = 5, period = "day" }

[[routes]]
name = "catalog"
service = "order"
path = "/catalog"
version = 1
auth = "public"
rate_limit = { per_second = 0.01, burst = 2 }

[[routes]]
name = "ready"
service = "order"
path = "/ready"
version = 1
auth = "public"
"#;

/// An `order` instance that counts the calls reaching it: its address and the count.
pub(crate) async fn counting_upstream() -> (String, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    let router = Router::new().fallback(move || {
        let hits = counted.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            "counted"
        }
    });
    (serve_instance(router).await, hits)
}

/// A gateway serving `routes` (configured by `configure`) over the `order` instance at
/// `address`, once it answers.
pub(crate) async fn gateway_over(
    routes: &str,
    address: &str,
    configure: impl FnOnce(&mut Config),
) -> (Harness, flotilla_discovery::Registration) {
    let mut config = Config::default();
    configure(&mut config);
    let harness = harness_with_routes(config, routes).await;
    let registration = register(&harness, "order", address).await;
    wait_for(&harness, "/v1/ready", StatusCode::OK).await;
    (harness, registration)
}

/// A gateway serving `routes` (configured by `configure`) over one `order` instance that
/// counts the calls reaching it; the count starts at 0 once the gateway answers.
pub(crate) async fn counted_gateway(
    routes: &str,
    configure: impl FnOnce(&mut Config),
) -> (Harness, Arc<AtomicU32>, flotilla_discovery::Registration) {
    let (address, hits) = counting_upstream().await;
    let (harness, registration) = gateway_over(routes, &address, configure).await;
    hits.store(0, Ordering::SeqCst);
    (harness, hits, registration)
}

/// `GET path` as `who` (a seed user or client; empty: no token).
pub(crate) async fn get_as(
    harness: &Harness,
    path: &str,
    who: &str,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    let bearer = if who.is_empty() {
        String::new()
    } else {
        TestIdp::shared().bearer(who)
    };
    harness.get_with(path, &[("authorization", &bearer)]).await
}

pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

/// The `t` of the first item of a `RateLimit` field.
pub(crate) fn reset_of(ratelimit: &str) -> u64 {
    ratelimit
        .split(';')
        .find_map(|parameter| parameter.trim().strip_prefix("t="))
        .and_then(|t| t.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no t in `{ratelimit}`"))
}

/// Asserts a 429 problem of `kind` naming `policy`, with a `Retry-After` of `retry_after` s
/// give or take `slack` and the `RateLimit` headers.
pub(crate) fn assert_limited(
    answer: &(StatusCode, HeaderMap, serde_json::Value),
    kind: &str,
    policy: &str,
    retry_after: u64,
    slack: u64,
) {
    let (status, headers, body) = answer;
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(header(headers, "content-type"), "application/problem+json");
    assert_eq!(body["type"], format!("/problems/{kind}"), "{body}");
    assert_eq!(body["status"], 429, "{body}");
    assert_eq!(body["violated-policies"], serde_json::json!([policy]));
    let wait: u64 = header(headers, "retry-after").parse().expect("Retry-After");
    assert!(
        wait.abs_diff(retry_after) <= slack,
        "Retry-After {wait}, not about {retry_after}"
    );
    let ratelimit = header(headers, "ratelimit");
    assert!(
        ratelimit.contains(&format!("\"{policy}\";r=0;t=")),
        "{ratelimit}"
    );
    assert_eq!(reset_of(ratelimit), wait, "t is the Retry-After");
    assert!(
        header(headers, "ratelimit-policy").contains(&format!("\"{policy}\";q=")),
        "{headers:?}"
    );
}

#[tokio::test]
async fn ratelimit_a_client_over_its_bucket_gets_429_and_the_others_do_not() {
    let (harness, hits, _registration) = counted_gateway(ROUTES, |_| {}).await;
    for remaining in [2, 1, 0] {
        let (status, headers, body) = get_as(&harness, "/v1/orders/1", "alice").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(header(&headers, "ratelimit-policy"), "\"orders\";q=3;w=300");
        let ratelimit = header(&headers, "ratelimit");
        assert!(
            ratelimit.starts_with(&format!("\"orders\";r={remaining};t=")),
            "{ratelimit}"
        );
        // The next token in 100 s (a hair less as the bucket refills).
        assert!((99..=100).contains(&reset_of(ratelimit)), "{ratelimit}");
    }
    for _ in 0..3 {
        let refused = get_as(&harness, "/v1/orders/1", "alice").await;
        assert_limited(&refused, "rate-limited", "orders", 100, 1);
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "only the admitted calls arrived"
    );

    // Each client has its own bucket: bob and a machine client are admitted.
    for who in ["bob", "operator"] {
        let (status, headers, body) = get_as(&harness, "/v1/orders/1", who).await;
        assert_eq!(status, StatusCode::OK, "{who}: {body}");
        assert!(header(&headers, "ratelimit").starts_with("\"orders\";r=2;"));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    // A route without limits sends no RateLimit header.
    let (status, headers, _) = get_as(&harness, "/v1/ready", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("ratelimit").is_none() && headers.get("ratelimit-policy").is_none());
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    // Alice is still refused, whoever else calls.
    let refused = get_as(&harness, "/v1/orders/1", "alice").await;
    assert_limited(&refused, "rate-limited", "orders", 100, 1);
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}

/// `GET path` through the gateway from local address `from`, with `headers`.
async fn get_from(
    harness: &Harness,
    from: IpAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, serde_json::Value) {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let mut request = Request::get(format!("{}{path}", harness.gateway));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    let response = client.request(request).await.expect("the gateway answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = body_bytes(response).await;
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, headers, value)
}

#[tokio::test]
async fn ratelimit_anonymous_callers_are_counted_by_their_address() {
    let (harness, hits, _registration) = counted_gateway(ROUTES, |_| {}).await;
    let one: IpAddr = [127, 0, 0, 1].into();
    let two: IpAddr = [127, 0, 0, 2].into();
    for remaining in [1, 0] {
        let (status, headers, body) = get_from(&harness, one, "/v1/catalog", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            header(&headers, "ratelimit").starts_with(&format!("\"catalog\";r={remaining};")),
            "{headers:?}"
        );
    }
    let refused = get_from(&harness, one, "/v1/catalog", &[]).await;
    assert_limited(&refused, "rate-limited", "catalog", 100, 1);
    // Neither a forwarding header the client wrote nor a token (unchecked on a public
    // route) makes it someone else.
    let alice = TestIdp::shared().bearer("alice");
    let disguised = [
        vec![("x-forwarded-for", "198.51.100.7")],
        vec![
            ("forwarded", "for=198.51.100.7"),
            ("x-real-ip", "198.51.100.7"),
        ],
        vec![("authorization", alice.as_str())],
    ];
    for headers in &disguised {
        let refused = get_from(&harness, one, "/v1/catalog", headers).await;
        assert_limited(&refused, "rate-limited", "catalog", 100, 1);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Another address is another client.
    let (status, _, body) = get_from(&harness, two, "/v1/catalog", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// Seconds until the next midnight UTC.
pub(crate) fn until_midnight_utc() -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test]
async fn ratelimit_a_spent_quota_is_429_until_its_period_ends() {
    let (harness, hits, _registration) = counted_gateway(ROUTES, |_| {}).await;
    for remaining in (0..5).rev() {
        let (status, headers, body) = get_as(&harness, "/v1/daily/1", "alice").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            header(&headers, "ratelimit-policy"),
            "\"daily-quota\";q=5;w=86400"
        );
        let ratelimit = header(&headers, "ratelimit");
        assert!(
            ratelimit.starts_with(&format!("\"daily-quota\";r={remaining};t=")),
            "{ratelimit}"
        );
        assert!(reset_of(ratelimit).abs_diff(until_midnight_utc()) <= 2);
    }
    let refused = get_as(&harness, "/v1/daily/1", "alice").await;
    assert_limited(
        &refused,
        "quota-exceeded",
        "daily-quota",
        until_midnight_utc(),
        2,
    );
    assert_eq!(hits.load(Ordering::SeqCst), 5, "the sixth never arrived");
    // Bob's quota is his own.
    let (status, _, body) = get_as(&harness, "/v1/daily/1", "bob").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 6);
}
