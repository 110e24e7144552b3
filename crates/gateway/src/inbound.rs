//! What the gateway accepts from a client before anything is forwarded, and how it tells a
//! client's fault from an upstream's.
//!
//! * The path is normalised before a route is chosen ([`normalize_path`]): dot segments are
//!   resolved, `%2e` is a dot, runs of slashes are one slash, and an encoded slash or backslash
//!   is refused — so `/v1/orders/../admin` or `/v1/%2e%2e/admin` never reach a route they
//!   should not.
//! * A body is read within `max_body_bytes`: a declared length beyond it is answered 413
//!   before any of it is forwarded — at once if the client waits for `100 Continue` (which it
//!   then never gets), else after reading the body away ([`drain`], bounded), so that the
//!   answer is not lost to a reset; a streamed body that grows beyond it, or that breaks off or
//!   is malformed, is the client's fault ([`ClientBody`]): 413 or 400, and the upstream's
//!   breaker never hears of it.
//! * A request with more than one `Idempotency-Key` is refused: which one would the service
//!   honour?

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use flotilla_discovery::outbound::{ClientFault, Outgoing, strip_hop_by_hop};
use flotilla_kit::Problem;
use http_body::{Frame, SizeHint};

/// The path `raw` (as received, still percent-encoded) with its dot segments resolved, `%2e`
/// decoded and runs of slashes folded; a problem if it encodes a slash or a backslash, or
/// climbs above the root.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, Problem> {
    let encoded = |code: &[u8]| {
        raw.as_bytes()
            .windows(3)
            .any(|window| window.eq_ignore_ascii_case(code))
    };
    if encoded(b"%2f") || encoded(b"%5c") || raw.contains('\\') {
        return Err(Problem::bad_request(
            "invalid-path",
            "a path may not encode a slash or hold a backslash",
        ));
    }
    let clean = !encoded(b"%2e")
        && !raw.contains("//")
        && raw
            .split('/')
            .all(|segment| segment != "." && segment != "..");
    if clean && raw.starts_with('/') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut segments: Vec<String> = Vec::new();
    for segment in raw.split('/').filter(|segment| !segment.is_empty()) {
        let decoded = decode_dots(segment);
        match decoded.as_str() {
            "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(Problem::bad_request(
                        "invalid-path",
                        "the path climbs above the root",
                    ));
                }
            }
            _ => segments.push(decoded),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || (raw.ends_with('/') && !segments.is_empty()) {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// `segment` with every `%2e` (either case) decoded to a dot.
fn decode_dots(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let code = rest.get(at..at + 3);
        if code.is_some_and(|code| code.eq_ignore_ascii_case("%2e")) {
            out.push('.');
            rest = &rest[at + 3..];
        } else {
            out.push('%');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The problem with a request's headers before its body is read, if any: a declared body
/// larger than `max_body_bytes` (413), or more than one `Idempotency-Key` (400).
pub fn check_headers(headers: &HeaderMap, max_body_bytes: u64) -> Result<(), Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared
        && length > max_body_bytes
    {
        return Err(too_large(max_body_bytes));
    }
    if headers.get_all("idempotency-key").iter().count() > 1 {
        return Err(Problem::bad_request(
            "invalid-idempotency-key",
            "a request may carry one `Idempotency-Key`, not several",
        ));
    }
    Ok(())
}

/// The most a refused body is read away before its answer (see [`drain`]); beyond it the
/// connection is closed, and a client still sending may see a reset instead of the answer.
pub const DRAIN_LIMIT: u64 = 1024 * 1024;

/// Whether the client waits for `100 Continue` before sending its body.
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads `body` away, up to [`DRAIN_LIMIT`] bytes and until `deadline`, before a refusal is
/// answered: closing a connection with unread bytes makes the kernel send a reset, which
/// destroys the answer on its way (nginx's lingering close does the same).
pub async fn drain(mut body: Body, deadline: tokio::time::Instant) {
    use http_body_util::BodyExt as _;
    let mut read = 0u64;
    while read <= DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |data| data.len() as u64);
            }
            _ => return,
        }
    }
}

/// The answer to a body larger than `limit`.
pub fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// Why a client's body failed, once it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// It grew beyond the limit.
    TooLarge,
    /// It broke off or was malformed.
    Unreadable,
}

