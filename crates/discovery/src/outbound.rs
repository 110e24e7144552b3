//! The client side of every call to a service, as one tower stack.
//!
//! [`stack`] assembles it, outermost first:
//!
//! 1. **retry** ([`Retry`]) — a request safe to repeat (idempotent method or `Idempotency-Key`)
//!    with a body that can be sent again is retried after a 502/503/504 or a transport failure,
//!    with full-jitter backoff, within the service's retry budget and the call's deadline;
//! 2. **circuit breaker** ([`Breaker`]) — each attempt passes it; while it is open nothing is
//!    sent and the call fails at once (which the retry never retries);
//! 3. **bulkhead** ([`Bulkhead`]) — at most so many calls in flight to the service, a bounded
//!    line waiting for a place; a refusal is this process's overload, not the service's
//!    failure, so the breaker ignores it;
//! 4. **load balancer** ([`Balance`]) — the instances in the order to try them
//!    ([`crate::balance`]: power of two choices or round robin, version weights, the
//!    `X-Canary` pin, ejected instances last);
//! 5. **endpoint** ([`Endpoint`]) — sends the request over a kept HTTP/1.1 connection
//!    ([`crate::pool`]) to the first instance, failing over to the next when one refuses the
//!    connection (nothing was sent, so the same request goes on, whatever its body), and tells
//!    the balancer how each exchange went.
//!
//! The API gateway puts its server and per-route layers on top of it; [`crate::Discovery::send`]
//! (service-to-service calls) runs through the same stack, so both get the same policies.
//!
//! Every failure is a [`Failure`]: its [`Kind`] says whose fault it is (the breaker ignores the
//! client's faults and this process's own refusals) and its problem is the answer a caller
//! gives its client.

use std::fmt;
use std::future::Future;
use std::pin::Pin as StdPin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use flotilla_kit::Problem;
use flotilla_kit::app::Relayed;
use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, CircuitOpen, ConfigError};
use flotilla_resilience::bulkhead::{self, BulkheadConfig, BulkheadFull};
use flotilla_resilience::pipeline::Verdict;
use flotilla_resilience::retry::{self, RetryConfig, RetryPolicy};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, header};
use http_body_util::BodyExt as _;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::balance::{BalanceConfig, Balancer, Pin};
use crate::{Cache, Endpoint as Instance};

/// Counter: attempts after the first, by `service`.
pub const UPSTREAM_RETRIES: &str = "upstream_retries_total";
/// Counter: instances set aside by passive outlier ejection, by `service`.
pub const UPSTREAM_EJECTIONS: &str = "upstream_ejections_total";
/// Counter: failed calls, by `service` and `kind` ([`Kind::label`]).
pub const UPSTREAM_ERRORS: &str = "upstream_errors_total";

/// Registers the HELP text of this module's metrics (once the recorder exists).
pub fn describe_metrics() {
    metrics::describe_counter!(UPSTREAM_RETRIES, "Attempts after the first, by service");
    metrics::describe_counter!(
        UPSTREAM_EJECTIONS,
        "Instances set aside after failing in a row, by service"
    );
    metrics::describe_counter!(
        UPSTREAM_ERRORS,
        "Calls that failed, by service and kind of failure"
    );
}

/// A call to a service as the stack carries it.
#[derive(Debug)]
pub struct Exchange {
    /// The service called.
    pub service: Arc<str>,
    /// The method.
    pub method: Method,
    /// Path and query for the upstream.
    pub path_and_query: String,
    /// Headers to send (hop-by-hop ones already removed).
    pub headers: HeaderMap,
    /// The body.
    pub body: Outgoing,
    /// When the whole call must be over, retries included.
    pub deadline: tokio::time::Instant,
    /// A long poll (`Prefer: wait=N`): its duration says nothing of the upstream's health.
    pub long_poll: bool,
    /// Whether the retry layer may send it again (a caller that retries on its own says no).
    pub retry: bool,
    /// The client's `X-Canary` pin.
    pub pin: Pin,
    /// What the layers above the retry learnt of the request and tell each other, as in
    /// [`http::Request::extensions`]: the client's address, the caller a token named. Never
    /// sent upstream, and not copied into an attempt ([`Exchange::try_clone`]): no layer from
    /// the retry down reads them, and a copy per request would cost allocations.
    pub extensions: http::Extensions,
}

