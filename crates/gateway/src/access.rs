//! The access log and the metrics of each route and upstream: the outermost of the gateway's
//! own layers, so it sees every answer, the ones the gateway makes itself included.
//!
//! One structured line per request (`target: "access"`): method, route, upstream service and
//! instance, status, total and upstream milliseconds, request and response bytes (as
//! declared), request id, and the fallback that answered, if any. It is on by default;
//! `access_log = false` turns it off and `access_log_sample = 0.1` keeps one request in ten.
//!
//! Metrics, with bounded labels (route names from the route file, service names, status
//! classes, failure kinds):
//!
//! | metric | labels |
//! | --- | --- |
//! | `gateway_route_requests_total` | `route`, `class` (`2xx`…`5xx`) |
//! | `gateway_route_duration_seconds` | `route` |
//! | `gateway_upstream_requests_total` | `service`, `outcome` (`ok`, a failure kind, `fallback`) |
//! | `gateway_upstream_duration_seconds` | `service` |
//! | `upstream_errors_total` | `service`, `kind` |
//!
//! Retries and ejections are counted where they happen ([`flotilla_discovery::outbound`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use flotilla_discovery::outbound::{AnsweredBy, Kind, UPSTREAM_ERRORS};
use http::header;
use metrics::{Counter, Histogram};
use tower::{Layer, Service, ServiceExt};

use crate::fallback::Stale;

/// Counter: requests by `route` and status `class`.
pub const ROUTE_REQUESTS: &str = "gateway_route_requests_total";
/// Histogram (seconds): time to the response head, by `route`.
pub const ROUTE_DURATION: &str = "gateway_route_duration_seconds";
/// Counter: calls to an upstream, by `service` and `outcome`.
pub const UPSTREAM_REQUESTS: &str = "gateway_upstream_requests_total";
/// Histogram (seconds): time to the upstream's response head, by `service`.
pub const UPSTREAM_DURATION: &str = "gateway_upstream_duration_seconds";

/// Registers the HELP text of this module's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(ROUTE_REQUESTS, "Requests by route and status class");
    metrics::describe_histogram!(
        ROUTE_DURATION,
        metrics::Unit::Seconds,
        "Time from request to response head, by route"
    );
    metrics::describe_counter!(
        UPSTREAM_REQUESTS,
        "Calls to an upstream service, by outcome"
    );
    metrics::describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Time from sending to an instance to its response head, by service"
    );
}

/// The access log's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessSettings {
    /// Whether lines are written (`access_log`).
    pub enabled: bool,
    /// The share of requests logged, 0 to 1 (`access_log_sample`).
    pub sample: f64,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            sample: 1.0,
        }
    }
}

/// The route that served a request, as a response extension, with its metric handles
/// (registered once, when the route's stack is built).
#[derive(Debug, Clone)]
pub struct RouteTag {
    /// The route's name.
    pub name: Arc<str>,
    /// Its upstream service.
    pub service: Arc<str>,
    handles: Arc<Handles>,
}

#[derive(Debug)]
struct Handles {
    /// By status class, 1xx to 5xx.
    by_class: [Counter; 5],
    duration: Histogram,
    upstream_ok: Counter,
    upstream_duration: Histogram,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl RouteTag {
    /// The tag of route `name`, leading to `service`.
    pub fn new(name: &str, service: &str) -> Self {
        let route = name.to_owned();
        let handles = Handles {
            by_class: CLASSES.map(|class| {
                metrics::counter!(ROUTE_REQUESTS, "route" => route.clone(), "class" => class)
            }),
            duration: metrics::histogram!(ROUTE_DURATION, "route" => route.clone()),
            upstream_ok: metrics::counter!(UPSTREAM_REQUESTS, "service" => service.to_owned(), "outcome" => "ok"),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION, "service" => service.to_owned()),
        };
        Self {
            name: name.into(),
            service: service.into(),
            handles: Arc::new(handles),
        }
    }
}

/// Layer of [`AccessLog`].
#[derive(Debug, Clone, Copy)]
pub struct AccessLogLayer(AccessSettings);

impl AccessLogLayer {
    /// Logging as `settings` say.
    pub fn new(settings: AccessSettings) -> Self {
        Self(settings)
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            settings: self.0,
        }
    }
}

/// Writes the access log line and records the route's and upstream's metrics.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    settings: AccessSettings,
}