/// Where a [`ClientBody`] records its fault, for the forwarding code to read after the
/// upstream exchange failed.
#[derive(Debug, Clone, Default)]
pub struct FaultSlot(Arc<Mutex<Option<BodyFault>>>);

impl FaultSlot {
    /// The fault recorded, if any.
    pub fn get(&self) -> Option<BodyFault> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, fault: BodyFault) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fault);
    }

    /// The problem to answer for the recorded fault, with the limit it broke.
    pub fn problem(&self, limit: u64) -> Option<Problem> {
        self.get().map(|fault| match fault {
            BodyFault::TooLarge => too_large(limit),
            BodyFault::Unreadable => Problem::bad_request(
                "unreadable-body",
                "the request body broke off or was malformed",
            ),
        })
    }
}

/// A client's streamed body on its way upstream: counts its bytes and records in its
/// [`FaultSlot`] why it failed, if it does.
pub struct ClientBody {
    inner: Body,
    limit: u64,
    read: u64,
    fault: FaultSlot,
}

impl ClientBody {
    /// `inner`, allowed `limit` bytes, recording its fault in `fault`.
    pub fn new(inner: Body, limit: u64, fault: FaultSlot) -> Self {
        Self {
            inner,
            limit,
            read: 0,
            fault,
        }
    }
}