impl Exchange {
    /// A call of `method` on `path_and_query` of `service`, with `headers` and `body`, due
    /// within `timeout`; the pin is read from the headers, and it may be retried.
    pub fn new(
        service: Arc<str>,
        method: Method,
        path_and_query: String,
        headers: HeaderMap,
        body: Outgoing,
        timeout: Duration,
    ) -> Self {
        let pin = Pin::of(&headers);
        let long_poll = long_poll(&headers);
        let now = tokio::time::Instant::now();
        // No deadline at all is a deadline a year away.
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        Self {
            service,
            method,
            path_and_query,
            headers,
            body,
            deadline,
            long_poll,
            retry: true,
            pin,
            extensions: http::Extensions::new(),
        }
    }

    /// A copy to send as one attempt, if the body can be sent again; without the
    /// [`extensions`](Exchange::extensions), which stay with the call.
    pub fn try_clone(&self) -> Option<Self> {
        let body = match &self.body {
            Outgoing::Held(bytes) => Outgoing::Held(bytes.clone()),
            Outgoing::Streaming { .. } => return None,
        };
        Some(Self {
            service: self.service.clone(),
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers: self.headers.clone(),
            body,
            deadline: self.deadline,
            long_poll: self.long_poll,
            retry: self.retry,
            pin: self.pin,
            extensions: http::Extensions::new(),
        })
    }

    /// Whether the request may be sent twice (see [`retry::is_safe`]) and its body can be.
    pub fn is_repeatable(&self) -> bool {
        matches!(self.body, Outgoing::Held(_)) && retry::is_safe(&self.method, &self.headers)
    }
}

/// Whether the request asks to wait for its answer (`Prefer: wait=N`, RFC 7240).
pub fn long_poll(headers: &HeaderMap) -> bool {
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

/// Finds out whether a streamed body failed through the client's fault.
pub trait ClientFault: Send + Sync + fmt::Debug {
    /// The problem to answer, if the client broke the body (too large, malformed, cut off).
    fn problem(&self) -> Option<Problem>;
}

/// The body of a call: held (it can be sent again) or streaming (sent once).
pub enum Outgoing {
    /// In memory.
    Held(Bytes),
    /// Streaming from the client; taken by the first attempt.
    Streaming {
        /// The body, until an attempt takes it.
        body: Mutex<Option<Body>>,
        /// How to tell the client's fault from the upstream's when the exchange breaks.
        fault: Option<Arc<dyn ClientFault>>,
    },
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outgoing::Held(bytes) => write!(f, "Held({} bytes)", bytes.len()),
            Outgoing::Streaming { .. } => f.write_str("Streaming"),
        }
    }
}

impl Outgoing {
    /// A streamed body.
    pub fn streaming(body: Body, fault: Option<Arc<dyn ClientFault>>) -> Self {
        Outgoing::Streaming {
            body: Mutex::new(Some(body)),
            fault,
        }
    }

    /// The body for one attempt (a streamed one only once).
    fn take(&self) -> Option<Body> {
        match self {
            Outgoing::Held(bytes) => Some(Body::from(bytes.clone())),
            Outgoing::Streaming { body, .. } => body
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        }
    }

    /// The client's fault, if the client broke a streamed body.
    fn client_fault(&self) -> Option<Problem> {
        match self {
            Outgoing::Streaming {
                fault: Some(fault), ..
            } => fault.problem(),
            _ => None,
        }
    }
}

/// Whose fault a failed call is, and what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The service has no passing instance: nothing was sent.
    NoInstance,
    /// Every instance tried refused the connection.
    Unreachable,
    /// The deadline passed.
    Timeout,
    /// An instance was reached but the exchange broke.
    Upstream,
    /// The client broke the request (its body): its fault, never the service's.
    Client,
    /// The service's breaker is open: nothing was sent.
    CircuitOpen,
    /// The bulkhead is full: nothing was sent.
    BulkheadFull,
}

