//! The watched cache of instances, load balancing and failover.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_kit::client::{self, Client};
use flotilla_resilience::breaker::{BreakerConfig, CircuitOpen, ConfigError};
use flotilla_resilience::retry::RetryConfig;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tokio::sync::watch;

use crate::outbound::{self, Exchange, Failure, Kind, Outgoing, Upstream, UpstreamConfig};
use tokio_util::sync::CancellationToken;

/// One instance of a service, as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Endpoint {
    /// Instance id.
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// Registration metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct WireInstance {
    #[serde(flatten)]
    endpoint: Endpoint,
    status: String,
}

#[derive(Debug, Deserialize)]
struct WireSnapshot {
    index: u64,
    instances: Vec<WireInstance>,
}

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

/// What the cache knows of one service.
#[derive(Debug)]
struct View {
    /// `None` until the registry first answered.
    endpoints: watch::Sender<Option<Arc<Vec<Endpoint>>>>,
    /// Instances that refused a connection since the registry's last word on this service.
    set_aside: Mutex<HashSet<String>>,
}

impl View {
    fn new(initial: Option<Vec<Endpoint>>) -> Self {
        Self {
            endpoints: watch::channel(initial.map(Arc::new)).0,
            set_aside: Mutex::default(),
        }
    }

    fn set_aside(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        lock(&self.set_aside)
    }
}

/// Locks `mutex`, recovering it if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[derive(Debug)]
struct Inner {
    /// Registry base URL; `None` for a fixed table of endpoints.
    registry: Option<String>,
    http: Client,
    views: Mutex<HashMap<String, Arc<View>>>,
    timeout: Duration,
    shutdown: CancellationToken,
    /// Breaker and retry settings for [`Discovery::send`], if any.
    resilience: Option<(BreakerConfig, RetryConfig)>,
    /// The connection pool of [`Discovery::send`].
    outbound: outbound::HttpClient,
    /// One client stack per service, made on first use.
    clients: Mutex<HashMap<String, outbound::Client>>,
}

/// The discovery client: a cheap, cloneable handle on the shared cache.
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

/// How long a first lookup waits for the registry's answer.
const FIRST_ANSWER: Duration = Duration::from_secs(2);
/// How long one blocking query waits at the registry.
const WATCH_WAIT: Duration = Duration::from_secs(20);

impl Discovery {
    /// A client of the registry at `registry`. Calls made with [`Discovery::send`] time out
    /// after `timeout`. Watches stop when `shutdown` fires.
    pub fn new(registry: &str, timeout: Duration, shutdown: CancellationToken) -> Self {
        Self::build(
            Some(registry.trim_end_matches('/').to_owned()),
            HashMap::new(),
            timeout,
            shutdown,
        )
    }

    /// A client with a fixed table of `service → addresses` and no registry (the `static`
    /// provider: tests, or a deployment where something else does discovery).
    pub fn fixed(table: HashMap<String, Vec<String>>, timeout: Duration) -> Self {
        let views = table
            .into_iter()
            .map(|(service, addresses)| {
                let endpoints = addresses
                    .into_iter()
                    .enumerate()
                    .map(|(n, address)| Endpoint {
                        id: format!("{service}-{n}"),
                        address,
                        metadata: BTreeMap::new(),
                    })
                    .collect();
                (service, Arc::new(View::new(Some(endpoints))))
            })
            .collect();
        Self::build(None, views, timeout, CancellationToken::new())
    }

