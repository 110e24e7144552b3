//! The listener every Flotilla process serves on: HTTP/1.1 connections, each watched against
//! slow and idle clients, every request's head checked against limits before any route sees it.
//!
//! * **Header read timeout**: a client that has begun a request must finish sending its head
//!   within [`ConnectionLimits::header_read_timeout`], or the connection is closed (a client
//!   sending one byte a second holds nothing for long).
//! * **Idle timeout**: a kept-alive connection that waits for its next request longer than
//!   [`ConnectionLimits::idle_timeout`] is closed. A new connection counts as reading a head:
//!   one opened and never used is closed after the header read timeout.
//! * **Head limits**: more headers than [`ConnectionLimits::max_headers`], more header bytes
//!   than [`ConnectionLimits::max_header_bytes`] (431) or a longer target than
//!   [`ConnectionLimits::max_uri_bytes`] (414); an HTTP/1.1 request without `Host`, or in
//!   absolute form naming another authority than its `Host` (400). Each is answered with a
//!   problem document and reaches no route. A client's `x-request-id` that is not
//!   [fit to keep](fit_request_id) is removed, for the app's stack to set a fresh one. The
//!   parser's own hard caps sit at four times these limits; beyond them hyper closes the
//!   connection with a bare status.
//! * **The peer**: each request carries its connection's remote address as axum's
//!   `ConnectInfo<SocketAddr>` extension (the gateway keys anonymous callers' rate limits by it).
//!
//! hyper's own header timer is not used: since hyper 1.6 it also runs while a connection is
//! idle, which would make the idle timeout the header timeout. Instead each connection keeps
//! its phase: idle since the last response, reading a head since its first byte, or
//! busy with a request; a watchdog task, which wakes at deadlines only (nothing is added to the
//! connection's own polling), aborts the connection when the phase outlives its limit.
//! A busy connection is bounded by the handlers' own deadlines, not here.
//!
//! A listener is served by one worker, on the caller's runtime, or by several
//! ([`serve_workers`], [`Routers::per_worker`]): each further worker is a thread running a
//! current-thread runtime, each accepting on a socket of its own beside the first
//! (`SO_REUSEPORT`, [`bind_shared`]) or on the first's descriptor, each with its own router, so that a request, and what it spawns (an upstream connection, say), stays on the
//! thread that accepted its connection: no task is woken across threads on the hot path.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::Problem;

/// What a listener allows its clients. The defaults are tight: a well-behaved client never
/// meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The longest a client may take to send a request's head, from its first byte.
    pub header_read_timeout: Duration,
    /// The longest a connection may stay open between requests (or before its first).
    pub idle_timeout: Duration,
    /// The most header fields a request may carry.
    pub max_headers: usize,
    /// The most bytes a request's header fields may hold, names and values together.
    pub max_header_bytes: usize,
    /// The longest request target, in bytes.
    pub max_uri_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

impl ConnectionLimits {
    /// The problem a request's head breaks, if any: checked before any route runs.
    pub fn check<B>(&self, request: &http::Request<B>) -> Option<Problem> {
        let headers = request.headers();
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let limits = [
            (
                target_len(request.uri()),
                self.max_uri_bytes,
                StatusCode::URI_TOO_LONG,
                "uri-too-long",
                "bytes of request target",
            ),
            (
                headers.len(),
                self.max_headers,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too-many-headers",
                "header fields",
            ),
            (
                header_bytes,
                self.max_header_bytes,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers-too-large",
                "bytes of header fields",
            ),
        ];
        for (actual, limit, status, slug, what) in limits {
            if actual > limit {
                let detail =
                    format!("the request carries {actual} {what}; at most {limit} are accepted");
                return Some(Problem::new(status, slug, detail));
            }
        }
        check_host(request)
    }
}

/// The length of `uri` as it was sent (origin or absolute form), without writing it out.
fn target_len(uri: &http::Uri) -> usize {
    let scheme = uri
        .scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len());
    let authority = uri
        .authority()
        .map_or(0, |authority| authority.as_str().len());
    let rest = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    scheme + authority + rest
}

/// The longest client-sent `x-request-id` kept.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Whether a client's `x-request-id` is fit to keep: short, and printable ASCII without spaces
/// (it ends up in log lines and in headers sent on).
pub fn fit_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID_BYTES
        && value.iter().all(u8::is_ascii_graphic)
}

