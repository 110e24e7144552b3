//! Prometheus metrics: one recorder per process, `/metrics`, the HTTP server metrics, and the
//! process's own (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_threads`, … in the names of Prometheus's client libraries, read
//! from `/proc` by the `metrics-process` crate each time `/metrics` is rendered).
//!
//! Metric names are declared here, with their units, and nowhere else in the kit.
//! Labels are bounded: the route is the matched route template, never the raw path.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Counter: HTTP requests served, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "http_server_requests_total";
/// Histogram (seconds): time to the response head, by `method`, `route` and `status`.
pub const HTTP_DURATION: &str = "http_server_request_duration_seconds";

/// Latency buckets, in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process metrics' collector.
fn process() -> &'static metrics_process::Collector {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// The process's Prometheus handle, installing the global recorder on first use.
///
/// Several components may live in one process (tests do that): they share the recorder.
/// Call it before anything registers a metric handle (a circuit breaker does when it is made):
/// handles registered before the recorder exists record nothing.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        match builder.install_recorder() {
            Ok(handle) => {
                metrics::describe_counter!(
                    HTTP_REQUESTS,
                    metrics::Unit::Count,
                    "HTTP requests served, by method, route and status"
                );
                process().describe();
                metrics::describe_histogram!(
                    HTTP_DURATION,
                    metrics::Unit::Seconds,
                    "Time from request to response head"
                );
                handle
            }
            // Another recorder is installed (an embedding application chose its own): ours
            // still renders, it just sees nothing.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    })
}

/// The `/metrics` handler: the Prometheus text exposition, the process metrics read now.
pub async fn render() -> String {
    process().collect();
    handle().render()
}

/// Middleware recording [`HTTP_REQUESTS`] and [`HTTP_DURATION`] for every request.
pub async fn record(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(start.elapsed().as_secs_f64());
    response
}
