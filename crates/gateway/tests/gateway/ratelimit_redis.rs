//! Rate limits and quotas shared through Redis: two gateways enforce one limit, and when
//! Redis stops each does what `on_redis_down` says, then shares again when Redis is back.
//!
//! The shared server is `FLOTILLA_TEST_REDIS_URL` (under CI these tests fail without it,
//! elsewhere they say they skipped); each test writes under a key prefix of its own. The test
//! that stops Redis starts a `redis-server` of its own on a free port, never the shared one.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_gateway::Config;
use flotilla_gateway::settings::OnRedisDown;
use flotilla_testkit::{REDIS, TestIdp, skip};
use http::{Method, StatusCode};
use tokio::process::{Child, Command};

use super::harness::*;
use super::ratelimit::{
    assert_limited, counting_upstream, gateway_over, get_as, header, until_midnight_utc,
};

const ROUTES: &str = r#"
[[routes]]
name = "orders"
service = "order"
path = "/orders"
version = 1
rate_limit = { per_second = 0.001, burst = 100 }

[[routes]]
name = "daily"
service = "order"
path = "/daily"
version = 1
quota = { limit = 5, period = "day" }

[[routes]]
name = "ready"
service = "order"
path = "/ready"
version = 1
auth = "public"
"#;

/// A connection to the Redis at `url`, if it answers `PING` within 2 s.
async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let connect = client.get_multiplexed_async_connection();
    let mut connection = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    Ok(connection)
}

/// A key prefix no other test writes under.
fn own_prefix() -> String {
    format!("flotilla-test:{}", uuid::Uuid::now_v7().simple())
}

/// Deletes the keys under `prefix` from the Redis at `url` (they would expire, some only in a
/// day).
async fn forget(url: &str, prefix: &str) {
    let Ok(mut connection) = connect(url).await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _ = redis::cmd("DEL")
            .arg(keys)
            .query_async::<i64>(&mut connection)
            .await;
    }
}

/// Keeps the limits in the Redis at `url`, under `prefix`, deciding as `on_down` says when it
/// does not answer within `timeout_ms`, and checking again every 100 ms.
fn shared(
    url: &str,
    prefix: &str,
    on_down: OnRedisDown,
    timeout_ms: u64,
) -> impl FnOnce(&mut Config) {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    move |config: &mut Config| {
        let limits = &mut config.gateway.rate_limit;
        limits.redis_url = Some(url);
        limits.key_prefix = prefix;
        limits.on_redis_down = on_down;
        limits.redis_timeout_ms = timeout_ms;
        limits.redis_retry_ms = 100;
    }
}

#[tokio::test]
async fn ratelimit_redis_two_gateways_enforce_one_limit() {
    let Some(url) = REDIS
        .reach(|url| async move { connect(&url).await.map(|_| url) })
        .await
    else {
        return;
    };
    let prefix = own_prefix();
    let (address, hits) = counting_upstream().await;
    // A generous timeout: what is measured is the shared limit, never a fallback.
    let (a, _a) = gateway_over(
        ROUTES,
        &address,
        shared(&url, &prefix, OnRedisDown::Deny, 2_000),
    )
    .await;
    let (b, _b) = gateway_over(
        ROUTES,
        &address,
        shared(&url, &prefix, OnRedisDown::Deny, 2_000),
    )
    .await;
    hits.store(0, Ordering::SeqCst);

    // A bucket of 100 that refills one token in 1,000 s, hammered from both gateways at once.
    let alice = TestIdp::shared().bearer("alice");
    let (tasks, calls) = (8, 20);
    let mut hammering = Vec::new();
    for gateway in [&a.gateway, &b.gateway] {
        for _ in 0..tasks {
            let (url, alice) = (format!("{gateway}/v1/orders/1"), alice.clone());
            hammering.push(tokio::spawn(async move {
                let mut statuses = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let (status, _, _) =
                        call(Method::GET, &url, &[("authorization", &alice)], Vec::new()).await;
                    statuses.push(status);
                }
                statuses
            }));
        }
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in hammering {
        for status in task.await.expect("a hammering task") {
            match status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(admitted + refused, 2 * tasks * calls);
    assert!(
        (95..=105).contains(&admitted),
        "{admitted} admitted by two gateways sharing a burst of 100"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        admitted as u32,
        "only the admitted calls arrived"
    );
    // Both gateways refuse alice now, with the shared bucket's numbers.
    for gateway in [&a, &b] {
        let refused = get_as(gateway, "/v1/orders/1", "alice").await;
        assert_limited(&refused, "rate-limited", "orders", 1_000, 1);
    }

    // A quota of 5 a day, spent alternately through both gateways.
    for n in 0..5 {
        let gateway = if n % 2 == 0 { &a } else { &b };
        let (status, headers, body) = get_as(gateway, "/v1/daily/1", "bob").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            header(&headers, "ratelimit").starts_with(&format!("\"daily-quota\";r={};", 4 - n)),
            "{headers:?}"
        );
    }
    for gateway in [&a, &b] {
        let refused = get_as(gateway, "/v1/daily/1", "bob").await;
        assert_limited(
            &refused,
            "quota-exceeded",
            "daily-quota",
            until_midnight_utc(),
            2,
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), admitted as u32 + 5);
    forget(&url, &prefix).await;
}

/// A `redis-server` of the test's own on `port`, answering; `None` (said) without the binary
/// outside CI.
async fn own_redis(port: u16) -> Option<Child> {
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(error) => return skip(&format!("cannot start redis-server ({error}); install it")),
    };
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect(&url).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(child)
}