/// Removes a client's `x-request-id` that is not [fit](fit_request_id), or sent more than once,
/// so that the app's stack sets a fresh one.
fn drop_unfit_request_id(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(crate::app::REQUEST_ID).iter();
    let fit = match (values.next(), values.next()) {
        (None, _) => return,
        (Some(value), None) => fit_request_id(value.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !fit {
        headers.remove(crate::app::REQUEST_ID);
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`; a target in absolute form
/// names the same authority as its `Host` (a proxy for other hosts this is not).
fn check_host<B>(request: &http::Request<B>) -> Option<Problem> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(Problem::bad_request(
            "invalid-host",
            "the request carries more than one `Host` header",
        ));
    }
    if request.version() == Version::HTTP_11 && host.is_none() {
        return Some(Problem::bad_request(
            "missing-host",
            "an HTTP/1.1 request must carry a `Host` header",
        ));
    }
    if let Some(authority) = request.uri().authority() {
        let same = host
            .and_then(|host| host.to_str().ok())
            .is_some_and(|host| host.eq_ignore_ascii_case(authority.as_str()));
        if !same {
            return Some(Problem::bad_request(
                "foreign-target",
                format!("this server does not serve `{authority}`: send the path alone"),
            ));
        }
    }
    None
}

/// The routers a listener is served with: one, or one per worker thread.
#[derive(Clone)]
pub struct Routers {
    workers: usize,
    make: Arc<dyn Fn() -> Router + Send + Sync>,
}

impl std::fmt::Debug for Routers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routers")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Routers {
    /// One router, served on the caller's runtime.
    pub fn one(router: Router) -> Self {
        Self {
            workers: 1,
            make: Arc::new(move || router.clone()),
        }
    }

    /// `workers` (at least one) routers, each made by `make` for its worker: worker 0 runs on
    /// the caller's runtime, each other on a thread of its own with a current-thread runtime.
    /// `make` is called on the worker's thread, so what a router owns that is costly to share
    /// across threads (a connection pool) should be made there, one per worker.
    pub fn per_worker(workers: usize, make: impl Fn() -> Router + Send + Sync + 'static) -> Self {
        Self {
            workers: workers.max(1),
            make: Arc::new(make),
        }
    }

    /// How many workers serve.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

/// A listener on `address` with `SO_REUSEPORT`, so that the workers of [`serve_workers`] can
/// each bind a socket of their own beside it and the kernel spreads new connections over them
/// (only sockets of the same user may join).
pub fn bind_shared(address: std::net::SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_shared_std(address)?)
}

fn bind_shared_std(address: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(1024)?.into_std()
}

/// A server of the probes alone, while a process starts ([`serve_starting`]).
#[derive(Debug)]
pub struct Starting {
    drain: tokio_util::sync::CancellationToken,
}

impl Starting {
    /// Stops accepting connections (the process's own server takes them on from here; the
    /// socket stays open, so nothing is refused in between).
    pub fn stop(self) {
        self.drain.cancel();
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.drain.cancel();
    }
}

/// Serves the probes of `health` on a duplicate of `listener`'s socket while the process
/// starts (opening its database, subscribing), so that `/startupz` and `/readyz` say what it
/// is doing instead of the connection waiting unanswered; anything else is answered 503
/// `starting`. Stop it ([`Starting::stop`]) once the process serves its own routes on
/// `listener`.
pub fn serve_starting(
    listener: &TcpListener,
    health: &crate::Health,
    limits: ConnectionLimits,
) -> io::Result<Starting> {
    use std::os::fd::AsFd;
    let socket = std::net::TcpListener::from(listener.as_fd().try_clone_to_owned()?);
    socket.set_nonblocking(true)?;
    let socket = TcpListener::from_std(socket)?;
    let router = health.routes().fallback(|| async {
        crate::Problem::unavailable("starting", "the process is starting; retry shortly")
    });
    let drain = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serve(
        socket,
        router,
        limits,
        drain.clone().cancelled_owned(),
    ));
    Ok(Starting { drain })
}

/// Serves `routers` on an already bound `listener`, each worker as [`serve`] does, until
/// `drain` is cancelled; returns when every worker has drained (the first error, if any).
pub async fn serve_workers(
    listener: TcpListener,
    routers: Routers,
    limits: ConnectionLimits,
    drain: tokio_util::sync::CancellationToken,
) -> io::Result<()> {
    if routers.workers == 1 {
        return serve(listener, (routers.make)(), limits, drain.cancelled_owned()).await;
    }
    // Each further worker accepts on a socket of its own bound beside the first with
    // `SO_REUSEPORT` (the kernel spreads new connections over them evenly), when the first was
    // bound that way ([`bind_shared`]); else on a duplicate of the first's descriptor (every
    // worker is woken for a new connection and one takes it). Each is registered with its own
    // runtime's reactor.
    let address = listener.local_addr()?;
    let listener = listener.into_std()?;
    let mut finished = Vec::with_capacity(routers.workers - 1);
    for worker in 1..routers.workers {
        let socket = match bind_shared_std(address) {
            Ok(socket) => socket,
            Err(_) => listener.try_clone()?,
        };
        let make = routers.make.clone();
        let drain = drain.clone();
        let (done, ended) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("worker-{worker}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            let listener = TcpListener::from_std(socket)?;
                            serve(listener, make(), limits, drain.cancelled_owned()).await
                        })
                    });
                let _ = done.send(result);
            })?;
        finished.push(ended);
    }
    let listener = TcpListener::from_std(listener)?;
    let mut result = serve(listener, (routers.make)(), limits, drain.cancelled_owned()).await;
    for ended in finished {
        let ended = ended
            .await
            .unwrap_or_else(|_| Err(io::Error::other("a worker thread panicked")));
        if result.is_ok() {
            result = ended;
        }
    }
    result
}

/// Serves `router` on an already bound `listener`, within `limits`, until `drain` completes;
/// then stops accepting, closes idle connections and waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    drain: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(None)
        .max_headers(limits.max_headers.saturating_mul(4))
        .max_buf_size(
            (limits.max_header_bytes + limits.max_uri_bytes)
                .saturating_mul(4)
                .max(8192),
        );
    let graceful = GracefulShutdown::new();
    tokio::pin!(drain);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut drain => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // No Nagle: a response written in two segments would otherwise wait for the peer's
        // delayed acknowledgement (about 40 ms on Linux) — once per hop of a saga, which made an
        // idle place-order saga take 0.8 s instead of a few milliseconds.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let service = {
            let router = router.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let router = router.clone();
                let activity = activity.clone();
                async move {
                    let busy = activity.busy();
                    let mut request = request;
                    drop_unfit_request_id(request.headers_mut());
                    // Who is at the other end, for handlers that ask (`ConnectInfo`).
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let response = match limits.check(&request) {
                        Some(problem) => problem.into_response(),
                        None => router
                            .oneshot(request.map(Body::new))
                            .await
                            .unwrap_or_else(|never| match never {}),
                    };
                    let (parts, body) = response.into_parts();
                    Ok::<_, std::convert::Infallible>(Response::from_parts(
                        parts,
                        Body::new(Tracked { body, _busy: busy }),
                    ))
                }
            })
        };
        let connection = graceful.watch(http.serve_connection(io, service));
        // The connection runs alone in its task (no timer on its hot path); a watchdog task
        // wakes at its deadlines only, and aborts it (closing the socket) past a limit.
        let (ended, ending) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ended = ended;
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
        tokio::spawn(watchdog(task.abort_handle(), ending, activity, limits));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Waits at `connection`'s deadlines until it ends (`ended` resolves) or its phase outlives its
/// limit, then aborts it (which drops it and closes the socket).
async fn watchdog(
    connection: tokio::task::AbortHandle,
    mut ended: tokio::sync::oneshot::Receiver<()>,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
) {
    // A busy connection has no deadline here; it is looked at again after the shorter limit,
    // to start counting once it is idle.
    let recheck = limits.header_read_timeout.min(limits.idle_timeout);
    loop {
        let deadline = activity
            .deadline(&limits)
            .unwrap_or_else(|| Instant::now() + recheck);
        tokio::select! {
            _ = &mut ended => return,
            () = tokio::time::sleep_until(deadline.into()) => {
                if let Some(phase) = activity.expired(&limits) {
                    tracing::debug!(?phase, "closing a connection past its limit");
                    connection.abort();
                    return;
                }
            }
        }
    }
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the next request (since the last response was sent).
    Idle,
    /// Receiving a request's head (since its first byte, or since the connection opened).
    Head,
    /// A request is being served.
    Busy,
}

/// A connection's phase and since when, shared by its socket, its requests and its watchdog.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds from `epoch` to the start of the phase.
    since_ms: AtomicU64,
}

impl Activity {
    /// A new connection: its client is expected to send a head at once.
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Head as u8),
            since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn enter(&self, phase: Phase) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        }
    }

    /// Bytes arrived: a head begins if the connection was idle.
    fn read(&self) {
        if self
            .phase
            .compare_exchange(
                Phase::Idle as u8,
                Phase::Head as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.since_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A request is being served until the guard (held by its response body) drops.
    fn busy(self: &Arc<Self>) -> Busy {
        self.enter(Phase::Busy);
        Busy(self.clone())
    }

    /// When the current phase's limit runs out, if it has one.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        let limit = match self.phase() {
            Phase::Idle => limits.idle_timeout,
            Phase::Head => limits.header_read_timeout,
            Phase::Busy => return None,
        };
        let since = Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        Some(self.epoch + since + limit)
    }

    /// The phase that has outlived its limit, if the current one has.
    fn expired(&self, limits: &ConnectionLimits) -> Option<Phase> {
        let deadline = self.deadline(limits)?;
        (Instant::now() >= deadline).then(|| self.phase())
    }
}

/// Marks a connection busy while a request is served; idle again when dropped.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.enter(Phase::Idle);
    }
}

/// A response body that holds its connection's [`Busy`] guard until hyper has sent it all.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that tells its connection's [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
