//! The listener against slow, idle and malformed clients, through raw sockets: what a client
//! sends is exactly what the test writes.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use flotilla_kit::{App, ConnectionLimits, Health};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A server with a route `/hello`, `/slow` (answers after 600 ms) and `/items/{id}` within
/// `limits`; stops when the token is cancelled.
async fn server(limits: ConnectionLimits) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let routes = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow"
            }),
        )
        .route("/items/{id}", get(|Path(id): Path<String>| async { id }));
    let router = App::new(Health::new()).routes(routes).into_router();
    let stop = CancellationToken::new();
    tokio::spawn(flotilla_kit::serve(
        listener,
        router,
        limits,
        stop.clone().cancelled_owned(),
    ));
    (address, stop)
}

fn quick() -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(2_000),
        ..ConnectionLimits::default()
    }
}

/// Reads from `stream` until the peer closes it (or 5 s pass); returns what was read and when
/// the close came.
async fn until_closed(stream: &mut TcpStream) -> (String, Instant) {
    let mut all = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&all).into(), Instant::now());
            }
            Ok(Ok(n)) => all.extend_from_slice(&buffer[..n]),
            Err(_) => panic!(
                "still open after 5 s; read so far: {}",
                String::from_utf8_lossy(&all)
            ),
        }
    }
}

