//! The HTTP/1 client every component uses for internal calls, and JSON helpers on top of it.
//!
//! It is hyper's pooled client over plain TCP: no TLS (internal traffic stays on the machine or
//! the cluster network; the mesh issue adds mTLS), no redirects, no cookies.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A pooled HTTP/1 client sending in-memory bodies (so that a request can be sent again to
/// another instance).
pub type Client = HyperClient<HttpConnector, Full<Bytes>>;

/// A new pooled client. Connecting gives up after one second: on one machine or one cluster a
/// slower connect means the peer is gone.
pub fn client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// What can go wrong with an internal JSON call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request could not be sent or the response not received.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The target.
        url: String,
        /// The cause.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The deadline passed.
    #[error("request to {url} timed out after {after:?}")]
    Timeout {
        /// The target.
        url: String,
        /// The deadline.
        after: Duration,
    },
    /// The body could not be read.
    #[error("reading the response from {url} failed: {reason}")]
    Body {
        /// The target.
        url: String,
        /// The cause.
        reason: String,
    },
    /// The peer answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The target.
        url: String,
        /// The status received.
        status: StatusCode,
        /// The body received (a problem document, usually).
        body: Bytes,
    },
    /// The body was not the JSON expected.
    #[error("unexpected response from {url}: {source}")]
    Decode {
        /// The target.
        url: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The URL or a header could not be built.
    #[error("invalid request to {url}: {reason}")]
    Invalid {
        /// The target.
        url: String,
        /// The cause.
        reason: String,
    },
}

impl CallError {
    /// Whether the peer could not be reached at all (so another instance may be tried).
    pub fn is_connect(&self) -> bool {
        matches!(self, CallError::Transport { source, .. } if source.is_connect())
    }
}

/// Sends a request with an optional JSON body and returns status and body, within `timeout`.
pub async fn send(
    client: &Client,
    method: Method,
    url: &str,
    json: Option<&impl Serialize>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), CallError> {
    send_as(client, method, url, json, None, timeout).await
}

/// Like [`send`], with an `Authorization` header when `authorization` is given (the caller's
/// credential: `Bearer <token>`).
pub async fn send_as(
    client: &Client,
    method: Method,
    url: &str,
    json: Option<&impl Serialize>,
    authorization: Option<&http::HeaderValue>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), CallError> {
    let invalid = |reason: String| CallError::Invalid {
        url: url.to_owned(),
        reason,
    };
    let body = match json {
        Some(value) => Bytes::from(serde_json::to_vec(value).map_err(|e| invalid(e.to_string()))?),
        None => Bytes::new(),
    };
    let mut builder = Request::builder().method(method).uri(url);
    if json.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(credential) = authorization {
        builder = builder.header(header::AUTHORIZATION, credential);
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| invalid(e.to_string()))?;
    exchange(client, url, request, timeout).await
}

/// Sends a built request and reads the whole answer, within `timeout`.
pub async fn exchange(
    client: &Client,
    url: &str,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), CallError> {
    let exchange = async {
        let response: Response<_> =
            client
                .request(request)
                .await
                .map_err(|source| CallError::Transport {
                    url: url.to_owned(),
                    source,
                })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Body {
                url: url.to_owned(),
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CallError::Timeout {
            url: url.to_owned(),
            after: timeout,
        })?
}

/// Like [`send`], but fails on a non-2xx status and decodes the JSON body.
pub async fn json<T: DeserializeOwned>(
    client: &Client,
    method: Method,
    url: &str,
    json: Option<&impl Serialize>,
    timeout: Duration,
) -> Result<T, CallError> {
    let (status, body) = send(client, method, url, json, timeout).await?;
    if !status.is_success() {
        return Err(CallError::Status {
            url: url.to_owned(),
            status,
            body,
        });
    }
    serde_json::from_slice(&body).map_err(|source| CallError::Decode {
        url: url.to_owned(),
        source,
    })
}