impl ClientBody {
    fn too_large(&self) -> axum::Error {
        axum::Error::new(format!(
            "the request body is larger than {} bytes",
            self.limit
        ))
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            let polled = Pin::new(&mut self.inner).poll_frame(cx);
            let over = self.read > self.limit;
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    self.read += frame.data_ref().map_or(0, |data| data.len() as u64);
                    if self.read <= self.limit {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    // Past the limit: nothing more goes upstream; the rest is read away (up to
                    // DRAIN_LIMIT), so that the client gets its 413 rather than a reset.
                    self.fault.set(BodyFault::TooLarge);
                    if self.read > self.limit + DRAIN_LIMIT {
                        return Poll::Ready(Some(Err(self.too_large())));
                    }
                }
                Poll::Ready(None) if over => return Poll::Ready(Some(Err(self.too_large()))),
                Poll::Ready(Some(Err(error))) => {
                    if !over {
                        self.fault.set(BodyFault::Unreadable);
                    }
                    return Poll::Ready(Some(Err(error)));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Past the limit the body ends with an error, never quietly (a truncated body must not
        // reach the upstream as a whole one).
        self.read <= self.limit && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Largest request body held in memory so that the request can be sent again (to another
/// instance after a refused connection, or as a retry). Larger or chunked bodies stream
/// through, sent once (Envoy makes the same trade with its retry buffer).
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// A request that passed the inbound checks, ready to be routed.
#[derive(Debug)]
pub struct Arrived {
    /// Its method.
    pub method: Method,
    /// Its path, normalised.
    pub path: String,
    /// Its query, as received.
    pub query: Option<String>,
    /// Its headers, as received (`Host` among them, for the route's matching).
    pub headers: HeaderMap,
    /// Its body: held if small and of known length, else streaming within the limit.
    pub body: Outgoing,
    /// What the listener attached to it: the client's address (`ConnectInfo`) among them.
    pub extensions: http::Extensions,
}

/// Layer of [`Inbound`].
#[derive(Debug, Clone, Copy)]
pub struct InboundLayer {
    max_body_bytes: u64,
    timeout: Duration,
}

impl InboundLayer {
    /// Bodies of at most `max_body_bytes`; a held body must arrive within `timeout`.
    pub fn new(max_body_bytes: u64, timeout: Duration) -> Self {
        Self {
            max_body_bytes,
            timeout,
        }
    }
}

impl<S> tower::Layer<S> for InboundLayer {
    type Service = Inbound<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Inbound {
            inner,
            max_body_bytes: self.max_body_bytes,
            timeout: self.timeout,
        }
    }
}

/// Checks what a client sends before any route is chosen (see the module's documentation) and
/// answers a client's fault itself.
#[derive(Debug, Clone)]
pub struct Inbound<S> {
    inner: S,
    max_body_bytes: u64,
    timeout: Duration,
}

impl<S> tower::Service<Request> for Inbound<S>
where
    S: tower::Service<Arrived, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        use tower::ServiceExt as _;
        let inner = self.inner.clone();
        let (limit, timeout) = (self.max_body_bytes, self.timeout);
        Box::pin(async move {
            match arrive(request, limit, timeout).await {
                Ok(arrived) => inner.oneshot(arrived).await,
                Err(problem) => Ok(problem.into_response()),
            }
        })
    }
}

/// Checks the head, then holds a small body of known length (so that it can be sent again)
/// or wraps a streamed one in the body limit.
async fn arrive(request: Request, limit: u64, timeout: Duration) -> Result<Arrived, Problem> {
    let (parts, body) = request.into_parts();
    let path = normalize_path(parts.uri.path())?.into_owned();
    let deadline = tokio::time::Instant::now() + timeout;
    if let Err(problem) = check_headers(&parts.headers, limit) {
        // A client already sending the body it declared would meet a reset instead of the
        // answer: read it away first (bounded). One waiting for `100 Continue` sends nothing.
        if !expects_continue(&parts.headers) {
            drain(body, deadline).await;
        }
        return Err(problem);
    }
    let body = match http_body::Body::size_hint(&body).exact() {
        // No body (most GETs): nothing to wait for, no timer to set.
        Some(0) if http_body::Body::is_end_stream(&body) => Outgoing::Held(bytes::Bytes::new()),
        Some(length) if length <= REPLAY_LIMIT.min(limit) => {
            use http_body_util::BodyExt as _;
            let bytes = tokio::time::timeout_at(deadline, body.collect())
                .await
                .map_err(|_| {
                    Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body-timeout",
                        "the request body did not arrive in time",
                    )
                })?
                .map_err(|e| {
                    Problem::bad_request(
                        "unreadable-body",
                        format!("the request body could not be read: {e}"),
                    )
                })?
                .to_bytes();
            Outgoing::Held(bytes)
        }
        _ => {
            let slot = FaultSlot::default();
            let fault = SlotFault {
                slot: slot.clone(),
                limit,
            };
            Outgoing::streaming(
                Body::new(ClientBody::new(body, limit, slot)),
                Some(Arc::new(fault)),
            )
        }
    };
    Ok(Arrived {
        method: parts.method,
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
        extensions: parts.extensions,
    })
}

/// A [`FaultSlot`] as the endpoint asks it.
#[derive(Debug)]
struct SlotFault {
    slot: FaultSlot,
    limit: u64,
}

impl ClientFault for SlotFault {
    fn problem(&self) -> Option<Problem> {
        self.slot.problem(self.limit)
    }
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The headers sent upstream: the client's, less hop-by-hop ones and `Host`, with the request
/// id and the trace context.
pub fn forwarded_headers(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    crate::auth::strip_identity_headers(&mut headers);
    headers.remove(header::HOST);
    if !headers.contains_key(&REQUEST_ID) {
        headers.insert(REQUEST_ID.clone(), flotilla_kit::app::new_request_id());
    }
    let traceparent = continue_trace(headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()));
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT.clone(), value);
    }
    headers
}

/// W3C trace context: keeps the trace id of a valid incoming `traceparent` and gives this hop a
/// new parent id; starts a new sampled trace otherwise.
pub fn continue_trace(incoming: Option<&str>) -> String {
    // Written digit by digit: `format!` here was 2 % of the gateway's instructions.
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    match incoming.and_then(valid_traceparent) {
        Some((trace_id, flags)) => {
            out.push_str(trace_id);
            out.push('-');
            push_hex(&mut out, u128::from(rand::random::<u64>() | 1), 16);
            out.push('-');
            out.push_str(flags);
        }
        None => {
            push_hex(&mut out, rand::random::<u128>() | 1, 32);
            out.push('-');
            push_hex(&mut out, u128::from(rand::random::<u64>() | 1), 16);
            out.push_str("-01");
        }
    }
    out
}

