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
    /// JSON lines, as the process's other logs (else a text line).
    pub json: bool,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            sample: 1.0,
            json: true,
        }
    }
}

/// Where access lines go: standard error, as the process's other logs (a test captures them).
pub type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// The most bytes of lines written at once: a write to a pipe up to this size is not
/// interleaved with another writer's (the process's other log lines), and one write carries
/// some 20 lines instead of one (a write a request cost 4 µs of the gateway's 39, measured).
pub const WRITE_BYTES: usize = 4096;

/// The longest an access line waits in the buffer before it is written.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Lines waiting to be written to standard error, whole lines only.
static BUFFERED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Access lines to standard error, gathered into writes of up to [`WRITE_BYTES`] (as nginx's
/// `access_log … buffer=`), written at the latest [`FLUSH_INTERVAL`] later and when the
/// gateway stops ([`flush`]). A process killed outright loses at most that interval's lines.
fn stderr() -> Sink {
    static FLUSHER: std::sync::Once = std::sync::Once::new();
    FLUSHER.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(|| {
                loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    flush();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no access log flusher: lines are written when 4 KiB gather");
        }
    });
    Arc::new(|line: &[u8]| {
        let mut buffered = BUFFERED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gather(&mut buffered, line, write_stderr);
    })
}

/// Adds `line` to `buffered`, first writing out what `buffered` holds if `line` would take it
/// past [`WRITE_BYTES`]; a line longer than that is written alone. A write carries whole lines.
fn gather(buffered: &mut Vec<u8>, line: &[u8], mut write: impl FnMut(&[u8])) {
    if buffered.len() + line.len() > WRITE_BYTES && !buffered.is_empty() {
        write(buffered);
        buffered.clear();
    }
    if line.len() > WRITE_BYTES {
        write(line);
    } else {
        buffered.extend_from_slice(line);
    }
}

/// Writes the access lines still buffered.
pub fn flush() {
    let mut buffered = BUFFERED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !buffered.is_empty() {
        write_stderr(&buffered);
        buffered.clear();
    }
}

fn write_stderr(bytes: &[u8]) {
    use std::io::Write as _;
    // A closed stderr (the supervisor died) must not fail the request.
    let _ = std::io::stderr().write_all(bytes);
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
#[derive(Clone)]
pub struct AccessLogLayer {
    settings: AccessSettings,
    sink: Sink,
}

impl std::fmt::Debug for AccessLogLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogLayer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AccessLogLayer {
    /// Logging to standard error as `settings` say.
    pub fn new(settings: AccessSettings) -> Self {
        Self::with_sink(settings, stderr())
    }

    /// Logging to `sink`.
    pub fn with_sink(settings: AccessSettings, sink: Sink) -> Self {
        Self { settings, sink }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            settings: self.settings,
            sink: self.sink.clone(),
        }
    }
}

/// Writes the access log line and records the route's and upstream's metrics.
#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    settings: AccessSettings,
    sink: Sink,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AccessLog<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
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
        let sink = self.sink.clone();
        let log = settings.enabled
            && (settings.sample >= 1.0 || rand::random::<f64>() < settings.sample)
            && tracing::enabled!(target: "access", tracing::Level::INFO);
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
                let entry = Entry {
                    line,
                    route: tag.map(|tag| &*tag.name),
                    upstream: tag.map(|tag| &*tag.service),
                    instance: answered.map(|answered| &*answered.instance),
                    status: status.as_u16(),
                    duration: elapsed,
                    upstream_time: answered.map(|answered| answered.took),
                    response_bytes: http_body::Body::size_hint(response.body()).exact(),
                    // Set on every answer by the edge, below.
                    request_id: response
                        .headers()
                        .get("x-request-id")
                        .map(|value| String::from_utf8_lossy(value.as_bytes()))
                        .unwrap_or_default(),
                    failure: failure.map(Kind::label),
                    fallback,
                };
                let mut text = String::with_capacity(320);
                if settings.json {
                    entry.json(&mut text);
                } else {
                    entry.text(&mut text);
                }
                sink(text.as_bytes());
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
        }
    }
}

/// One access log line, written by hand: tracing's JSON formatter cost 10 µs a request
/// (measured, see `docs/benchmarks.md`); this costs a fraction of that. The JSON shape is the
/// process's other log lines' (`timestamp`, `level`, `target`, then the fields).
struct Entry<'a> {
    line: Line,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    instance: Option<&'a str>,
    status: u16,
    duration: std::time::Duration,
    upstream_time: Option<std::time::Duration>,
    response_bytes: Option<u64>,
    failure: Option<&'static str>,
    fallback: Option<&'static str>,
    request_id: std::borrow::Cow<'a, str>,
}

