//! Forwarding a request to an instance of the service that owns its route.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use flotilla_discovery::Discovery;
use flotilla_kit::Problem;
use flotilla_kit::app::Relayed;
use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, CircuitOpen, ConfigError};
use flotilla_resilience::pipeline::{Pipeline, Verdict};
use flotilla_resilience::retry::{self, RetryConfig, RetryPolicy};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use tokio_util::sync::CancellationToken;

use crate::deferred::{self, Deferred, Queued};
use crate::inbound::{self, ClientBody, FaultSlot};
use crate::routes::{Head, Matched, Routes};

/// Largest request body held in memory so that the request can be sent to another instance
/// after a refused connection. Larger or chunked bodies stream through and are not failed over.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// Counter: requests forwarded, by `service` and `outcome` (`ok`, `no_instance`, `unreachable`,
/// `timeout`, `error`, `circuit_open`).
pub const UPSTREAM_REQUESTS: &str = "gateway_upstream_requests_total";
/// Histogram (seconds): time to the upstream's response head, by `service`.
pub const UPSTREAM_DURATION: &str = "gateway_upstream_duration_seconds";

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The forwarding handler and what it needs.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    discovery: Discovery,
    routes: Routes,
    /// One breaker and retry policy per upstream service (the breaker named after it).
    pipelines: HashMap<String, Pipeline>,
    /// The queue-for-later store, if any service uses it.
    deferred: Option<Deferred>,
    client: Client<HttpConnector, Body>,
    timeout: Duration,
    /// The largest request body forwarded.
    max_body_bytes: u64,
}

impl Proxy {
    /// A proxy for `routes`, finding instances with `discovery`, giving each request `timeout`
    /// to receive the upstream's response head, with a circuit breaker configured by `breaker`
    /// and a retry policy configured by `retry` in front of each upstream service, forwarding
    /// bodies of at most `max_body_bytes`. Fails if either configuration is invalid.
    pub fn new(
        discovery: Discovery,
        routes: Routes,
        timeout: Duration,
        breaker: &BreakerConfig,
        retry: &RetryConfig,
        deferred: Option<Deferred>,
        max_body_bytes: u64,
    ) -> Result<Self, ConfigError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let mut pipelines = HashMap::new();
        for service in routes.services() {
            let circuit = CircuitBreaker::new(&service, breaker.clone())?;
            let policy = RetryPolicy::new(retry.clone())?;
            pipelines.insert(service, Pipeline::new(Some(circuit), Some(policy)));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                discovery,
                routes,
                pipelines,
                deferred,
                client,
                timeout,
                max_body_bytes,
            }),
        })
    }

    /// The breaker in front of `service`, if a route leads to it.
    pub fn breaker(&self, service: &str) -> Option<&CircuitBreaker> {
        self.inner
            .pipelines
            .get(service)
            .and_then(Pipeline::breaker)
    }

    /// The gateway's public routes: every path goes to the route table, but the probes and
    /// `/metrics` (the kit's) and `/v1/deferred/{id}` when requests may be queued for later.
    pub fn router(&self) -> Router {
        let router = Router::new()
            .route("/", any(forward))
            // `/v1/…` has a route of its own so that the kit's request metrics keep labelling
            // the public API `/v1/{*path}` apart from the rest.
            .route("/v1/{*path}", any(forward))
            .route("/{*path}", any(forward))
            .with_state(self.clone());
        match &self.inner.deferred {
            Some(deferred) => router.merge(deferred.routes()),
            None => router,
        }
    }

    /// The retry policy in front of `service`, if a route leads to it.
    pub fn retry(&self, service: &str) -> Option<&RetryPolicy> {
        self.inner.pipelines.get(service).and_then(Pipeline::retry)
    }

    /// The upstream services, sorted.
    pub fn upstreams(&self) -> Vec<String> {
        let mut services: Vec<String> = self.inner.pipelines.keys().cloned().collect();
        services.sort();
        services
    }

    /// The services whose queued requests need a replayer.
    pub fn deferred_services(&self) -> Vec<String> {
        self.inner
            .deferred
            .as_ref()
            .map(Deferred::services)
            .unwrap_or_default()
    }
}