/// The trace id and flags of a valid `traceparent` (version 00 layout, any version but `ff`).
fn valid_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut fields = value.split('-');
    let (Some(version), Some(trace_id), Some(parent), Some(flags), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    let valid = version.len() == 2
        && version != "ff"
        && is_lower_hex(version)
        && trace_id.len() == 32
        && is_lower_hex(trace_id)
        && trace_id.bytes().any(|b| b != b'0')
        && parent.len() == 16
        && is_lower_hex(parent)
        && flags.len() == 2
        && is_lower_hex(flags);
    valid.then_some((trace_id, flags))
}

/// The low `digits` hex digits of `value`, lower case, most significant first.
fn push_hex(out: &mut String, value: u128, digits: u32) {
    for digit in (0..digits).rev() {
        let nibble = (value >> (digit * 4)) & 0xf;
        out.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
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
        let fields: Vec<&str> = out.split('-').collect();
        assert_eq!(fields.len(), 4, "{out}");
        assert!(fields[2].len() == 16 && is_lower_hex(fields[2]), "{out}");
        assert_ne!(fields[2], "00f067aa0ba902b7", "a new parent id");
        let unsampled = continue_trace(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(
            unsampled.ends_with("-00"),
            "the flags are kept: {unsampled}"
        );
        let fresh = continue_trace(None);
        let fields: Vec<&str> = fresh.split('-').collect();
        assert_eq!(fields.len(), 4, "{fresh}");
        assert_eq!(fields[0], "00");
        assert!(fields[1].len() == 32 && is_lower_hex(fields[1]), "{fresh}");
        assert!(fields[2].len() == 16 && is_lower_hex(fields[2]), "{fresh}");
        assert_eq!(fields[3], "01");
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
    fn forwarded_headers_drop_the_hop_and_the_host_and_carry_the_ids() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        incoming.insert("x-secret-hop", HeaderValue::from_static("1"));
        incoming.insert("te", HeaderValue::from_static("trailers"));
        incoming.insert(header::HOST, HeaderValue::from_static("gateway"));
        incoming.insert("x-request-id", HeaderValue::from_static("abc"));
        let out = forwarded_headers(incoming);
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

    use super::*;

    #[test]
    fn paths_are_normalised_before_matching() {
        let cases = [
            ("/v1/orders", "/v1/orders"),
            ("/v1/orders/", "/v1/orders/"),
            ("/v1//orders///1", "/v1/orders/1"),
            ("/v1/orders/./1", "/v1/orders/1"),
            ("/v1/orders/../products", "/v1/products"),
            ("/v1/orders/%2e%2e/products", "/v1/products"),
            ("/v1/orders/%2E/1", "/v1/orders/1"),
            ("/v1/%2e%2e/v1/orders", "/v1/orders"),
            ("/v1/orders/a%20b", "/v1/orders/a%20b"),
            ("/v1/orders/x..y", "/v1/orders/x..y"),
        ];
        for (raw, normal) in cases {
            assert_eq!(
                normalize_path(raw).map(Cow::into_owned).ok().as_deref(),
                Some(normal),
                "{raw}"
            );
        }
    }

    #[test]
    fn encoded_slashes_and_climbs_above_the_root_are_refused() {
        for raw in [
            "/v1/orders%2f..%2fadmin",
            "/v1/orders%2F1",
            "/v1/orders%5c1",
            "/v1\\orders",
            "/..",
            "/v1/../../etc",
            "/v1/%2e%2e/%2e%2e/x",
        ] {
            let problem = normalize_path(raw).expect_err(raw);
            assert_eq!(problem.status, 400, "{raw}");
            assert_eq!(problem.kind, "/problems/invalid-path", "{raw}");
        }
    }

    #[test]
    fn a_declared_body_over_the_limit_and_a_second_idempotency_key_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "1025".parse().expect("value"));
        let problem = check_headers(&headers, 1024).expect_err("too large");
        assert_eq!(problem.status, 413);
        headers.insert(header::CONTENT_LENGTH, "1024".parse().expect("value"));
        assert!(check_headers(&headers, 1024).is_ok());
        headers.append("idempotency-key", "a".parse().expect("value"));
        assert!(check_headers(&headers, 1024).is_ok());
        headers.append("idempotency-key", "b".parse().expect("value"));
        let problem = check_headers(&headers, 1024).expect_err("two keys");
        assert_eq!(problem.kind, "/problems/invalid-idempotency-key");
    }
}