impl Entry<'_> {
    /// The line as JSON, written piece by piece: no formatting machinery on this path (it was
    /// a third of the line's cost, `benches/gateway-instructions.sh`).
    fn json(&self, out: &mut String) {
        out.push_str("{\"timestamp\":\"");
        timestamp(out);
        out.push_str("\",\"level\":\"INFO\",\"target\":\"access\",\"method\":");
        json_str(out, self.line.method.as_str());
        out.push_str(",\"path\":");
        json_str(out, &self.line.path);
        for (key, value) in [
            (",\"route\":", self.route),
            (",\"upstream\":", self.upstream),
            (",\"instance\":", self.instance),
        ] {
            if let Some(value) = value {
                out.push_str(key);
                json_str(out, value);
            }
        }
        out.push_str(",\"status\":");
        push_int(out, u64::from(self.status));
        out.push_str(",\"duration_ms\":");
        push_millis(out, self.duration);
        if let Some(took) = self.upstream_time {
            out.push_str(",\"upstream_ms\":");
            push_millis(out, took);
        }
        for (key, value) in [
            (",\"request_bytes\":", self.line.request_bytes),
            (",\"response_bytes\":", self.response_bytes),
        ] {
            if let Some(value) = value {
                out.push_str(key);
                push_int(out, value);
            }
        }
        out.push_str(",\"request_id\":");
        json_str(out, &self.request_id);
        for (key, value) in [
            (",\"failure\":", self.failure),
            (",\"fallback\":", self.fallback),
        ] {
            if let Some(value) = value {
                out.push_str(key);
                json_str(out, value);
            }
        }
        out.push_str("}\n");
    }

    fn text(&self, out: &mut String) {
        use std::fmt::Write as _;
        timestamp(out);
        let _ = write!(
            out,
            "  INFO access: {} {:?} {} route={} upstream={} instance={} duration_ms={}",
            self.line.method,
            self.line.path,
            self.status,
            self.route.unwrap_or("-"),
            self.upstream.unwrap_or("-"),
            self.instance.unwrap_or("-"),
            Millis(self.duration),
        );
        if let Some(took) = self.upstream_time {
            let _ = write!(out, " upstream_ms={}", Millis(took));
        }
        let _ = write!(out, " request_id={:?}", self.request_id);
        for (key, value) in [("failure", self.failure), ("fallback", self.fallback)] {
            if let Some(value) = value {
                let _ = write!(out, " {key}={value}");
            }
        }
        out.push('\n');
    }
}

/// A duration in milliseconds with three decimals (microseconds), written from integers:
/// formatting the `f64` exactly cost 2 % of the gateway's instructions.
struct Millis(std::time::Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::with_capacity(16);
        push_millis(&mut text, self.0);
        f.write_str(&text)
    }
}

/// `duration` in milliseconds with three decimals.
fn push_millis(out: &mut String, duration: std::time::Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    push_int(out, micros / 1000);
    out.push('.');
    push_padded(out, micros % 1000, 3);
}

/// `n` in decimal.
fn push_int(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `n` in decimal, with leading zeros to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// `value` as a JSON string: runs without anything to escape are copied whole.
fn json_str(out: &mut String, value: &str) {
    use std::fmt::Write as _;
    out.push('"');
    let mut rest = value;
    // What needs escaping is ASCII, and no byte of a multi-byte character is below 0x80: a
    // byte scan finds it.
    while let Some(at) = rest
        .bytes()
        .position(|b| b == b'"' || b == b'\\' || b < 0x20)
    {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}

/// Now, in RFC 3339 with microseconds (UTC), as tracing writes it. The date and the time to the
/// second are computed once a second.
fn timestamp(out: &mut String) {
    use std::cell::RefCell;
    use std::fmt::Write as _;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != seconds {
            let (year, month, day) = civil_from_days(seconds / 86_400);
            let in_day = seconds % 86_400;
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                in_day / 3600,
                in_day % 3600 / 60,
                in_day % 60
            );
            cached.0 = seconds;
        }
        out.push_str(&cached.1);
    });
    out.push('.');
    push_padded(out, u64::from(now.subsec_micros()), 6);
    out.push('Z');
}