    fn build(
        registry: Option<String>,
        views: HashMap<String, Arc<View>>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                http: client::client(),
                views: Mutex::new(views),
                timeout,
                shutdown,
                resilience: None,
                outbound: outbound::http_client(),
                clients: Mutex::default(),
            }),
        }
    }

    /// The view of `service`, starting its watch on first use.
    fn view(&self, service: &str) -> Arc<View> {
        let mut views = lock(&self.inner.views);
        if let Some(view) = views.get(service) {
            return view.clone();
        }
        let view = Arc::new(View::new(None));
        views.insert(service.to_owned(), view.clone());
        if let Some(registry) = &self.inner.registry {
            tokio::spawn(watch_service(
                self.inner.http.clone(),
                registry.clone(),
                service.to_owned(),
                Arc::downgrade(&view),
                self.inner.shutdown.clone(),
            ));
        } else {
            view.endpoints.send_replace(Some(Arc::new(Vec::new())));
        }
        view
    }

    /// The passing instances of `service` as the cache knows them (waiting for the registry's
    /// first answer if this is the first lookup).
    pub async fn instances(&self, service: &str) -> Vec<Endpoint> {
        let view = self.view(service);
        let mut receiver = view.endpoints.subscribe();
        let first = tokio::time::timeout(FIRST_ANSWER, receiver.wait_for(Option::is_some)).await;
        match first {
            Ok(Ok(endpoints)) => endpoints.as_ref().map(|e| e.to_vec()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The passing instances of `service`, shared (no copy): what the balancer reads on every
    /// call. Waits for the registry's first answer like [`Discovery::instances`].
    pub async fn instances_shared(&self, service: &str) -> Arc<Vec<Endpoint>> {
        let view = self.view(service);
        if let Some(endpoints) = view.endpoints.borrow().as_ref() {
            return endpoints.clone();
        }
        let mut receiver = view.endpoints.subscribe();
        let first = tokio::time::timeout(FIRST_ANSWER, receiver.wait_for(Option::is_some)).await;
        match first {
            Ok(Ok(endpoints)) => endpoints.clone().unwrap_or_default(),
            _ => Arc::default(),
        }
    }

    /// Moves the instances of `service` set aside after a refused connection to the back of
    /// `instances` (they are tried only if all else fails), keeping the order of the rest.
    pub fn set_aside_last(&self, service: &str, instances: &mut [Endpoint]) {
        let view = self.view(service);
        let set_aside = view.set_aside();
        if set_aside.is_empty() {
            return;
        }
        instances.sort_by_key(|endpoint| set_aside.contains(&endpoint.id));
    }

    /// Whether the instance `id` of `service` is set aside after a refused connection.
    pub fn is_set_aside(&self, service: &str, id: &str) -> bool {
        self.view(service).set_aside().contains(id)
    }

    /// Notes that `endpoint` refused a connection: it goes to the back of the line until the
    /// registry next reports on `service`.
    pub fn set_aside(&self, service: &str, endpoint: &Endpoint) {
        self.view(service).set_aside().insert(endpoint.id.clone());
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
        let exchange = Exchange::new(
            Arc::from(service),
            method,
            path_and_query.to_owned(),
            headers.clone(),
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
                tried: self.instances_shared(&service).await.len(),
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
        let client = outbound::stack(&upstream, self, &self.inner.outbound);
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
        let Inner {
            registry,
            http,
            views,
            timeout,
            shutdown,
            outbound,
            ..
        } = Arc::try_unwrap(self.inner).map_err(|_| ConfigError {
            component: "discovery",
            field: "with_resilience",
            reason: "add resilience before sharing the client",
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                http,
                views,
                timeout,
                shutdown,
                resilience: Some((breaker, retry)),
                outbound,
                clients: Mutex::default(),
            }),
        })
    }
}

/// Keeps `view` current with blocking queries until shutdown or until nobody holds the view.
async fn watch_service(
    http: Client,
    registry: String,
    service: String,
    view: std::sync::Weak<View>,
    shutdown: CancellationToken,
) {
    let mut index: Option<u64> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let url = match index {
            None => format!("{registry}/v1/registry/services/{service}"),
            Some(seen) => format!(
                "{registry}/v1/registry/services/{service}?index={seen}&wait_ms={}",
                WATCH_WAIT.as_millis()
            ),
        };
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = client::json::<WireSnapshot>(&http, Method::GET, &url, None::<&()>, WATCH_WAIT + Duration::from_secs(5)) => answer,
        };
        let Some(view) = view.upgrade() else { return };
        match answer {
            Ok(snapshot) => {
                backoff = Duration::from_millis(100);
                if index == Some(snapshot.index) {
                    continue;
                }
                index = Some(snapshot.index);
                let passing: Vec<Endpoint> = snapshot
                    .instances
                    .into_iter()
                    .filter(|instance| instance.status == "passing")
                    .map(|instance| instance.endpoint)
                    .collect();
                tracing::debug!(%service, instances = passing.len(), index = snapshot.index, "discovery update");
                view.set_aside().clear();
                view.endpoints.send_replace(Some(Arc::new(passing)));
            }
            Err(error) => {
                // Keep serving the last known instances: a registry outage must not take
                // down traffic between healthy services.
                tracing::warn!(%service, %error, "registry watch failed; keeping the cached instances");
                drop(view);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