impl<S> Service<Request> for AccessLog<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = self.inner.clone();
        let settings = self.settings;
        let log =
            settings.enabled && (settings.sample >= 1.0 || rand::random::<f64>() < settings.sample);
        let line = log.then(|| Line::of(&request));
        Box::pin(async move {
            let started = Instant::now();
            let Ok(response) = inner.oneshot(request).await;
            let elapsed = started.elapsed();
            let extensions = response.extensions();
            let tag = extensions.get::<RouteTag>();
            let answered = extensions.get::<AnsweredBy>();
            let failure = extensions.get::<Kind>().copied();
            let fallback = extensions.get::<Stale>().map(|stale| stale.0);
            let status = response.status();
            if let Some(tag) = tag {
                let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
                tag.handles.by_class[class].increment(1);
                tag.handles.duration.record(elapsed.as_secs_f64());
                match (answered, failure, fallback) {
                    (Some(answered), _, None) => {
                        tag.handles.upstream_ok.increment(1);
                        tag.handles
                            .upstream_duration
                            .record(answered.took.as_secs_f64());
                    }
                    (_, Some(kind), _) => {
                        let service = tag.service.to_string();
                        metrics::counter!(UPSTREAM_REQUESTS, "service" => service.clone(), "outcome" => kind.label()).increment(1);
                        if kind != Kind::Client {
                            metrics::counter!(UPSTREAM_ERRORS, "service" => service, "kind" => kind.label()).increment(1);
                        }
                    }
                    (_, None, Some(_)) => {
                        metrics::counter!(UPSTREAM_REQUESTS, "service" => tag.service.to_string(), "outcome" => "fallback").increment(1);
                    }
                    _ => {}
                }
            }
            if let Some(line) = line {
                let response_bytes = http_body::Body::size_hint(response.body()).exact();
                tracing::info!(
                    target: "access",
                    method = %line.method,
                    path = %line.path,
                    route = tag.map_or("-", |tag| &tag.name),
                    upstream = tag.map_or("-", |tag| &tag.service),
                    instance = answered.map_or("-", |answered| &answered.instance),
                    status = status.as_u16(),
                    duration_ms = elapsed.as_secs_f64() * 1e3,
                    upstream_ms = answered.map(|answered| answered.took.as_secs_f64() * 1e3),
                    request_bytes = line.request_bytes,
                    response_bytes,
                    request_id = %line.request_id,
                    failure = failure.map(Kind::label),
                    fallback,
                );
            }
            Ok(response)
        })
    }
}

/// What the log line needs from the request.
struct Line {
    method: http::Method,
    path: String,
    request_bytes: Option<u64>,
    request_id: String,
}

impl Line {
    fn of(request: &Request) -> Self {
        let headers = request.headers();
        Self {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            request_bytes: headers
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok()),
            request_id: headers
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("-")
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use http::StatusCode;

    use super::*;

    /// Log lines written while the test's subscriber is the default.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines the access log writes for `requests` requests with `settings`, the inner
    /// service answering 201 through the route `orders` from instance `order-1`.
    async fn lines(settings: AccessSettings, requests: usize) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        let inner = tower::service_fn(|_request: Request| async {
            let mut response = Response::new(Body::from("created"));
            *response.status_mut() = StatusCode::CREATED;
            response
                .extensions_mut()
                .insert(RouteTag::new("orders", "order"));
            response.extensions_mut().insert(AnsweredBy {
                instance: Arc::from("order-1"),
                took: std::time::Duration::from_millis(3),
            });
            Ok::<_, Infallible>(response)
        });
        let service = AccessLogLayer::new(settings).layer(inner);
        let _default = tracing::subscriber::set_default(subscriber);
        for _ in 0..requests {
            let request = http::Request::post("/v1/orders")
                .header("x-request-id", "req-7")
                .header(header::CONTENT_LENGTH, "2")
                .body(Body::from("{}"))
                .expect("request");
            let Ok(response) = service.clone().oneshot(request).await;
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        let text = captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&text)
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_structured_line_per_request() {
        let lines = lines(AccessSettings::default(), 3).await;
        assert_eq!(lines.len(), 3);
        let line = &lines[0];
        assert_eq!(line["target"], "access");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/v1/orders");
        assert_eq!(line["route"], "orders");
        assert_eq!(line["upstream"], "order");
        assert_eq!(line["instance"], "order-1");
        assert_eq!(line["status"], 201);
        assert_eq!(line["request_bytes"], 2);
        assert_eq!(line["response_bytes"], 7);
        assert_eq!(line["request_id"], "req-7");
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
        assert!(
            line["upstream_ms"].as_f64().is_some_and(|ms| ms >= 3.0),
            "{line}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_log_can_be_turned_off_or_sampled() {
        let off = AccessSettings {
            enabled: false,
            sample: 1.0,
        };
        assert!(lines(off, 20).await.is_empty());
        let tenth = AccessSettings {
            enabled: true,
            sample: 0.1,
        };
        // 1,000 requests at one in ten: 100 expected; fewer than 40 or more than 160 is
        // (binomial) a one-in-a-billion event.
        let sampled = lines(tenth, 1_000).await.len();
        assert!((40..=160).contains(&sampled), "{sampled} lines");
    }
}