impl Kind {
    /// The label of the kind in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Kind::NoInstance => "no_instance",
            Kind::Unreachable => "unreachable",
            Kind::Timeout => "timeout",
            Kind::Upstream => "error",
            Kind::Client => "bad_request",
            Kind::CircuitOpen => "circuit_open",
            Kind::BulkheadFull => "bulkhead_full",
        }
    }

    /// Whether the request surely never reached the service (so storing it to send later
    /// cannot make it happen twice).
    pub fn never_sent(self) -> bool {
        matches!(
            self,
            Kind::NoInstance | Kind::Unreachable | Kind::CircuitOpen | Kind::BulkheadFull
        )
    }

    /// How the failure counts for the breaker: the client's faults and this process's own
    /// refusals say nothing of the service's health; a passed deadline leaves no time to retry.
    fn verdict(self) -> Verdict {
        match self {
            Kind::NoInstance | Kind::Client | Kind::CircuitOpen | Kind::BulkheadFull => {
                Verdict::Ignored
            }
            Kind::Timeout => Verdict::Failure { retryable: false },
            Kind::Unreachable | Kind::Upstream => Verdict::Failure { retryable: true },
        }
    }
}

/// A failed call: its kind and the problem to answer with.
#[derive(Debug)]
pub struct Failure {
    /// What happened.
    pub kind: Kind,
    /// The answer for the client (problem+json).
    pub problem: Problem,
    /// How long until it is worth asking again (an open breaker's wait), for `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.problem)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn new(kind: Kind, problem: Problem) -> Self {
        Self {
            kind,
            problem,
            retry_after: None,
        }
    }

    /// No instance of `service` is passing.
    pub fn no_instance(service: &str) -> Self {
        let problem = Problem::unavailable(
            "no-instance",
            format!("no instance of `{service}` is available; retry shortly"),
        )
        .with("service", service);
        Self::new(Kind::NoInstance, problem)
    }

    /// `service` did not answer in time.
    pub fn timeout(service: &str, detail: impl Into<String>) -> Self {
        let problem = Problem::new(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout", detail)
            .with("service", service);
        Self::new(Kind::Timeout, problem)
    }

    /// An instance of `service` was reached but the exchange broke (`detail` says how): 502.
    pub fn upstream(service: &str, detail: impl Into<String>) -> Self {
        let problem = Problem::new(StatusCode::BAD_GATEWAY, "upstream-failed", detail)
            .with("service", service);
        Self::new(Kind::Upstream, problem)
    }

    /// The client broke the request.
    pub fn client(problem: Problem) -> Self {
        Self::new(Kind::Client, problem)
    }

    fn circuit_open(service: &str, open: &CircuitOpen) -> Self {
        let seconds = open.retry_after.as_secs() + u64::from(open.retry_after.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        let problem = Problem::unavailable(
            "circuit-open",
            format!(
                "`{service}` has been failing; calls to it stop for a while: retry in {seconds} s"
            ),
        )
        .with("service", service)
        .with("retry_after_s", seconds);
        Self {
            kind: Kind::CircuitOpen,
            problem,
            retry_after: Some(Duration::from_secs(seconds)),
        }
    }

    fn bulkhead_full(service: &str, full: BulkheadFull) -> Self {
        let problem = Problem::unavailable(
            "bulkhead-full",
            format!("too many calls to `{service}` are in flight ({full}); retry shortly"),
        )
        .with("service", service);
        Self {
            kind: Kind::BulkheadFull,
            problem,
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    /// The answer: the problem, with `Retry-After` when there is a wait to tell.
    pub fn into_response(self) -> Response<Body> {
        use axum::response::IntoResponse;
        let mut response = self.problem.into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

/// The policies in front of one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamConfig {
    /// The circuit breaker; none if `None`.
    pub breaker: Option<BreakerConfig>,
    /// The retry policy; none if `None`.
    pub retry: Option<RetryConfig>,
    /// The bulkhead; none if `None`.
    pub bulkhead: Option<BulkheadConfig>,
    /// How instances are chosen.
    pub balance: BalanceConfig,
}

/// The state of the policies in front of one service, shared by every stack that calls it.
#[derive(Debug, Clone)]
pub struct Upstream {
    service: Arc<str>,
    breaker: Option<CircuitBreaker>,
    retry: Option<RetryPolicy>,
    bulkhead: Option<bulkhead::Bulkhead>,
    balancer: Balancer,
}

impl Upstream {
    /// The policies of `service` as `config` sets them. Fails if a part is invalid.
    pub fn new(service: &str, config: &UpstreamConfig) -> Result<Self, ConfigError> {
        let breaker = config
            .breaker
            .clone()
            .map(|breaker| CircuitBreaker::new(service, breaker))
            .transpose()?;
        let retry = config.retry.clone().map(RetryPolicy::new).transpose()?;
        let balancer = Balancer::new(service, config.balance.clone()).map_err(|_| ConfigError {
            component: "balance",
            field: "balance",
            reason: "invalid balancing configuration",
        })?;
        Ok(Self {
            service: service.into(),
            breaker,
            retry,
            bulkhead: config.bulkhead.map(bulkhead::Bulkhead::new),
            balancer,
        })
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Its circuit breaker, if it has one.
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// Its retry policy, if it has one.
    pub fn retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// Its balancer.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

/// The HTTP client of a stack: a pool of HTTP/1.1 connections by instance address
/// ([`crate::pool`]); every stack of a gateway worker, or of a service, shares one.
pub type HttpClient = crate::pool::HttpClient;

/// A new connection pool (1 s to connect, `TCP_NODELAY`, 30 s idle).
pub fn http_client() -> HttpClient {
    HttpClient::new()
}

/// The client stack of one service, boxed.
pub type Client = BoxCloneSyncService<Exchange, Response<Body>, Failure>;

/// The client stack of `upstream`: retry, breaker, bulkhead, balancer, endpoint (see the
/// module's documentation for why in this order).
pub fn stack(upstream: &Upstream, discovery: &Cache, http: &HttpClient) -> Client {
    BoxCloneSyncService::new(layers(upstream, discovery, http))
}

/// [`stack`], before it is boxed (its type names its layers in order).
pub fn layers(
    upstream: &Upstream,
    discovery: &Cache,
    http: &HttpClient,
) -> Retry<Breaker<Bulkhead<Balance<Endpoint>>>> {
    ServiceBuilder::new()
        // Each attempt goes through everything below: judged by the breaker, bulkheaded,
        // balanced again.
        .layer(RetryLayer(upstream.clone()))
        // Above the bulkhead, so that the bulkhead's refusals are not the service's failures.
        .layer(BreakerLayer(upstream.clone()))
        .layer(BulkheadLayer(upstream.clone()))
        .layer(BalanceLayer {
            discovery: discovery.clone(),
            balancer: upstream.balancer.clone(),
        })
        .service(Endpoint { http: http.clone() })
}

type BoxFuture<T> = StdPin<Box<dyn Future<Output = T> + Send>>;
type Answer = Result<Response<Body>, Failure>;

/// Layer of [`Timeout`].
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer(Duration);

impl TimeoutLayer {
    /// Calls through it end within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self(timeout)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.0,
        }
    }
}

/// The deadline of a whole call, retries included: the layers below read it from the
/// [`Exchange`] (the retry does not start an attempt it cannot finish), and the call fails
/// with 504 when it passes.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Exchange> for Timeout<S>
where
    S: Service<Exchange, Response = Response<Body>, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let now = tokio::time::Instant::now();
        if let Some(deadline) = now.checked_add(self.timeout) {
            exchange.deadline = exchange.deadline.min(deadline);
        }
        let deadline = exchange.deadline;
        let service = exchange.service.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, inner.oneshot(exchange)).await {
                Ok(answer) => answer,
                Err(_) => Err(Failure::timeout(
                    &service,
                    format!(
                        "`{service}` did not answer within {} ms",
                        timeout.as_millis()
                    ),
                )),
            }
        })
    }
}