/// The body of a request, held (replayable) or streaming (sent once).
enum Outgoing {
    Held(Bytes),
    Streaming(Option<Body>),
}

impl Outgoing {
    /// The body, if it is held.
    fn held(&self) -> Option<Bytes> {
        match self {
            Outgoing::Held(bytes) => Some(bytes.clone()),
            Outgoing::Streaming(_) => None,
        }
    }

    fn take(&mut self) -> Option<Body> {
        match self {
            Outgoing::Held(bytes) => Some(Body::from(bytes.clone())),
            Outgoing::Streaming(body) => body.take(),
        }
    }
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let inner = &proxy.inner;
    let path = match inbound::normalize_path(request.uri().path()) {
        Ok(path) => path.into_owned(),
        Err(problem) => return problem.into_response(),
    };
    let head = Head {
        method: request.method(),
        path: &path,
        headers: request.headers(),
    };
    let Some(Matched {
        route,
        upstream_path,
    }) = inner.routes.find(head)
    else {
        return Problem::not_found(format!("no route serves `{path}`")).into_response();
    };
    let service = route.service.clone();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + inner.timeout;
    let prepared = prepare(
        request,
        &upstream_path,
        deadline,
        &service,
        inner.max_body_bytes,
    )
    .await;
    let (outcome, response) = match prepared {
        Err((outcome, problem)) => (outcome, problem.into_response()),
        Ok(mut prepared) => {
            // Retried only if the body can be sent again and the request is safe to repeat.
            let safe = prepared.replayable() && retry::is_safe(&prepared.method, &prepared.headers);
            let mut call = inner.pipelines[&service].start(safe);
            // A long poll takes as long as what its client waits for: not a slow call.
            let long_poll = long_poll(&prepared.headers);
            let result = loop {
                let permit = match call.admit() {
                    Ok(permit) => permit,
                    Err(open) => break Err(open),
                };
                let result = attempt(inner, &service, &mut prepared, deadline).await;
                let verdict = judge(&result);
                let next = if long_poll {
                    call.after_untimed(permit, verdict)
                } else {
                    call.after(permit, verdict)
                };
                match next {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => break Ok(result),
                }
            };
            match result {
                Ok(Ok(response)) => ("ok", response),
                Ok(Err((outcome, problem))) => (outcome, problem.into_response()),
                Err(open) => match defer(
                    inner,
                    &service,
                    &prepared.method,
                    &prepared.headers,
                    &prepared.path_and_query,
                    prepared.body.held(),
                )
                .await
                {
                    Some(response) => ("queued", response),
                    None => ("circuit_open", circuit_open(&service, &open)),
                },
            }
        }
    };
    let elapsed = started.elapsed();
    metrics::counter!(UPSTREAM_REQUESTS, "service" => service.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(UPSTREAM_DURATION, "service" => service.clone())
        .record(elapsed.as_secs_f64());
    tracing::info!(
        route = %route.name,
        %service,
        %path,
        status = response.status().as_u16(),
        outcome,
        elapsed_ms = elapsed.as_secs_f64() * 1e3,
        "forwarded"
    );
    response
}

/// The queue-for-later fallback: stores the request if its service and its shape allow it.
async fn defer(
    inner: &Inner,
    service: &str,
    method: &http::Method,
    headers: &HeaderMap,
    path_and_query: &str,
    body: Option<Bytes>,
) -> Option<Response> {
    let deferred = inner.deferred.as_ref()?;
    let body = body?;
    if !deferred.accepts(service, method, headers) {
        return None;
    }
    let queued = Queued {
        deferred_id: uuid::Uuid::now_v7().to_string(),
        service: service.to_owned(),
        method: method.clone(),
        path_and_query: path_and_query.to_owned(),
        headers: headers.clone(),
        body,
    };
    match deferred.enqueue(&queued).await {
        Ok(()) => {
            tracing::info!(%service, deferred_id = %queued.deferred_id, "request queued for later");
            Some(deferred::accepted(&queued))
        }
        Err(error) => {
            tracing::error!(%error, "could not queue the request; answering 503");
            None
        }
    }
}

/// Replays the requests queued for `service`, oldest first, whenever its breaker admits them;
/// stops at the first that fails again (so order is kept) and looks again later.
pub async fn replay(proxy: Proxy, service: String, shutdown: CancellationToken) {
    let inner = &proxy.inner;
    let (Some(deferred), Some(pipeline)) = (inner.deferred.as_ref(), inner.pipelines.get(&service))
    else {
        return;
    };
    loop {
        while let Ok(Some(queued)) = deferred.next(&service).await {
            // No retries here: the replayer tries again on its next round.
            let mut call = pipeline.start(false);
            let Ok(permit) = call.admit() else { break };
            let mut prepared = Prepared {
                method: queued.method.clone(),
                headers: queued.headers.clone(),
                path_and_query: queued.path_and_query.clone(),
                body: Outgoing::Held(queued.body.clone()),
                fault: None,
            };
            let deadline = tokio::time::Instant::now() + inner.timeout;
            let result = attempt(inner, &service, &mut prepared, deadline).await;
            let verdict = judge(&result);
            call.after(permit, verdict);
            let Ok(response) = result else { break };
            if verdict == (Verdict::Failure { retryable: true }) {
                break;
            }
            let status = response.status();
            let body = tokio::time::timeout_at(deadline, response.into_body().collect()).await;
            let Ok(Ok(body)) = body else { break };
            if let Err(error) = deferred
                .complete(&queued.deferred_id, status, &body.to_bytes())
                .await
            {
                tracing::error!(%error, "could not record a replay; it will be sent again (the idempotency key makes that safe)");
                break;
            }
            tracing::info!(%service, deferred_id = %queued.deferred_id, status = status.as_u16(), "queued request replayed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = deferred.queued.notified() => {}
            _ = tokio::time::sleep(deferred::REPLAY_INTERVAL) => {}
        }
    }
}

/// How one attempt counts for the breaker and the retry policy.
/// Whether the request asks to wait for its answer (`Prefer: wait=N`, RFC 7240), so that its
/// time says nothing of the upstream's health.
fn long_poll(headers: &HeaderMap) -> bool {
    headers
        .get_all(HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .any(|preference| {
            preference
                .split('=')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("wait"))
        })
}

fn judge(result: &Result<Response, (&'static str, Problem)>) -> Verdict {
    match result {
        Ok(response) => Verdict::of_status(response.status()),
        // Nobody was called, or the request itself was at fault.
        Err(("no_instance" | "bad_request", _)) => Verdict::Ignored,
        // The request's deadline has passed: no time for another attempt.
        Err(("timeout", _)) => Verdict::Failure { retryable: false },
        Err(_) => Verdict::Failure { retryable: true },
    }
}

/// A request ready to be sent, perhaps several times.
struct Prepared {
    method: http::Method,
    headers: HeaderMap,
    path_and_query: String,
    body: Outgoing,
    /// Where a streamed body records that the client failed it (a held one was read whole).
    fault: Option<FaultSlot>,
}

impl Prepared {
    fn replayable(&self) -> bool {
        self.body.held().is_some()
    }
}

/// Checks the request's headers, reads a small body of known length (so it can be replayed)
/// or wraps a streamed one in the body limit, and prepares the headers and the (normalised)
/// `path` with the request's query.
async fn prepare(
    request: Request,
    path: &str,
    deadline: tokio::time::Instant,
    service: &str,
    max_body_bytes: u64,
) -> Result<Prepared, (&'static str, Problem)> {
    let (parts, body) = request.into_parts();
    if let Err(problem) = inbound::check_headers(&parts.headers, max_body_bytes) {
        // A client already sending the body it declared would meet a reset instead of the
        // answer: read it away first (bounded). One waiting for `100 Continue` sends nothing.
        if !inbound::expects_continue(&parts.headers) {
            inbound::drain(body, deadline).await;
        }
        return Err(("bad_request", problem));
    }
    let mut fault = None;
    let body = match body.size_hint().exact() {
        Some(length) if length <= REPLAY_LIMIT.min(max_body_bytes) => {
            let bytes = tokio::time::timeout_at(deadline, body.collect())
                .await
                .map_err(|_| {
                    (
                        "timeout",
                        timeout_problem(service, "the request body did not arrive in time"),
                    )
                })?
                .map_err(|e| {
                    (
                        "bad_request",
                        Problem::bad_request(
                            "unreadable-body",
                            format!("the request body could not be read: {e}"),
                        ),
                    )
                })?
                .to_bytes();
            Outgoing::Held(bytes)
        }
        _ => {
            let slot = FaultSlot::default();
            fault = Some(slot.clone());
            Outgoing::Streaming(Some(Body::new(ClientBody::new(body, max_body_bytes, slot))))
        }
    };
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    Ok(Prepared {
        headers: forwarded_headers(&parts.headers),
        path_and_query,
        method: parts.method,
        body,
        fault,
    })
}

/// One attempt: the next instances in round-robin order, failing over on refused connections.
async fn attempt(
    inner: &Inner,
    service: &str,
    prepared: &mut Prepared,
    deadline: tokio::time::Instant,
) -> Result<Response, (&'static str, Problem)> {
    let candidates = inner.discovery.candidates(service).await;
    if candidates.is_empty() {
        let problem = Problem::unavailable(
            "no-instance",
            format!("no instance of `{service}` is available; retry shortly"),
        )
        .with("service", service);
        return Err(("no_instance", problem));
    }
    for endpoint in &candidates {
        let Some(body) = prepared.body.take() else {
            break;
        };
        let uri: Uri =
            match format!("http://{}{}", endpoint.address, prepared.path_and_query).parse() {
                Ok(uri) => uri,
                Err(e) => {
                    return Err((
                        "bad_request",
                        Problem::bad_request("invalid-uri", e.to_string()),
                    ));
                }
            };
        let mut upstream = http::Request::builder()
            .method(prepared.method.clone())
            .uri(uri)
            .version(http::Version::HTTP_11);
        if let Some(map) = upstream.headers_mut() {
            *map = prepared.headers.clone();
        }
        let Ok(upstream) = upstream.body(body) else {
            return Err((
                "bad_request",
                Problem::bad_request("invalid-request", "the request could not be forwarded"),
            ));
        };
        match tokio::time::timeout_at(deadline, inner.client.request(upstream)).await {
            Err(_) => {
                let detail = format!(
                    "`{service}` did not answer within {} ms",
                    inner.timeout.as_millis()
                );
                return Err(("timeout", timeout_problem(service, &detail)));
            }
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.extensions.insert(Relayed);
                return Ok(Response::from_parts(parts, Body::new(body)));
            }
            // The client's body failed (broke off, malformed, too large): its fault, not the
            // upstream's.
            Ok(Err(_))
                if let Some(problem) = prepared
                    .fault
                    .as_ref()
                    .and_then(|fault| fault.problem(inner.max_body_bytes)) =>
            {
                return Err(("bad_request", problem));
            }
            Ok(Err(error)) if error.is_connect() => {
                tracing::warn!(%service, instance = %endpoint.id, %error, "instance unreachable; failing over");
                inner.discovery.set_aside(service, endpoint);
            }
            Ok(Err(error)) => {
                tracing::warn!(%service, instance = %endpoint.id, %error, "upstream exchange failed");
                let problem = Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-failed",
                    format!("`{service}` failed to answer"),
                )
                .with("service", service);
                return Err(("error", problem));
            }
        }
    }
    let problem = Problem::new(
        StatusCode::BAD_GATEWAY,
        "upstream-unreachable",
        format!("no instance of `{service}` could be reached"),
    )
    .with("service", service);
    Err(("unreachable", problem))
}

/// The error-response fallback of an open breaker: 503 with `Retry-After`.
fn circuit_open(service: &str, open: &CircuitOpen) -> Response {
    let seconds = open.retry_after.as_secs() + u64::from(open.retry_after.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let problem = Problem::unavailable(
        "circuit-open",
        format!("`{service}` has been failing; the gateway stops calling it for a while: retry in {seconds} s"),
    )
    .with("service", service)
    .with("retry_after_s", seconds);
    ([(header::RETRY_AFTER, HeaderValue::from(seconds))], problem).into_response()
}

fn timeout_problem(service: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", detail).with("service", service)
}

/// The headers sent upstream: the client's, less hop-by-hop ones, with the request id and the
/// trace context.
fn forwarded_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    if !headers.contains_key(&REQUEST_ID)
        && let Ok(value) = HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
    {
        headers.insert(REQUEST_ID.clone(), value);
    }
    let traceparent = continue_trace(headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()));
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT.clone(), value);
    }
    headers
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// W3C trace context: keeps the trace id of a valid incoming `traceparent` and gives this hop a
/// new parent id; starts a new sampled trace otherwise.
pub fn continue_trace(incoming: Option<&str>) -> String {
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    if let Some(value) = incoming {
        let fields: Vec<&str> = value.split('-').collect();
        if let [version, trace_id, parent, flags] = fields[..]
            && version.len() == 2
            && version != "ff"
            && is_lower_hex(version)
            && trace_id.len() == 32
            && is_lower_hex(trace_id)
            && trace_id.bytes().any(|b| b != b'0')
            && parent.len() == 16
            && is_lower_hex(parent)
            && flags.len() == 2
            && is_lower_hex(flags)
        {
            return format!("00-{trace_id}-{span_id}-{flags}");
        }
    }
    format!("00-{:032x}-{span_id}-01", rand::random::<u128>() | 1)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_preference_makes_a_long_poll() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append("prefer", HeaderValue::from_str(value).expect("value"));
            }
            long_poll(&headers)
        };
        assert!(with(&["wait=8"]));
        assert!(with(&["respond-async, Wait = 3"]));
        assert!(with(&["return=minimal", "wait=1"]));
        assert!(!with(&[]));
        assert!(!with(&["return=minimal"]));
        assert!(!with(&["waiting=1"]));
    }

    #[test]
    fn a_valid_trace_is_continued_with_a_new_parent() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = continue_trace(Some(incoming));
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(out, incoming);
    }

    #[test]
    fn an_invalid_trace_is_replaced_by_a_new_one() {
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let out = continue_trace(Some(bad));
            let fields: Vec<&str> = out.split('-').collect();
            assert_eq!(fields.len(), 4, "{out}");
            assert_eq!(fields[1].len(), 32);
            assert!(!bad.contains(fields[1]), "{bad} was kept");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        incoming.insert("x-secret-hop", HeaderValue::from_static("1"));
        incoming.insert("te", HeaderValue::from_static("trailers"));
        incoming.insert(header::HOST, HeaderValue::from_static("gateway"));
        incoming.insert("x-request-id", HeaderValue::from_static("abc"));
        let out = forwarded_headers(&incoming);
        assert!(out.get("x-secret-hop").is_none());
        assert!(out.get("te").is_none());
        assert!(out.get(header::CONNECTION).is_none());
        assert!(out.get(header::HOST).is_none());
        assert_eq!(
            out.get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"abc"[..])
        );
        assert!(out.get("traceparent").is_some());
    }
}