/// The count of limited calls decided without Redis by `action`, in this process.
fn fallbacks(action: &str) -> u64 {
    let text = flotilla_kit::metrics::handle().render();
    let series = format!("gateway_ratelimit_fallback_total{{action=\"{action}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// Whether the Redis at `url` holds `client`'s bucket of route `orders` under `prefix`.
async fn holds_bucket(url: &str, prefix: &str, client: &str) -> bool {
    let Ok(mut connection) = connect(url).await else {
        return false;
    };
    redis::cmd("EXISTS")
        .arg(format!("{prefix}:{{orders:{client}}}:b"))
        .query_async::<i64>(&mut connection)
        .await
        .is_ok_and(|n| n == 1)
}

#[tokio::test]
async fn ratelimit_redis_stopped_mid_test_each_gateway_falls_back_as_configured() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    };
    let Some(mut redis) = own_redis(port).await else {
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let routes = ROUTES.replace("burst = 100", "burst = 3");
    let (address, hits) = counting_upstream().await;
    let mut gateways = Vec::new();
    for on_down in [OnRedisDown::Local, OnRedisDown::Deny, OnRedisDown::Allow] {
        let prefix = own_prefix();
        let (harness, registration) =
            gateway_over(&routes, &address, shared(&url, &prefix, on_down, 200)).await;
        gateways.push((on_down, prefix, harness, registration));
    }
    hits.store(0, Ordering::SeqCst);

    // Through Redis: one call of alice's on each gateway, her bucket written there.
    for (on_down, prefix, harness, _) in &gateways {
        let (status, headers, body) = get_as(harness, "/v1/orders/1", "alice").await;
        assert_eq!(status, StatusCode::OK, "{on_down:?}: {body}");
        assert!(header(&headers, "ratelimit").starts_with("\"orders\";r=2;"));
        assert!(
            holds_bucket(&url, prefix, "user:alice").await,
            "{on_down:?}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let before = ["local", "deny", "allow"].map(fallbacks);

    redis.kill().await.expect("redis-server stopped");

    let [
        (_, local_prefix, local, _),
        (_, _, deny, _),
        (_, _, allow, _),
    ] = &gateways[..]
    else {
        unreachable!("three gateways");
    };
    // `local`: this gateway's own bucket (full: it counted nothing while Redis did) limits.
    for remaining in [2, 1, 0] {
        let (status, headers, body) = get_as(local, "/v1/orders/1", "alice").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            header(&headers, "ratelimit").starts_with(&format!("\"orders\";r={remaining};")),
            "{headers:?}"
        );
    }
    let refused = get_as(local, "/v1/orders/1", "alice").await;
    assert_limited(&refused, "rate-limited", "orders", 1_000, 1);
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    // `deny`: 503, and nothing reaches the upstream.
    for _ in 0..2 {
        let (status, headers, body) = get_as(deny, "/v1/orders/1", "alice").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["type"], "/problems/rate-limit-unavailable", "{body}");
        assert_eq!(header(&headers, "content-type"), "application/problem+json");
        assert_eq!(header(&headers, "retry-after"), "1");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    // `allow`: let through uncounted, and so without RateLimit fields.
    for _ in 0..5 {
        let (status, headers, body) = get_as(allow, "/v1/orders/1", "alice").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(headers.get("ratelimit").is_none(), "{headers:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 11);
    let after = ["local", "deny", "allow"].map(fallbacks);
    for ((action, before), (after, least)) in ["local", "deny", "allow"]
        .iter()
        .zip(before)
        .zip(after.into_iter().zip([4, 2, 5]))
    {
        assert!(
            after >= before + least,
            "{action}: {before} fallbacks before, {after} after"
        );
    }

    // Redis back (empty: it kept nothing): the gateways share through it again.
    let Some(_redis) = own_redis(port).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds_bucket(&url, local_prefix, "user:bob").await {
        assert!(
            Instant::now() < deadline,
            "the gateway never used Redis again"
        );
        let _ = get_as(local, "/v1/orders/1", "bob").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = get_as(deny, "/v1/orders/1", "alice").await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            Instant::now() < deadline,
            "the deny gateway never used Redis again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