/// Layer of [`Retry`].
#[derive(Debug, Clone)]
pub struct RetryLayer(Upstream);

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: self.0.retry.clone(),
            service: self.0.service.clone(),
        }
    }
}

/// Sends a repeatable call again after a retryable failure (see [`retry`]).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Option<RetryPolicy>,
    service: Arc<str>,
}

impl<S> Service<Exchange> for Retry<S>
where
    S: Service<Exchange, Response = Response<Body>, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let policy = match &self.policy {
            Some(policy) if exchange.retry && exchange.is_repeatable() => policy.clone(),
            _ => return Box::pin(inner.oneshot(exchange)),
        };
        let service = self.service.clone();
        Box::pin(async move {
            let mut policy = policy;
            loop {
                let Some(attempt) = exchange.try_clone() else {
                    return inner.clone().oneshot(exchange).await;
                };
                let answer = inner.clone().oneshot(attempt).await;
                let retryable = match &answer {
                    Ok(response) => retry::is_retryable_status(response.status()),
                    Err(failure) => failure.kind.verdict() == Verdict::Failure { retryable: true },
                };
                match policy.next_wait(true, retryable) {
                    Some(wait) if tokio::time::Instant::now() + wait < exchange.deadline => {
                        metrics::counter!(UPSTREAM_RETRIES, "service" => service.to_string())
                            .increment(1);
                        tokio::time::sleep(wait).await;
                    }
                    _ => return answer,
                }
            }
        })
    }
}

