//! The watched cache of instances, load balancing and failover.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_kit::client::{self, CallError, Client};
use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, CircuitOpen, ConfigError};
use flotilla_resilience::pipeline::{Pipeline, Verdict};
use flotilla_resilience::retry::{self, RetryConfig, RetryPolicy};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use tokio::sync::watch;
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
    /// An instance was reached but the exchange failed (timeout, broken connection…); the
    /// request may have been processed, so it is not sent elsewhere.
    #[error("call to `{service}` failed: {source}")]
    Call {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: CallError,
    },
}

/// What the cache knows of one service.
#[derive(Debug)]
struct View {
    /// `None` until the registry first answered.
    endpoints: watch::Sender<Option<Arc<Vec<Endpoint>>>>,
    /// Round-robin cursor.
    next: AtomicUsize,
    /// Instances that refused a connection since the registry's last word on this service.
    set_aside: Mutex<HashSet<String>>,
}

impl View {
    fn new(initial: Option<Vec<Endpoint>>) -> Self {
        Self {
            endpoints: watch::channel(initial.map(Arc::new)).0,
            next: AtomicUsize::new(0),
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
    /// One pipeline per service, made on first use.
    pipelines: Mutex<HashMap<String, Pipeline>>,
}

/// How an attempt counts for the breaker and the retry policy.
fn judge(result: &Result<(StatusCode, Bytes), DiscoveryError>) -> Verdict {
    match result {
        Ok((status, _)) => Verdict::of_status(*status),
        Err(DiscoveryError::NoInstances { .. } | DiscoveryError::CircuitOpen(_)) => {
            Verdict::Ignored
        }
        Err(DiscoveryError::Call {
            source: CallError::Invalid { .. },
            ..
        }) => Verdict::Ignored,
        Err(_) => Verdict::Failure { retryable: true },
    }
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
                pipelines: Mutex::default(),
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

    /// The instances of `service` in the order to try them: round-robin from the next one,
    /// those set aside after a refused connection last (they are tried only if all else fails).
    pub async fn candidates(&self, service: &str) -> Vec<Endpoint> {
        let endpoints = self.instances(service).await;
        if endpoints.is_empty() {
            return endpoints;
        }
        let view = self.view(service);
        let start = view.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        let set_aside = view.set_aside();
        let (mut good, bad): (Vec<_>, Vec<_>) = endpoints[start..]
            .iter()
            .chain(&endpoints[..start])
            .cloned()
            .partition(|endpoint| !set_aside.contains(&endpoint.id));
        good.extend(bad);
        good
    }

    /// Notes that `endpoint` refused a connection: it goes to the back of the line until the
    /// registry next reports on `service`.
    pub fn set_aside(&self, service: &str, endpoint: &Endpoint) {
        self.view(service).set_aside().insert(endpoint.id.clone());
    }

    /// Sends a request to one instance of `service`, failing over to the next instance when
    /// one cannot be reached. Returns the status and the body of the first answer.
    ///
    /// With [`Discovery::with_resilience`], each attempt passes the service's circuit breaker
    /// and a safe request (idempotent method or `Idempotency-Key`) is retried after a 502, 503,
    /// 504 or a transport failure.
    pub async fn send(
        &self,
        service: &str,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), DiscoveryError> {
        let Some(pipeline) = self.pipeline(service) else {
            return self
                .attempt(service, &method, path_and_query, headers, &body)
                .await;
        };
        let mut call = pipeline.start(retry::is_safe(&method, headers));
        loop {
            let permit = call.admit().map_err(DiscoveryError::CircuitOpen)?;
            let result = self
                .attempt(service, &method, path_and_query, headers, &body)
                .await;
            match call.after(permit, judge(&result)) {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return result,
            }
        }
    }

    /// The breaker and retry policy of `service`, made on first use.
    fn pipeline(&self, service: &str) -> Option<Pipeline> {
        let (breaker, retry) = self.inner.resilience.as_ref()?;
        let mut pipelines = lock(&self.inner.pipelines);
        if let Some(pipeline) = pipelines.get(service) {
            return Some(pipeline.clone());
        }
        let circuit = CircuitBreaker::new(service, breaker.clone()).ok()?;
        // Both configurations were validated by `with_resilience`.
        let policy = RetryPolicy::new(retry.clone()).ok()?;
        let pipeline = Pipeline::new(Some(circuit), Some(policy));
        pipelines.insert(service.to_owned(), pipeline.clone());
        Some(pipeline)
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
                pipelines: Mutex::default(),
            }),
        })
    }

    /// One attempt: the instances in round-robin order, failing over on refused connections.
    async fn attempt(
        &self,
        service: &str,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(StatusCode, Bytes), DiscoveryError> {
        let candidates = self.candidates(service).await;
        if candidates.is_empty() {
            return Err(DiscoveryError::NoInstances {
                service: service.to_owned(),
            });
        }
        for endpoint in &candidates {
            let url = format!("http://{}{}", endpoint.address, path_and_query);
            let mut builder = Request::builder().method(method.clone()).uri(&url);
            if let Some(map) = builder.headers_mut() {
                map.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            let request =
                builder
                    .body(Full::new(body.clone()))
                    .map_err(|e| DiscoveryError::Call {
                        service: service.to_owned(),
                        source: CallError::Invalid {
                            url: url.clone(),
                            reason: e.to_string(),
                        },
                    })?;
            match client::exchange(&self.inner.http, &url, request, self.inner.timeout).await {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_connect() => {
                    tracing::warn!(%service, instance = %endpoint.id, %error, "instance unreachable; failing over");
                    self.set_aside(service, endpoint);
                }
                Err(source) => {
                    return Err(DiscoveryError::Call {
                        service: service.to_owned(),
                        source,
                    });
                }
            }
        }
        Err(DiscoveryError::Unreachable {
            service: service.to_owned(),
            tried: candidates.len(),
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
