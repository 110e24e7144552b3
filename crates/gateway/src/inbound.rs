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
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
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

#[cfg(test)]
mod tests {
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