/// Layer of [`Breaker`].
#[derive(Debug, Clone)]
pub struct BreakerLayer(Upstream);

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            breaker: self.0.breaker.clone(),
        }
    }
}

/// Admits an attempt through the service's circuit breaker and reports how it went.
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    breaker: Option<CircuitBreaker>,
}

impl<S> Service<Exchange> for Breaker<S>
where
    S: Service<Exchange, Response = Response<Body>, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let Some(breaker) = &self.breaker else {
            return Box::pin(inner.oneshot(exchange));
        };
        let permit = match breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                let failure = Failure::circuit_open(&exchange.service, &open);
                return Box::pin(std::future::ready(Err(failure)));
            }
        };
        let untimed = exchange.long_poll;
        Box::pin(async move {
            let answer = inner.oneshot(exchange).await;
            let verdict = match &answer {
                Ok(response) => Verdict::of_status(response.status()),
                Err(failure) => failure.kind.verdict(),
            };
            if untimed {
                permit.record_with_duration(verdict.outcome(), Duration::ZERO);
            } else {
                permit.record(verdict.outcome());
            }
            answer
        })
    }
}

/// Layer of [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadLayer(Upstream);

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            bulkhead: self.0.bulkhead.clone(),
        }
    }
}

/// Holds a place in the service's bulkhead for the length of an attempt.
#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    bulkhead: Option<bulkhead::Bulkhead>,
}

impl<S> Service<Exchange> for Bulkhead<S>
where
    S: Service<Exchange, Response = Response<Body>, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let Some(bulkhead) = self.bulkhead.clone() else {
            return Box::pin(inner.oneshot(exchange));
        };
        Box::pin(async move {
            // The place is held until the response head: the exchange is what it bounds.
            let _place = match bulkhead.acquire().await {
                Ok(place) => place,
                Err(full) => return Err(Failure::bulkhead_full(&exchange.service, full)),
            };
            inner.oneshot(exchange).await
        })
    }
}

/// Layer of [`Balance`].
#[derive(Debug, Clone)]
pub struct BalanceLayer {
    discovery: Cache,
    balancer: Balancer,
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Balance {
            inner,
            discovery: self.discovery.clone(),
            balancer: self.balancer.clone(),
        }
    }
}

/// An exchange with the instances to try, best first.
#[derive(Debug)]
pub struct Targeted {
    /// The call.
    pub exchange: Exchange,
    /// The instances, in the order to try them.
    pub instances: Vec<Instance>,
    /// The balancer to tell how each exchange went.
    pub balancer: Balancer,
    /// Where to set aside an instance that refuses the connection.
    pub discovery: Cache,
}

/// Finds the service's instances and orders them with its [`Balancer`].
#[derive(Debug, Clone)]
pub struct Balance<S> {
    inner: S,
    discovery: Cache,
    balancer: Balancer,
}

