//! The discovery client: the cache of instances ([`Cache`]) with the client stack
//! ([`crate::outbound`]) that calls through it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_identity::TokenSource;
use flotilla_resilience::breaker::{BreakerConfig, CircuitOpen, ConfigError};
use flotilla_resilience::retry::RetryConfig;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt as _;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, Endpoint};
use crate::outbound::{self, Exchange, Failure, Kind, Outgoing, Upstream, UpstreamConfig};

/// Why no instance answered.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The service has no passing instance.
    #[error("no instance of `{service}` is available")]
    NoInstances {
        /// The service.
        service: String,
    },
    /// Every instance tried refused the connection.
    #[error("no instance of `{service}` could be reached ({tried} tried)")]
    Unreachable {
        /// The service.
        service: String,
        /// How many instances were tried.
        tried: usize,
    },
    /// The service's circuit breaker is open: nothing was sent.
    #[error(transparent)]
    CircuitOpen(CircuitOpen),
    /// An instance was reached but the exchange failed (timeout, broken connection…), or the
    /// call was refused on this side (a full bulkhead, an invalid request); the request may
    /// have been processed, so it is not sent elsewhere.
    #[error("call to `{service}` failed: {source}")]
    Call {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: Failure,
    },
}

#[derive(Debug)]
struct Inner {
    /// The deadline of a call made with [`Discovery::send`], retries included.
    timeout: Duration,
    /// Breaker and retry settings for [`Discovery::send`], if any.
    resilience: Option<(BreakerConfig, RetryConfig)>,
    /// The connection pool of [`Discovery::send`].
    http: outbound::HttpClient,
    /// One client stack per service, made on first use.
    clients: Mutex<HashMap<String, outbound::Client>>,
}

/// The discovery client: a cheap, cloneable handle on the shared cache and client stacks.
#[derive(Debug, Clone)]
pub struct Discovery {
    cache: Cache,
    inner: Arc<Inner>,
    /// The process's own token, sent when a request carries no `Authorization`.
    token: Option<TokenSource>,
}

