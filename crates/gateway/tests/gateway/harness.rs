//! The gateway in front of real upstreams on loopback, found through a real registry: the
//! harness every test module shares.

use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use bytes::Bytes;
use flotilla_discovery::Registration;
use flotilla_gateway::Config;
use flotilla_testkit::{TestIdp, body_bytes, register_instance, serve_instance, start_registry};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) struct Harness {
    pub(crate) gateway: String,
    pub(crate) registry: String,
    pub(crate) shutdown: CancellationToken,
    /// The registration of the echoing upstream as `order`, once [`Harness::with_upstream`].
    pub(crate) upstream: Option<Registration>,
    /// The route file and the gateway's data directory, kept while the gateway runs.
    pub(crate) data: Option<flotilla_testkit::TempData>,
}

impl Harness {
    /// The harness with [`upstream`] registered as the `order` service, once the gateway
    /// answers (a raw socket gets no retries).
    pub(crate) async fn with_upstream(mut self) -> Self {
        let address = upstream().await;
        self.upstream = Some(register(&self, "order", &address).await);
        self.problem("/v1/unknown", StatusCode::NOT_FOUND, "not-found")
            .await;
        self
    }

    /// Asserts that a valid write reaches the echoing upstream: its breaker is closed.
    pub(crate) async fn assert_breaker_closed(&self) {
        let (status, _, body) = call(
            Method::POST,
            &format!("{}/v1/orders/echo", self.gateway),
            &[("content-type", "application/json")],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "the breaker stayed closed: {body}");
    }

    /// `GET path` through the gateway, with no headers of the test's own.
    pub(crate) async fn get(&self, path: &str) -> (StatusCode, HeaderMap, serde_json::Value) {
        self.get_with(path, &[]).await
    }

