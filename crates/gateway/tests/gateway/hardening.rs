//! Forwarding, failures, breakers and retries, and the hardening against hostile clients.

use std::time::Duration;

use bytes::Bytes;
use flotilla_gateway::{Config, GatewaySettings};
use flotilla_testkit::{dead_address, start_registry};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::harness::*;

#[tokio::test]
async fn forwards_with_request_id_and_trace_context_and_strips_hop_headers() {
    // A body limit above the replay buffer (64 KiB), so that a body larger than the buffer is
    // within it and streams.
    let mut config = Config::default();
    config.instance.discovery.request_timeout_ms = 2_000;
    config.instance.server.max_body_bytes = 1024 * 1024;
    let harness = harness_with(config).await.with_upstream().await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, headers, body) = call(
        Method::POST,
        &format!("{}/v1/orders/echo", harness.gateway),
        &[
            ("x-request-id", "req-42"),
            ("traceparent", parent),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
        ],
        vec![b'x'; 200_000],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(body["request_id"], "req-42");
    let traceparent = body["traceparent"].as_str().expect("traceparent");
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert_ne!(traceparent, parent, "the gateway is a hop of its own");
    assert_eq!(
        body["connection"], "",
        "a header named in Connection was forwarded"
    );
    assert_eq!(
        body["length"], 200_000,
        "a large body streams through whole"
    );
}

#[tokio::test]
async fn no_instance_is_a_503_problem() {
    let harness = harness(2_000).await;
    let (headers, body) = harness
        .problem(
            "/v1/products",
            StatusCode::SERVICE_UNAVAILABLE,
            "no-instance",
        )
        .await;
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["service"], "inventory");
    assert!(body["request_id"].as_str().is_some());
}

#[tokio::test]
async fn only_dead_instances_is_a_502_problem() {
    let harness = harness(2_000).await;
    let dead = dead_address().await;
    let _registration = register(&harness, "payment", &dead).await;
    harness
        .problem(
            "/v1/payments?order_id=1",
            StatusCode::BAD_GATEWAY,
            "upstream-unreachable",
        )
        .await;
}