/// Locks `mutex`, recovering it if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Discovery {
    /// A client of the registry at `registry`. Calls made with [`Discovery::send`] time out
    /// after `timeout`. Watches stop when `shutdown` fires.
    pub fn new(registry: &str, timeout: Duration, shutdown: CancellationToken) -> Self {
        Self::over(Cache::new(registry, shutdown), timeout)
    }

    /// A client with a fixed table of `service → addresses` and no registry (the `static`
    /// provider: tests, or a deployment where something else does discovery).
    pub fn fixed(table: HashMap<String, Vec<String>>, timeout: Duration) -> Self {
        Self::over(Cache::fixed(table), timeout)
    }

    fn over(cache: Cache, timeout: Duration) -> Self {
        Self {
            cache,
            token: None,
            inner: Arc::new(Inner {
                timeout,
                resilience: None,
                http: outbound::http_client(),
                clients: Mutex::default(),
            }),
        }
    }

    /// Calls made with [`Discovery::send`] carry `token` (the process's own, as a platform
    /// client) unless the caller set an `Authorization` of its own (a user's token passed on).
    pub fn with_token(mut self, token: Option<TokenSource>) -> Self {
        self.token = token;
        self
    }

    /// The cache of instances (what the client stack's balancer reads).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The passing instances of `service` as the cache knows them (waiting for the registry's
    /// first answer if this is the first lookup).
    pub async fn instances(&self, service: &str) -> Vec<Endpoint> {
        self.cache.instances(service).await
    }

    /// Whether the instance `id` of `service` is set aside after a refused connection.
    pub fn is_set_aside(&self, service: &str, id: &str) -> bool {
        self.cache.is_set_aside(service, id)
    }

    /// Sends a request to one instance of `service`, failing over to the next instance when
    /// one cannot be reached. Returns the status and the body of the first answer.
    ///
    /// The call runs through the same client stack as the gateway's
    /// ([`outbound::stack`]): the balancer (power of two choices, outlier ejection) and, with
    /// [`Discovery::with_resilience`], the service's circuit breaker and a retry of a safe
    /// request (idempotent method or `Idempotency-Key`) after a 502, 503, 504 or a transport
    /// failure. The whole call, retries included, has the client's timeout.
    pub async fn send(
        &self,
        service: &str,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), DiscoveryError> {
        use tower::{Layer as _, ServiceExt as _};
        let timeout = self.inner.timeout;
        let mut headers = headers.clone();
        if let Some(token) = &self.token
            && !headers.contains_key(http::header::AUTHORIZATION)
        {
            let bearer = token.bearer().await.map_err(|error| DiscoveryError::Call {
                service: service.to_owned(),
                source: Failure::client(flotilla_kit::Problem::unavailable(
                    "identity-unavailable",
                    format!("no token to call `{service}` with: {error}"),
                )),
            })?;
            headers.insert(http::header::AUTHORIZATION, bearer);
        }
        let exchange = Exchange::new(
            Arc::from(service),
            method,
            path_and_query.to_owned(),
            headers,
            Outgoing::Held(body),
            timeout,
        );
        let deadline = exchange.deadline;
        let client = self.client(service).map_err(|error| DiscoveryError::Call {
            service: service.to_owned(),
            source: Failure::client(flotilla_kit::Problem::internal(&error)),
        })?;
        let client = outbound::TimeoutLayer::new(timeout).layer(client);
        let response = match client.oneshot(exchange).await {
            Ok(response) => response,
            Err(failure) => return Err(self.error(service, failure).await),
        };
        let status = response.status();
        match tokio::time::timeout_at(deadline, response.into_body().collect()).await {
            Ok(Ok(body)) => Ok((status, body.to_bytes())),
            _ => Err(DiscoveryError::Call {
                service: service.to_owned(),
                source: Failure::timeout(
                    service,
                    format!("the answer of `{service}` broke off or came too late"),
                ),
            }),
        }
    }

    /// The error of a failed [`Discovery::send`].
    async fn error(&self, service: &str, failure: Failure) -> DiscoveryError {
        let service = service.to_owned();
        match failure.kind {
            Kind::NoInstance => DiscoveryError::NoInstances { service },
            Kind::Unreachable => DiscoveryError::Unreachable {
                tried: self.cache.instances(&service).await.len(),
                service,
            },
            Kind::CircuitOpen => DiscoveryError::CircuitOpen(CircuitOpen {
                breaker: Arc::from(service.as_str()),
                retry_after: failure.retry_after.unwrap_or_default(),
            }),
            _ => DiscoveryError::Call {
                service,
                source: failure,
            },
        }
    }

    /// The client stack of `service`, made on first use.
    fn client(&self, service: &str) -> Result<outbound::Client, ConfigError> {
        let mut clients = lock(&self.inner.clients);
        if let Some(client) = clients.get(service) {
            return Ok(client.clone());
        }
        let (breaker, retry) = match &self.inner.resilience {
            Some((breaker, retry)) => (Some(breaker.clone()), Some(retry.clone())),
            None => (None, None),
        };
        let config = UpstreamConfig {
            breaker,
            retry,
            ..UpstreamConfig::default()
        };
        // Both configurations were validated by `with_resilience`.
        let upstream = Upstream::new(service, &config)?;
        let client = outbound::stack(&upstream, &self.cache, &self.inner.http);
        clients.insert(service.to_owned(), client.clone());
        Ok(client)
    }

    /// Adds a circuit breaker (configured by `breaker`) and a retry policy per service to
    /// [`Discovery::send`]. Fails if `breaker` or `retry` is invalid.
    pub fn with_resilience(
        self,
        breaker: BreakerConfig,
        retry: RetryConfig,
    ) -> Result<Self, ConfigError> {
        breaker.validate()?;
        retry.validate()?;
        let Inner { timeout, http, .. } = Arc::try_unwrap(self.inner).map_err(|_| ConfigError {
            component: "discovery",
            field: "with_resilience",
            reason: "add resilience before sharing the client",
        })?;
        Ok(Self {
            cache: self.cache,
            token: self.token,
            inner: Arc::new(Inner {
                timeout,
                resilience: Some((breaker, retry)),
                http,
                clients: Mutex::default(),
            }),
        })
    }
}