/// Reads one answer from `stream`, up to and including its body `body` (the head and the body
/// may come in separate reads).
async fn answer_ending_in(stream: &mut TcpStream, body: &str) -> String {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    while !answer.ends_with(body.as_bytes()) {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            other => panic!(
                "no whole answer ({other:?}): {}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `request` on a new connection and returns the whole exchange once the server closes
/// it (every request here says `Connection: close` or is refused).
async fn exchange(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write");
    until_closed(&mut stream).await.0
}

fn assert_problem(response: &str, status: &str, kind: &str) {
    assert!(
        response.starts_with(&format!("HTTP/1.1 {status}")),
        "{response}"
    );
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{response}"
    );
    assert!(
        response.contains(&format!("\"/problems/{kind}\"")),
        "{response}"
    );
}

#[tokio::test]
async fn a_connection_holding_half_its_headers_is_closed_within_the_header_timeout() {
    let (address, _stop) = server(quick()).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    // One more byte every 100 ms: the head never ends.
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"a").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let (_, closed) = until_closed(&mut stream).await;
    let held = closed - started;
    assert!(held < Duration::from_secs(3), "held for {held:?}");
    assert!(held >= Duration::from_millis(300), "closed after {held:?}");
}

#[tokio::test]
async fn a_connection_opened_and_never_used_is_closed_within_the_header_timeout() {
    let (address, _stop) = server(quick()).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let started = Instant::now();
    let (read, closed) = until_closed(&mut stream).await;
    assert_eq!(read, "");
    let held = closed - started;
    assert!(held >= Duration::from_millis(300), "closed after {held:?}");
    assert!(held < Duration::from_secs(3), "held for {held:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_and_not_before() {
    let (address, _stop) = server(quick()).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    let request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(request).await.expect("write");
    let first = answer_ending_in(&mut stream, "hello").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let answered = Instant::now();
    // Idle for longer than the header timeout (300 ms), shorter than the idle one (2 s):
    // the connection still serves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.write_all(request).await.expect("write again");
    let second = answer_ending_in(&mut stream, "hello").await;
    assert!(second.starts_with("HTTP/1.1 200"), "kept alive: {second}");
    let answered_again = Instant::now();
    let (_, closed) = until_closed(&mut stream).await;
    let idle = closed - answered_again;
    assert!(idle >= Duration::from_secs(2), "closed after {idle:?} idle");
    assert!(idle < Duration::from_secs(4), "idle for {idle:?}");
    assert!(answered_again - answered >= Duration::from_millis(500));
}

#[tokio::test]
async fn a_request_slower_than_both_timeouts_is_still_answered_then_idles_out() {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(200),
        ..ConnectionLimits::default()
    };
    let (address, _stop) = server(limits).await;
    let mut stream = TcpStream::connect(&address).await.expect("connect");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = answer_ending_in(&mut stream, "slow").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Kept alive after a request longer than both limits, it is still closed once idle.
    let answered = Instant::now();
    let (_, closed) = until_closed(&mut stream).await;
    let idle = closed - answered;
    assert!(idle < Duration::from_secs(3), "idle for {idle:?}");
}

/// What a request should get.
enum Answer {
    /// A problem with this status and kind.
    Problem(&'static str, &'static str),
    /// Served: the status line starts so.
    Served(&'static str),
}

/// Sends each request (its head, without the final empty line) on a connection of its own and
/// checks its answer.
async fn check_each(address: &str, cases: &[(String, Answer)]) {
    for (head, expected) in cases {
        let response = exchange(address, format!("{head}\r\n\r\n").as_bytes()).await;
        match expected {
            Answer::Problem(status, kind) => assert_problem(&response, status, kind),
            Answer::Served(status_line) => {
                assert!(response.starts_with(status_line), "{head}: {response}");
            }
        }
    }
}

#[tokio::test]
async fn head_limits_are_answered_with_problems() {
    let limits = ConnectionLimits {
        max_headers: 10,
        max_header_bytes: 1024,
        max_uri_bytes: 256,
        ..ConnectionLimits::default()
    };
    let (address, _stop) = server(limits).await;
    let many: String = (0..11).map(|n| format!("X-H{n}: v\r\n")).collect();
    let big = "v".repeat(1100);
    let long = "a".repeat(300);
    let close = "Host: x\r\nConnection: close";
    check_each(
        &address,
        &[
            (
                format!("GET /hello HTTP/1.1\r\n{many}{close}"),
                Answer::Problem("431", "too-many-headers"),
            ),
            (
                format!("GET /hello HTTP/1.1\r\nX-Big: {big}\r\n{close}"),
                Answer::Problem("431", "headers-too-large"),
            ),
            (
                format!("GET /items/{long} HTTP/1.1\r\n{close}"),
                Answer::Problem("414", "uri-too-long"),
            ),
            // Within every limit: served.
            (
                format!("GET /hello HTTP/1.1\r\n{close}"),
                Answer::Served("HTTP/1.1 200"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn host_rules_of_http_1_1_are_enforced() {
    let (address, _stop) = server(ConnectionLimits::default()).await;
    let close = "Connection: close";
    check_each(
        &address,
        &[
            (
                format!("GET /hello HTTP/1.1\r\n{close}"),
                Answer::Problem("400", "missing-host"),
            ),
            (
                format!("GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n{close}"),
                Answer::Problem("400", "invalid-host"),
            ),
            (
                format!("GET http://elsewhere.example/hello HTTP/1.1\r\nHost: gateway\r\n{close}"),
                Answer::Problem("400", "foreign-target"),
            ),
            // Absolute form naming the host itself, and HTTP/1.0 without Host, are fine.
            (
                format!("GET http://gateway/hello HTTP/1.1\r\nHost: gateway\r\n{close}"),
                Answer::Served("HTTP/1.1 200"),
            ),
            (
                "GET /hello HTTP/1.0".to_owned(),
                Answer::Served("HTTP/1.0 200"),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_path_the_router_cannot_decode_gets_a_problem_not_plain_text() {
    let (address, _stop) = server(ConnectionLimits::default()).await;
    let head = "GET /items/%FF%FE HTTP/1.1\r\nHost: x\r\nConnection: close".to_owned();
    check_each(&address, &[(head, Answer::Problem("400", "http-error"))]).await;
}

#[tokio::test]
async fn an_unfit_request_id_is_replaced_and_a_fit_one_kept() {
    let (address, _stop) = server(ConnectionLimits::default()).await;
    let request_id = |response: &str| {
        response
            .lines()
            .find_map(|line| line.strip_prefix("x-request-id: "))
            .map(str::to_owned)
    };
    let kept = exchange(
        &address,
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(request_id(&kept).as_deref(), Some("abc-123"), "{kept}");
    let long = "a".repeat(200);
    for unfit in [long.as_str(), "has space", "tab\there"] {
        let response = exchange(
            &address,
            format!(
                "GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: {unfit}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let replaced = request_id(&response).expect("an id");
        assert_ne!(replaced, unfit);
        assert_eq!(replaced.len(), 36, "a UUID: {replaced}");
    }
}

#[tokio::test]
async fn each_worker_serves_with_its_own_router_on_its_own_thread_and_all_drain() {
    // A listener bound without `SO_REUSEPORT`: the workers share its descriptor.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let answered_by = three_workers(listener, 12).await;
    assert_eq!(answered_by.len(), 12);
}

#[tokio::test]
async fn with_reuseport_each_worker_has_a_socket_and_connections_are_spread_over_all() {
    let listener =
        flotilla_kit::bind_shared("127.0.0.1:0".parse().expect("address")).expect("bind");
    let answered_by = three_workers(listener, 30).await;
    let mut workers = answered_by.clone();
    workers.sort();
    workers.dedup();
    // The kernel hashes each connection to a socket: with 30 connections, all three get some
    // but with a chance of about one in 60,000.
    assert_eq!(
        workers.len(),
        3,
        "every worker took connections: {answered_by:?}"
    );
}

/// Serves three workers on `listener`, each answering `/hello` with its thread's name; sends
/// `connections` requests, each on a new connection; checks that the routers were made on
/// three threads and that every worker drains; returns who answered each request.
async fn three_workers(listener: TcpListener, connections: usize) -> Vec<String> {
    use std::sync::{Arc, Mutex};
    let address = listener.local_addr().expect("address").to_string();
    // Each router is made on its worker's thread, and answers with that thread's name.
    let made = Arc::new(Mutex::new(Vec::<String>::new()));
    let routers = {
        let made = made.clone();
        flotilla_kit::Routers::per_worker(3, move || {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            made.lock().expect("lock").push(thread);
            let routes = Router::new().route(
                "/hello",
                get(|| async { std::thread::current().name().unwrap_or("?").to_owned() }),
            );
            App::new(Health::new()).routes(routes).into_router()
        })
    };
    let drain = CancellationToken::new();
    let server = tokio::spawn(flotilla_kit::serve_workers(
        listener,
        routers,
        ConnectionLimits::default(),
        drain.clone(),
    ));
    let mut answered_by = Vec::new();
    for _ in 0..connections {
        let response = exchange(
            &address,
            b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response
            .rsplit("\r\n")
            .next()
            .unwrap_or_default()
            .to_owned();
        answered_by.push(body);
    }
    let mut made = made.lock().expect("lock").clone();
    made.sort();
    made.dedup();
    assert_eq!(made.len(), 3, "three routers on three threads: {made:?}");
    assert!(
        made.iter()
            .filter(|name| name.starts_with("worker-"))
            .count()
            == 2,
        "two worker threads besides the caller's: {made:?}"
    );
    for thread in &answered_by {
        assert!(made.contains(thread), "{thread} is not a worker: {made:?}");
    }
    drain.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("every worker drains");
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    assert!(
        TcpStream::connect(&address).await.is_err(),
        "no worker accepts after the drain"
    );
    answered_by
}