/// The calendar date of day `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use http::StatusCode;

    use super::*;

    /// The lines the access log writes for `requests` requests with `settings`, the inner
    /// service answering 201 through the route `orders` from instance `order-1`.
    async fn lines(settings: AccessSettings, requests: usize) -> Vec<String> {
        let captured = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink: Sink = {
            let captured = captured.clone();
            Arc::new(move |line: &[u8]| {
                captured
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(line);
            })
        };
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
        // The edge, as in the gateway's stack, puts the request id on the answer.
        let service =
            AccessLogLayer::with_sink(settings, sink).layer(crate::edge::EdgeLayer.layer(inner));
        // Access lines follow the log filter: `access` at INFO is on by default.
        let _default = tracing::subscriber::set_default(tracing_subscriber::fmt().finish());
        for _ in 0..requests {
            let request = http::Request::post("/v1/orders")
                .header("x-request-id", "req-\"7\"")
                .header(header::CONTENT_LENGTH, "2")
                .body(Body::from("{}"))
                .expect("request");
            let Ok(response) = service.clone().oneshot(request).await;
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        let text = captured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn strings_are_escaped_and_durations_written_in_milliseconds() {
        let mut out = String::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é/");
        assert_eq!(out, r#""a\"b\\c\u000ad\u0001é/""#);
        let back: String = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(back, "a\"b\\c\nd\u{1}é/");
        for (duration, text) in [
            (std::time::Duration::from_micros(838), "0.838"),
            (std::time::Duration::from_micros(12_005), "12.005"),
            (std::time::Duration::from_nanos(999), "0.000"),
            (std::time::Duration::from_secs(2), "2000.000"),
        ] {
            assert_eq!(Millis(duration).to_string(), text);
        }
    }

    #[test]
    fn lines_are_written_whole_in_writes_of_at_most_4_kib() {
        let mut writes: Vec<Vec<u8>> = Vec::new();
        let mut buffered = Vec::new();
        let line = |n: usize| {
            let mut line = format!("{{\"n\":{n},\"pad\":\"");
            line.push_str(&"x".repeat(150 + n % 7));
            line.push_str("\"}\n");
            line.into_bytes()
        };
        let mut sent = Vec::new();
        for n in 0..100 {
            let line = line(n);
            sent.extend_from_slice(&line);
            gather(&mut buffered, &line, |bytes| writes.push(bytes.to_vec()));
        }
        assert!(
            writes.len() >= 3 && writes.len() <= 5,
            "about 16 KiB of lines in 4 KiB writes: {} writes",
            writes.len()
        );
        for write in &writes {
            assert!(write.len() <= WRITE_BYTES, "{} bytes", write.len());
            assert!(write.ends_with(b"\n"), "a write ends with a whole line");
        }
        // Nothing lost or reordered: the writes, then what is still buffered, are the lines.
        let mut out: Vec<u8> = writes.concat();
        out.extend_from_slice(&buffered);
        assert_eq!(out, sent);
        // A line longer than a write goes out alone, after what was gathered.
        let long = vec![b'y'; WRITE_BYTES + 1];
        let before = writes.len();
        gather(&mut buffered, &long, |bytes| writes.push(bytes.to_vec()));
        assert!(buffered.is_empty());
        assert_eq!(writes.len(), before + 2);
        assert_eq!(writes.last().map(Vec::len), Some(WRITE_BYTES + 1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_structured_line_per_request() {
        let lines = lines(AccessSettings::default(), 3).await;
        assert_eq!(lines.len(), 3);
        let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
        let timestamp = line["timestamp"].as_str().expect("a timestamp");
        assert!(
            time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{timestamp}"
        );
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "access");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/v1/orders");
        assert_eq!(line["route"], "orders");
        assert_eq!(line["upstream"], "order");
        assert_eq!(line["instance"], "order-1");
        assert_eq!(line["status"], 201);
        assert_eq!(line["request_bytes"], 2);
        assert_eq!(line["response_bytes"], 7);
        assert_eq!(
            line["request_id"], "req-\"7\"",
            "escaped, and read back whole"
        );
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
            ..AccessSettings::default()
        };
        assert!(lines(off, 20).await.is_empty());
        let tenth = AccessSettings {
            sample: 0.1,
            ..AccessSettings::default()
        };
        // 1,000 requests at one in ten: 100 expected; fewer than 40 or more than 160 is
        // (binomial) a one-in-a-billion event.
        let sampled = lines(tenth, 1_000).await.len();
        assert!((40..=160).contains(&sampled), "{sampled} lines");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_terminal_the_line_is_text() {
        let text = AccessSettings {
            json: false,
            ..AccessSettings::default()
        };
        let lines = lines(text, 1).await;
        let line = &lines[0];
        assert!(
            line.contains(
                r#"INFO access: POST "/v1/orders" 201 route=orders upstream=order instance=order-1"#
            ),
            "{line}"
        );
    }

    #[test]
    fn days_are_calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
    }
}
