//! The HTTP/1.1 connections a client keeps to the instances it calls: a pool of its own over
//! hyper's connection API, in place of hyper_util's general-purpose client.
//!
//! Why its own: hyper_util's pool keys connections by scheme and authority in a SipHash map,
//! checks one out through a future and puts it back through a guard and the same map: about
//! 8 % of the instructions of a request through the gateway
//! (`benches/gateway-instructions.sh`). Here each instance address has a short list, found by
//! a linear scan (a client calls a handful of instances), and a caller takes the most recently
//! returned connection that is ready for a new request.
//!
//! * **Connect**: at most [`CONNECT_TIMEOUT`], with `TCP_NODELAY`. A connection refused or
//!   timed out is [`SendError::Connect`]: nothing was sent, so the request may go to another
//!   instance.
//! * **Reuse**: a connection goes back to its list as soon as the answer's head has arrived,
//!   and is taken again only once hyper says it is ready (its previous answer read to the end).
//!   One whose instance closed it meanwhile is dropped when met; a request that comes back
//!   unsent from a kept connection (closed as it was taken) goes out on another.
//! * **Idle**: a connection unused for [`IDLE_TIMEOUT`] is closed when next met, and the lists
//!   are swept of closed and idle ones at most every [`SWEEP_INTERVAL`].
//!
//! Each gateway worker has its own pool (a connection's task runs on the worker that opened
//! it); a service's internal client has one for the process.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most often every list is swept of closed and idle connections.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A pool of HTTP/1.1 connections by instance address. Cheap to clone (clones share it).
#[derive(Clone, Default)]
pub struct HttpClient {
    pool: Arc<Mutex<Pool>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pool = self.lock();
        f.debug_struct("HttpClient")
            .field("addresses", &pool.hosts.len())
            .field(
                "connections",
                &pool.hosts.iter().map(|h| h.kept.len()).sum::<usize>(),
            )
            .finish()
    }
}

struct Pool {
    hosts: Vec<Host>,
    swept: Option<Instant>,
    idle_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            swept: None,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

struct Host {
    address: String,
    /// Most recently returned last.
    kept: Vec<Kept>,
}

struct Kept {
    sender: SendRequest<Body>,
    used: Instant,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent, and the request is given back (to
    /// send to another instance).
    Connect {
        /// Why the connection could not be opened.
        error: std::io::Error,
        /// The request, unsent.
        request: Box<Request<Body>>,
    },
    /// The exchange failed on an open connection: the request may have been received.
    Exchange(hyper::Error),
}

impl SendError {
    /// Whether nothing was sent (the connection could not be opened).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect { error, .. } => write!(f, "could not connect: {error}"),
            Self::Exchange(error) => write!(f, "exchange failed: {error}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect { error, .. } => Some(error),
            Self::Exchange(error) => Some(error),
        }
    }
}

impl HttpClient {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty pool closing connections unused for `idle_timeout` (instead of
    /// [`IDLE_TIMEOUT`]).
    pub fn with_idle_timeout(idle_timeout: Duration) -> Self {
        let client = Self::default();
        client.lock().idle_timeout = idle_timeout;
        client
    }

    /// Sends `request` (its target in origin form, `/path?query`) to the instance at
    /// `address` (`host:port`), on a kept connection if one is ready, else on a new one, with
    /// `Host` set to `address`. Returns the answer's head with its body still to read.
    pub async fn send(
        &self,
        address: &str,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        if let Ok(host) = HeaderValue::from_str(address) {
            request.headers_mut().insert(header::HOST, host);
        }
        loop {
            let (mut sender, kept) = match self.checkout(address) {
                Some(sender) => (sender, true),
                None => match connect(address).await {
                    Ok(sender) => (sender, false),
                    Err(error) => {
                        return Err(SendError::Connect {
                            error,
                            request: Box::new(request),
                        });
                    }
                },
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin(address, sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // Came back unsent from a kept connection (closed as it was taken): again,
                    // on another connection.
                    Some(unsent) if kept => request = unsent,
                    _ => return Err(SendError::Exchange(error.into_error())),
                },
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently returned connection to `address` that is ready, dropping the closed
    /// and idle ones met on the way.
    fn checkout(&self, address: &str) -> Option<SendRequest<Body>> {
        let mut pool = self.lock();
        let idle_timeout = pool.idle_timeout;
        let host = pool.hosts.iter_mut().find(|host| host.address == address)?;
        let mut at = host.kept.len();
        while at > 0 {
            at -= 1;
            let kept = &host.kept[at];
            if kept.sender.is_closed() {
                host.kept.remove(at);
            } else if kept.sender.is_ready() {
                let kept = host.kept.remove(at);
                if kept.used.elapsed() < idle_timeout {
                    return Some(kept.sender);
                }
            }
        }
        None
    }

    /// Returns `sender` to `address`'s list (it is ready again once its answer has been read).
    fn checkin(&self, address: &str, sender: SendRequest<Body>) {
        let now = Instant::now();
        let mut pool = self.lock();
        let kept = Kept { sender, used: now };
        match pool.hosts.iter_mut().find(|host| host.address == address) {
            Some(host) => host.kept.push(kept),
            None => pool.hosts.push(Host {
                address: address.to_owned(),
                kept: vec![kept],
            }),
        }
        if pool
            .swept
            .is_none_or(|swept| now.duration_since(swept) >= SWEEP_INTERVAL)
        {
            pool.swept = Some(now);
            let idle_timeout = pool.idle_timeout;
            for host in &mut pool.hosts {
                host.kept.retain(|kept| {
                    let idle =
                        kept.sender.is_ready() && now.duration_since(kept.used) >= idle_timeout;
                    !(kept.sender.is_closed() || idle)
                });
            }
            pool.hosts.retain(|host| !host.kept.is_empty());
        }
    }

    /// The connections kept to `address`, ready or still reading an answer.
    #[cfg(test)]
    fn kept(&self, address: &str) -> usize {
        self.lock()
            .hosts
            .iter()
            .find(|host| host.address == address)
            .map_or(0, |host| host.kept.len())
    }
}

/// Opens a connection to `address` and starts its task on the current runtime.
async fn connect(address: &str) -> std::io::Result<SendRequest<Body>> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {address} took longer than {CONNECT_TIMEOUT:?}"),
            )
        })??;
    // No Nagle: a request written in two segments would wait for the peer's delayed
    // acknowledgement.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).expect("request")
    }