impl<S> Service<Exchange> for Balance<S>
where
    S: Service<Targeted, Response = Response<Body>, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let discovery = self.discovery.clone();
        let balancer = self.balancer.clone();
        Box::pin(async move {
            let pin = exchange.pin;
            let instances = discovery
                .ordered(&exchange.service, |endpoints| {
                    balancer.order(endpoints, pin)
                })
                .await;
            if instances.is_empty() {
                return Err(Failure::no_instance(&exchange.service));
            }
            inner
                .oneshot(Targeted {
                    exchange,
                    instances,
                    balancer,
                    discovery,
                })
                .await
        })
    }
}

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, those named in `Connection` among them.
///
/// The names are looked at once, and only those present are removed: most requests carry
/// none, most answers only `Connection: keep-alive` (removing each of the nine names in turn
/// hashed them all, for every message: 7 % of the gateway's instructions).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            if HOP_BY_HOP
                .iter()
                .any(|hop| hop.as_str().eq_ignore_ascii_case(token))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                present.push(name);
            }
        }
    }
    for name in present {
        headers.remove(name);
    }
}

/// The largest answer read whole before it is passed on (larger ones stream).
pub const RESPONSE_BUFFER: u64 = 64 * 1024;

/// The instance that answered and how long it took to the response head, as a response
/// extension (for access logs).
#[derive(Debug, Clone)]
pub struct AnsweredBy {
    /// The instance's id.
    pub instance: Arc<str>,
    /// From sending the request to the response head.
    pub took: Duration,
}

/// Sends the exchange to the first instance that takes the connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    http: HttpClient,
}

impl Endpoint {
    /// An endpoint sending with `http`.
    pub fn new(http: HttpClient) -> Self {
        Self { http }
    }
}

impl Service<Targeted> for Endpoint {
    type Response = Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, targeted: Targeted) -> Self::Future {
        let http = self.http.clone();
        Box::pin(send(http, targeted))
    }
}

async fn send(http: HttpClient, targeted: Targeted) -> Answer {
    let Targeted {
        mut exchange,
        instances,
        balancer,
        discovery,
    } = targeted;
    let service = exchange.service.clone();
    let service = &*service;
    // Made once: a connection that cannot be opened gives the request back whole (nothing was
    // sent), and it goes to the next instance as it is, whatever its body.
    let mut unsent: Option<http::Request<Body>> = None;
    for instance in &instances {
        let request = match unsent.take() {
            Some(request) => request,
            None => {
                let Some(body) = exchange.body.take() else {
                    break;
                };
                let uri: Uri = match exchange.path_and_query.parse() {
                    Ok(uri) => uri,
                    Err(e) => {
                        return Err(Failure::client(Problem::bad_request(
                            "invalid-uri",
                            e.to_string(),
                        )));
                    }
                };
                let mut request = http::Request::new(body);
                *request.method_mut() = exchange.method.clone();
                *request.uri_mut() = uri;
                *request.headers_mut() = std::mem::take(&mut exchange.headers);
                request
            }
        };
        let in_flight = balancer.start(instance);
        let sent = std::time::Instant::now();
        let result =
            tokio::time::timeout_at(exchange.deadline, http.send(&instance.address, request)).await;
        drop(in_flight);
        match result {
            Err(_) => {
                if !exchange.long_poll {
                    report(&balancer, instance, false);
                }
                return Err(Failure::timeout(
                    service,
                    format!("`{service}` did not answer in time"),
                ));
            }
            Ok(Ok(response)) => {
                report(&balancer, instance, !response.status().is_server_error());
                let (mut parts, body) = response.into_parts();
                // A short answer is read whole (as nginx's proxy buffers do): the caller then
                // writes its head and body in one go instead of the head alone first.
                let body = match http_body::Body::size_hint(&body).exact() {
                    Some(length) if length <= RESPONSE_BUFFER => {
                        match tokio::time::timeout_at(exchange.deadline, body.collect()).await {
                            Ok(Ok(collected)) => Body::from(collected.to_bytes()),
                            _ => {
                                return Err(Failure::upstream(
                                    service,
                                    format!("the answer of `{service}` broke off"),
                                ));
                            }
                        }
                    }
                    _ => Body::new(body),
                };
                strip_hop_by_hop(&mut parts.headers);
                parts.extensions.insert(Relayed);
                parts.extensions.insert(AnsweredBy {
                    instance: Arc::from(instance.id.as_str()),
                    took: sent.elapsed(),
                });
                return Ok(Response::from_parts(parts, body));
            }
            // The client's body failed (broke off, malformed, too large): its fault, not the
            // instance's.
            Ok(Err(_)) if let Some(problem) = exchange.body.client_fault() => {
                return Err(Failure::client(problem));
            }
            Ok(Err(crate::pool::SendError::Connect { error, request })) => {
                tracing::warn!(%service, instance = %instance.id, %error, "instance unreachable; failing over");
                discovery.set_aside(service, instance);
                report(&balancer, instance, false);
                unsent = Some(*request);
            }
            Ok(Err(error)) => {
                tracing::warn!(%service, instance = %instance.id, %error, "upstream exchange failed");
                report(&balancer, instance, false);
                return Err(Failure::upstream(
                    service,
                    format!("`{service}` failed to answer"),
                ));
            }
        }
    }
    let problem = Problem::new(
        StatusCode::BAD_GATEWAY,
        "upstream-unreachable",
        format!("no instance of `{service}` could be reached"),
    )
    .with("service", service);
    Err(Failure::new(Kind::Unreachable, problem))
}