#[tokio::test]
async fn a_dead_instance_is_failed_over_to_a_live_one() {
    let harness = harness(2_000).await;
    let dead = dead_address().await;
    let live = upstream().await;
    let _dead = register(&harness, "order", &dead).await;
    let _live = register(&harness, "order", &live).await;
    for _ in 0..4 {
        let (status, _, body) = call(
            Method::POST,
            &format!("{}/v1/orders/echo", harness.gateway),
            &[],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test]
async fn a_slow_upstream_is_a_504_problem_after_the_deadline() {
    let harness = harness(300).await.with_upstream().await;
    let started = std::time::Instant::now();
    harness
        .problem(
            "/v1/orders/slow",
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let harness = harness(2_000).await;
    harness
        .problem("/v1/unknown", StatusCode::NOT_FOUND, "not-found")
        .await;
}

#[tokio::test]
async fn safe_requests_are_retried_and_unsafe_ones_are_not() {
    let harness = harness(2_000).await;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let address = flaky_upstream(calls.clone()).await;
    let _registration = register(&harness, "order", &address).await;
    let url = format!("{}/v1/orders/flaky", harness.gateway);
    let count = || calls.load(std::sync::atomic::Ordering::SeqCst);

    let (status, _, _) = call(Method::GET, &url, &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK, "the 503 was retried");
    assert_eq!(count(), 2);

    let (status, _, _) = call(Method::POST, &url, &[], b"{}".to_vec()).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a POST without a key is sent once"
    );
    assert_eq!(count(), 3);

    let _ = call(Method::GET, &url, &[], Vec::new()).await; // realign: this one succeeds first time
    let before = count();
    let (status, _, _) = call(
        Method::POST,
        &url,
        &[("idempotency-key", "k-1")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a POST with an Idempotency-Key is retried"
    );
    assert_eq!(count(), before + 2);
}

#[tokio::test]
async fn long_polls_are_not_slow_calls_for_the_breaker() {
    let mut config = Config {
        gateway: GatewaySettings {
            admin_api: true,
            ..GatewaySettings::default()
        },
        ..Config::default()
    };
    config.resilience.breaker = flotilla_resilience::BreakerConfig {
        window: flotilla_resilience::breaker::Window::Count { calls: 2 },
        minimum_calls: 2,
        slow_call_duration_ms: 50,
        ..flotilla_resilience::BreakerConfig::default()
    };
    let harness = harness_with(config).await.with_upstream().await;
    let waited = format!("{}/v1/orders/waited", harness.gateway);
    let state = || async {
        let (_, _, body) = harness.get_admin("/admin/breakers").await;
        body["order"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // Each answer takes 150 ms, three times the slow-call duration.
    for _ in 0..3 {
        let (status, _, _) = call(Method::GET, &waited, &[("prefer", "wait=2")], Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(state().await, "closed", "long polls are not slow calls");
    for _ in 0..2 {
        let (status, _, _) = call(Method::GET, &waited, &[], Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        state().await,
        "open",
        "the same calls without the preference are"
    );
}

#[tokio::test]
async fn operators_force_and_reconfigure_breakers_at_run_time() {
    let harness = harness_with(Config {
        gateway: GatewaySettings {
            admin_api: true,
            ..GatewaySettings::default()
        },
        ..Config::default()
    })
    .await
    .with_upstream()
    .await;
    let echo = format!("{}/v1/orders/echo", harness.gateway);

    let (status, _, body) = harness
        .put_admin("/order/force", r#"{"state":"open"}"#)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "forced_open");
    let (status, _, body) = call(Method::POST, &echo, &[], b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["type"], "/problems/circuit-open");

    let (_, _, body) = harness.put_admin("/order/force", r#"{"state":null}"#).await;
    assert_eq!(body["state"], "closed");
    let (status, _, _) = call(Method::POST, &echo, &[], b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::OK);

    // Run-time configuration: a valid one is applied, an invalid one refused and nothing changes.
    let (status, _, body) = harness
        .put_admin(
            "/order/config",
            r#"{"minimum_calls":3,"window":{"kind":"count","calls":3}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["config"]["minimum_calls"], 3);
    let (status, _, body) = harness
        .put_admin("/order/config", r#"{"success_threshold":99}"#)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["type"], "/problems/invalid-breaker-config");
    let (_, _, body) = harness.get_admin("/admin/breakers").await;
    assert_eq!(
        body["order"]["config"]["minimum_calls"], 3,
        "the refused change changed nothing"
    );
    let (status, _, _) = harness
        .put_admin("/nobody/force", r#"{"state":"open"}"#)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A route file holding `text`, in a directory removed when the first value drops.
#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_fault_and_never_open_the_breaker() {
    let harness = harness(2_000).await.with_upstream().await;
    // Twice the breaker's window of calls, each with a chunk size that is not hexadecimal.
    for _ in 0..40 {
        let answer = raw(
            &harness,
            b"POST /v1/orders/echo HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\
              Content-Type: application/json\r\nConnection: close\r\n\r\n2\r\n{}\r\nZZ\r\nnot a chunk\r\n",
        )
        .await;
        assert_raw_problem(&answer, 400, "unreadable-body");
    }
    harness.assert_breaker_closed().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_declared_or_streamed() {
    let mut config = Config::default();
    config.instance.server.max_body_bytes = 1024;
    let harness = harness_with(config).await.with_upstream().await;
    // Declared too large, asking to continue: refused before any of the body is read.
    let answer = raw(
        &harness,
        b"POST /v1/orders/echo HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10000000\r\n\
          Expect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_problem(&answer, 413, "body-too-large");
    assert!(!answer.contains("100 Continue"), "{answer}");
    // Streamed, and larger than declared nowhere: refused once it passes the limit.
    let chunk = "x".repeat(600);
    let streamed = format!(
        "POST /v1/orders/echo HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(&harness, streamed.as_bytes()).await;
    assert_raw_problem(&answer, 413, "body-too-large");
    // Within the limit, streamed: forwarded whole.
    let small = format!(
        "POST /v1/orders/echo HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw(&harness, small.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"length\":600"), "{answer}");
}

#[tokio::test]
async fn a_second_idempotency_key_is_refused() {
    let harness = harness(2_000).await.with_upstream().await;
    let (status, _, body) = call(
        Method::POST,
        &format!("{}/v1/orders/echo", harness.gateway),
        &[("idempotency-key", "a"), ("idempotency-key", "b")],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["type"], "/problems/invalid-idempotency-key");
}

#[tokio::test]
async fn paths_are_normalised_before_a_route_is_chosen() {
    let harness = harness(2_000).await.with_upstream().await;
    // Dot segments and doubled slashes resolve to the order service's path.
    for path in [
        "/v1/products/../orders/waited",
        "/v1//orders/./waited",
        "/v1/products/%2e%2e/orders/waited",
    ] {
        let answer = raw(
            &harness,
            format!("GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(answer.ends_with("done"), "{path}: {answer}");
    }
    // Climbing out of /v1 reaches no route; an encoded slash is refused.
    let answer = raw(
        &harness,
        b"GET /v1/%2e%2e/admin/breakers HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_problem(&answer, 404, "not-found");
    let answer = raw(
        &harness,
        b"GET /v1/orders%2f..%2fwaited HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_raw_problem(&answer, 400, "invalid-path");
}

#[tokio::test]
async fn clients_that_hang_up_mid_request_never_open_the_breaker() {
    use tokio::io::AsyncWriteExt;
    let harness = harness(10_000).await.with_upstream().await;
    let address = harness.gateway.trim_start_matches("http://").to_owned();
    // Twice the breaker's window: each client asks for the slow path, then hangs up before
    // the upstream answers; or sends half a declared body and hangs up.
    for n in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        let request: &[u8] = if n % 2 == 0 {
            b"GET /v1/orders/slow HTTP/1.1\r\nHost: gateway\r\n\r\n"
        } else {
            b"POST /v1/orders/echo HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n{\"half\":"
        };
        stream.write_all(request).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(stream);
    }
    harness.assert_breaker_closed().await;
}

#[tokio::test]
async fn a_route_file_with_an_error_stops_start_up_naming_the_route_and_the_key() {
    let (_data, file) =
        route_file("[[routes]]\nname = \"orders\"\nservice = \"order\"\npath = \"orders\"\n");
    let shutdown = CancellationToken::new();
    let registry = start_registry(60_000, &shutdown).await;
    let mut config = Config::default();
    config.instance.discovery.registry_url = Some(registry);
    config.gateway.routes_file = Some(file.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let error = flotilla_gateway::run(config, listener, shutdown.clone())
        .await
        .expect_err("refused");
    let message = error.to_string();
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("route `orders`, key `path`"), "{message}");
    shutdown.cancel();
}

#[tokio::test]
async fn a_route_file_routes_by_host_header_and_version() {
    let (_data, file) = route_file(
        r#"
[[routes]]
name = "orders"
service = "order"
path = "/orders"
version = 1

[[routes]]
name = "beta"
service = "beta"
path = "/orders/{id}"
version = 1
headers = { x-beta = "on" }
"#,
    );
    let mut config = Config::default();
    config.gateway.routes_file = Some(file);
    let harness = harness_with(config).await.with_upstream().await;
    let beta = dead_address().await;
    let _beta = register(&harness, "beta", &beta).await;
    // By the header's version, to the upstream path with the version in it.
    let (status, _, body) = harness
        .get_with("/orders/waited", &[("api-version", "1")])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    harness
        .problem("/v2/orders/waited", StatusCode::NOT_FOUND, "not-found")
        .await;
    // The header condition sends the request to `beta` (whose only instance is dead: 502).
    let (status, _, body) = harness
        .get_with("/v1/orders/waited", &[("x-beta", "on")])
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["service"], "beta");
}

#[tokio::test]
async fn a_body_over_the_limit_sent_without_waiting_still_gets_its_answer() {
    let mut config = Config::default();
    config.instance.server.max_body_bytes = 1024;
    let harness = harness_with(config).await.with_upstream().await;
    // 200 kB declared and sent at once, ten times: each answer must arrive, not a reset.
    let mut request =
        b"POST /v1/orders/echo HTTP/1.1\r\nHost: gateway\r\nContent-Length: 200000\r\n\
          Connection: close\r\n\r\n"
            .to_vec();
    request.extend(std::iter::repeat_n(b'x', 200_000));
    for _ in 0..10 {
        let answer = raw(&harness, &request).await;
        assert_raw_problem(&answer, 413, "body-too-large");
    }
    // And through an HTTP client that writes the body while the answer comes back, on a
    // kept-alive connection, with no retry.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..10 {
        let request = Request::post(format!("{}/v1/orders/echo", harness.gateway))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
            .expect("request");
        let response = client
            .request(request)
            .await
            .expect("an answer, not a reset");
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}

/// An upstream that answers every request with a head promising 100 bytes, sends 5, and hangs
/// up: its answer breaks off.
async fn truncating_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn an_answer_that_breaks_off_is_a_502_problem_not_a_short_body() {
    let harness = harness(2_000).await;
    let address = truncating_upstream().await;
    let _truncating = register(&harness, "inventory", &address).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers, body) = harness.get("/v1/products/KB-001").await;
        if status == StatusCode::BAD_GATEWAY {
            assert_eq!(headers["content-type"], "application/problem+json");
            assert_eq!(body["type"], "/problems/upstream-failed", "{body}");
            assert_eq!(body["service"], "inventory");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered 502: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