    async fn body(response: Response<Incoming>) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A server counting the connections it accepts; answers each request with its `Host`.
    async fn server() -> (String, Arc<AtomicUsize>) {
        use axum::routing::get as on_get;
        let accepted = Arc::new(AtomicUsize::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let app = axum::Router::new().route(
            "/host",
            on_get(|headers: http::HeaderMap| async move {
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            }),
        );
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (address, accepted)
    }

    #[tokio::test]
    async fn a_connection_is_kept_and_used_again_with_the_host_set() {
        let (address, accepted) = server().await;
        let http = HttpClient::new();
        for _ in 0..5 {
            let response = http.send(&address, get("/host")).await.expect("answered");
            assert_eq!(response.status(), http::StatusCode::OK);
            assert_eq!(body(response).await, address, "`Host` is the address");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
        assert_eq!(http.kept(&address), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_which_are_all_kept() {
        let (address, accepted) = server().await;
        let http = HttpClient::new();
        let responses =
            futures_util::future::join_all((0..4).map(|_| http.send(&address, get("/host")))).await;
        for response in responses {
            body(response.expect("answered")).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(http.kept(&address), 4);
        // Read to the end, every kept connection is ready: four more open none.
        for _ in 0..4 {
            body(http.send(&address, get("/host")).await.expect("answered")).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_used_and_the_request_goes_out_again() {
        // A server that answers one request per connection, then closes it without saying so.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                });
            }
        });
        let http = HttpClient::new();
        for round in 1..=3 {
            let response = http.send(&address, get("/")).await.expect("answered");
            assert_eq!(body(response).await, "ok");
            // Let the server close it, and the connection's task see that.
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_closed_not_used() {
        let (address, accepted) = server().await;
        let http = HttpClient::with_idle_timeout(Duration::from_millis(100));
        body(http.send(&address, get("/host")).await.expect("answered")).await;
        body(http.send(&address, get("/host")).await.expect("answered")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "used again while fresh");
        tokio::time::sleep(Duration::from_millis(150)).await;
        body(http.send(&address, get("/host")).await.expect("answered")).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "a new one after the idle time"
        );
        assert_eq!(http.kept(&address), 1, "the idle one was dropped");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error_that_gives_the_request_back() {
        let address = flotilla_testkit::dead_address().await;
        let request = Request::post("/orders")
            .header("x-kept", "1")
            .body(Body::from("a body sent once"))
            .expect("request");
        let error = HttpClient::new()
            .send(&address, request)
            .await
            .expect_err("nothing listens");
        assert!(error.is_connect(), "{error}");
        let SendError::Connect { request, .. } = error else {
            panic!("a connect error");
        };
        // Whole, body included, to go to another instance.
        let (live, _) = server().await;
        let request = *request;
        assert_eq!(request.headers()["x-kept"], "1");
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&bytes[..], b"a body sent once");
        let answer = HttpClient::new()
            .send(&live, get("/host"))
            .await
            .expect("answered");
        assert_eq!(body(answer).await, live, "`Host` is the address sent to");
    }
}