/// Tells the balancer how an exchange with `instance` went, counting an ejection.
fn report(balancer: &Balancer, instance: &Instance, ok: bool) {
    if balancer.record(instance, ok) {
        tracing::warn!(service = %balancer.service(), instance = %instance.id, "instance ejected after failing in a row");
        metrics::counter!(UPSTREAM_EJECTIONS, "service" => balancer.service().to_owned())
            .increment(1);
    }
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

    #[tokio::test]
    async fn a_streamed_body_fails_over_whole_when_the_first_instance_refuses_the_connection() {
        use axum::routing::post;
        let dead = flotilla_testkit::dead_address().await;
        let live = flotilla_testkit::serve_instance(
            axum::Router::new().route("/echo", post(|body: Bytes| async move { body })),
        )
        .await;
        let cache = Cache::fixed(std::collections::HashMap::from([(
            "svc".to_owned(),
            vec![dead, live],
        )]));
        // Round robin from the first instance in the view: the dead one is tried first.
        let config = UpstreamConfig {
            balance: crate::balance::BalanceConfig {
                balance: crate::balance::Strategy::RoundRobin,
                ..Default::default()
            },
            ..Default::default()
        };
        let upstream = Upstream::new("svc", &config).expect("valid");
        let client = stack(&upstream, &cache, &http_client());
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"sent ")),
            Ok(Bytes::from_static(b"once")),
        ];
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let exchange = Exchange::new(
            Arc::from("svc"),
            Method::POST,
            "/echo".to_owned(),
            HeaderMap::new(),
            Outgoing::streaming(body, None),
            Duration::from_secs(2),
        );
        let response = client
            .oneshot(exchange)
            .await
            .expect("the live instance answers");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&bytes[..], b"sent once", "the streamed body arrived whole");
        assert!(
            cache.is_set_aside("svc", "svc-0"),
            "the dead instance was tried first, and set aside"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("x-secret-hop").is_none());
        assert!(headers.get("te").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("x-kept").is_some());

        let mut proxied = HeaderMap::new();
        proxied.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        proxied.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        proxied.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut proxied);
        assert_eq!(proxied.len(), 1, "only `x-kept` is left: {proxied:?}");

        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("a"));
        plain.insert("x-kept", HeaderValue::from_static("1"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before, "nothing hop-by-hop, nothing changed");
    }

    #[test]
    fn the_client_s_faults_and_our_refusals_never_count_against_the_service() {
        for kind in [
            Kind::Client,
            Kind::NoInstance,
            Kind::CircuitOpen,
            Kind::BulkheadFull,
        ] {
            assert_eq!(kind.verdict(), Verdict::Ignored, "{kind:?}");
        }
        assert_eq!(
            Kind::Timeout.verdict(),
            Verdict::Failure { retryable: false }
        );
        assert_eq!(
            Kind::Upstream.verdict(),
            Verdict::Failure { retryable: true }
        );
    }
}