    /// `GET path` through the gateway with `headers`.
    pub(crate) async fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let url = format!("{}{path}", self.gateway);
        call(Method::GET, &url, headers, Vec::new()).await
    }

    /// `GET path` through the gateway, checked to be a `/problems/{problem}` with `status`: the
    /// answer's headers and body.
    pub(crate) async fn problem(
        &self,
        path: &str,
        status: StatusCode,
        problem: &str,
    ) -> (HeaderMap, serde_json::Value) {
        let (actual, headers, body) = self.get(path).await;
        assert_eq!(actual, status, "{body}");
        assert_eq!(body["type"], format!("/problems/{problem}"));
        (headers, body)
    }

    /// The base URL of the gateway's admin listener, as it registered it (`admin_address`).
    pub(crate) async fn admin(&self) -> String {
        let url = format!("{}/v1/registry/services", self.registry);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, catalog) =
                call(Method::GET, &url, &[("authorization", "")], Vec::new()).await;
            if let Some(address) =
                catalog["services"]["gateway"][0]["metadata"]["admin_address"].as_str()
            {
                return format!("http://{address}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the gateway never registered: {catalog}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` on the gateway's admin listener with an admin's token.
    pub(crate) async fn get_admin(&self, path: &str) -> (StatusCode, HeaderMap, serde_json::Value) {
        let admin = TestIdp::shared().bearer("admin");
        let url = format!("{}{path}", self.admin().await);
        call(Method::GET, &url, &[("authorization", &admin)], Vec::new()).await
    }

    /// The gateway's `/metrics`, read on its admin listener with an admin's token.
    pub(crate) async fn metrics(&self) -> String {
        let admin = TestIdp::shared().bearer("admin");
        let url = format!("{}/metrics", self.admin().await);
        let (status, _, text) =
            call_text(Method::GET, &url, &[("authorization", &admin)], "").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        text
    }

    /// `PUT /admin/breakers{path}` with the JSON `body`, on the admin listener with an admin's
    /// token.
    pub(crate) async fn put_admin(
        &self,
        path: &str,
        body: &str,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let admin = TestIdp::shared().bearer("admin");
        call(
            Method::PUT,
            &format!("{}/admin/breakers{path}", self.admin().await),
            &[
                ("content-type", "application/json"),
                ("authorization", &admin),
            ],
            body.as_bytes().to_vec(),
        )
        .await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn harness(request_timeout_ms: u64) -> Harness {
    let mut config = Config::default();
    config.instance.discovery.request_timeout_ms = request_timeout_ms;
    harness_with(config).await
}

/// A registry and a gateway with `config` (its registry URL is filled in).
pub(crate) async fn harness_with(mut config: Config) -> Harness {
    let shutdown = CancellationToken::new();
    // Slow probes: what is under test is the gateway's own handling of dead instances.
    let registry = start_registry(60_000, &shutdown).await;

    // The routes need tokens: unless the test brings a provider of its own, the one every
    // test of this binary shares, with the gateway's own client too (public routes go on with
    // the gateway's token, as under `up`).
    if config.instance.identity.url.is_none() {
        let identity = TestIdp::shared().serve(&shutdown).await;
        config.instance.identity = TestIdp::shared().client_identity(&identity, "gateway");
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway = format!("http://{}", listener.local_addr().expect("addr"));
    config.instance.discovery.registry_url = Some(registry.clone());
    tokio::spawn(flotilla_gateway::run(config, listener, shutdown.clone()));
    Harness {
        gateway,
        registry,
        shutdown,
        upstream: None,
        data: None,
    }
}

/// A registry and a gateway serving the route file `routes`, with its queue and the operator
/// API on, a 2 s deadline and retries after 1 ms.
pub(crate) async fn harness_routes(routes: &str) -> Harness {
    harness_with_routes(Config::default(), routes).await
}

/// [`harness_routes`] over `config` (an identity provider of the test's own, say).
pub(crate) async fn harness_with_routes(mut config: Config, routes: &str) -> Harness {
    let (data, file) = route_file(routes);
    config.instance.discovery.request_timeout_ms = 2_000;
    config.instance.server.data_dir = data.path().to_path_buf();
    config.resilience.retry.base_delay_ms = 1;
    config.gateway.routes_file = Some(file);
    config.gateway.admin_api = true;
    let mut harness = harness_with(config).await;
    harness.data = Some(data);
    harness
}

/// `method url` with `headers` and `body` as text: the status, headers and text of the answer.
pub(crate) async fn call_text(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, String) {
    let (status, headers, bytes) = call_bytes(method, url, headers, body.as_bytes().to_vec()).await;
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Waits until `GET path` with `authorization` through the gateway answers `status`, for at
/// most 10 s.
pub(crate) async fn wait_for_with(
    harness: &Harness,
    path: &str,
    authorization: &str,
    status: StatusCode,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (actual, _, body) = harness
            .get_with(path, &[("authorization", authorization)])
            .await;
        if actual == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{path}` still answers {actual}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET path` through the gateway answers `status` (the registry's news takes a
/// moment to reach the gateway), for at most 10 s.
pub(crate) async fn wait_for(harness: &Harness, path: &str, status: StatusCode) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (actual, _, body) = harness.get(path).await;
        if actual == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{path}` still answers {actual}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream that echoes what it received, and sleeps on `/v1/orders/slow`.
pub(crate) async fn upstream() -> String {
    let router = Router::new()
        .route(
            "/v1/orders/echo",
            post(|headers: HeaderMap, body: Bytes| async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                axum::Json(serde_json::json!({
                    "request_id": header("x-request-id"),
                    "traceparent": header("traceparent"),
                    "connection": header("x-hop"),
                    "length": body.len(),
                }))
            }),
        )
        .route(
            "/v1/orders/waited",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                "done"
            }),
        )
        .route(
            "/v1/orders/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    serve_instance(router).await
}

/// An upstream whose `/v1/orders/flaky` fails with 503 every other call (first call included),
/// for GET and POST alike; `calls` counts them.
pub(crate) async fn flaky_upstream(calls: std::sync::Arc<std::sync::atomic::AtomicU32>) -> String {
    let flaky = move || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n.is_multiple_of(2) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
    };
    let router = Router::new().route("/v1/orders/flaky", get(flaky.clone()).post(flaky));
    serve_instance(router).await
}

pub(crate) async fn register(harness: &Harness, service: &str, address: &str) -> Registration {
    register_instance(&harness.registry, service, address, &harness.shutdown).await
}

pub(crate) async fn call(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    let (status, headers, bytes) = call_bytes(method, url, headers, body).await;
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, value)
}

/// `Bearer …` with a token of `alice` (a customer), the one the calls send unless they say
/// otherwise.
pub(crate) fn bearer() -> &'static str {
    static BEARER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BEARER.get_or_init(|| TestIdp::shared().bearer("alice"))
}

/// `method url` with `headers` and `body`: the status, headers and body of the answer. A call
/// without an `Authorization` header of its own carries [`bearer`]'s.
async fn call_bytes(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
    {
        request = request.header("authorization", bearer());
    }
    for (name, value) in headers {
        // An empty value says: no Authorization header at all.
        if name.eq_ignore_ascii_case("authorization") && value.is_empty() {
            continue;
        }
        request = request.header(*name, *value);
    }
    // The gateway registers itself after it starts listening: retry until it answers.
    for _ in 0..100 {
        let request = request_clone(&request, &body);
        if let Ok(response) = client.request(request).await {
            let status = response.status();
            let headers = response.headers().clone();
            return (status, headers, body_bytes(response).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the gateway never answered");
}

pub(crate) fn request_clone(builder: &http::request::Builder, body: &[u8]) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(builder.method_ref().cloned().unwrap_or(Method::GET))
        .uri(builder.uri_ref().cloned().unwrap_or_default());
    if let Some(headers) = builder.headers_ref() {
        for (name, value) in headers {
            request = request.header(name, value);
        }
    }
    request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request")
}
pub(crate) fn route_file(text: &str) -> (flotilla_testkit::TempData, std::path::PathBuf) {
    let data = flotilla_testkit::TempData::new();
    let file = data.path().join("routes.toml");
    std::fs::write(&file, text).expect("write the route file");
    (data, file)
}

/// Sends `request` to the gateway on a new connection and returns what it answered, once it
/// closes the connection (each request here says `Connection: close`). A request without an
/// `Authorization` header gets [`bearer`]'s after its request line.
pub(crate) async fn raw(harness: &Harness, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = harness.gateway.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let has_token = request
        .windows(16)
        .any(|w| w.eq_ignore_ascii_case(b"\r\nauthorization:"));
    let line_end = request.windows(2).position(|w| w == b"\r\n");
    let request = match (has_token, line_end) {
        (false, Some(end)) => {
            let mut with = request[..end + 2].to_vec();
            with.extend_from_slice(format!("Authorization: {}\r\n", bearer()).as_bytes());
            with.extend_from_slice(&request[end + 2..]);
            with
        }
        _ => request.to_vec(),
    };
    stream.write_all(&request).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    match read.await {
        Ok(Ok(_)) | Ok(Err(_)) => String::from_utf8_lossy(&answer).into_owned(),
        Err(_) => panic!(
            "no answer within 10 s: {}",
            String::from_utf8_lossy(&answer)
        ),
    }
}

/// Asserts that the raw `answer` is a problem of `kind` with `status`.
pub(crate) fn assert_raw_problem(answer: &str, status: u16, kind: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains(&format!("\"/problems/{kind}\"")),
        "{answer}"
    );
}

/// What a test controls of a [`named_upstream`]: whether it fails, how slow it is, and how
/// many calls it had.
#[derive(Debug, Default)]
pub(crate) struct Switch {
    /// Answer 503 to everything.
    pub(crate) failing: std::sync::atomic::AtomicBool,
    /// Wait this many milliseconds before answering.
    pub(crate) delay_ms: std::sync::atomic::AtomicU64,
    /// Calls answered so far.
    pub(crate) calls: std::sync::atomic::AtomicU32,
}

impl Switch {
    pub(crate) fn fail(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An upstream that answers every `/v1/…` request with JSON saying who it is (`from`), the
/// path and query it received, the request headers, and the body's length; with an
/// `x-internal-id` and a `server` header, and `{"sku", "name", "stock": {"available",
/// "reserved"}}` fields to filter.
pub(crate) async fn named_upstream(name: &str) -> (String, std::sync::Arc<Switch>) {
    use std::sync::atomic::Ordering;
    let switch = std::sync::Arc::new(Switch::default());
    let state = (name.to_owned(), switch.clone());
    let answer = move |uri: http::Uri, headers: HeaderMap, body: Bytes| {
        let (name, switch) = state.clone();
        async move {
            let delay = switch.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            switch.calls.fetch_add(1, Ordering::SeqCst);
            if switch.failing.load(Ordering::SeqCst) {
                return axum::response::IntoResponse::into_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                );
            }
            let headers: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.to_string(),
                        String::from_utf8_lossy(value.as_bytes())
                            .into_owned()
                            .into(),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "from": name,
                "path": uri.path_and_query().map(|p| p.as_str()).unwrap_or_default(),
                "headers": headers,
                "length": body.len(),
                "sku": "SKU-1",
                "name": "Kettle",
                "stock": { "available": 4, "reserved": 1 },
            });
            axum::response::IntoResponse::into_response((
                [("x-internal-id", "7"), ("server", "upstream")],
                axum::Json(body),
            ))
        }
    };
    let router = Router::new().route("/v1/{*rest}", axum::routing::any(answer));
    (serve_instance(router).await, switch)
}
