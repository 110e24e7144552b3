//! The watched cache of instances: one view per service, kept current by a blocking-query
//! watch on the registry, and the instances set aside after a refused connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_kit::client::{self, Client};
use http::Method;
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
    /// By service name (foldhash: looked up on every call).
    views: Mutex<HashMap<String, Arc<View>, foldhash::fast::RandomState>>,
    shutdown: CancellationToken,
}

/// The watched cache of every service's instances: a cheap, cloneable handle on shared state.
/// [`crate::Discovery`] wraps it with the client stack.
#[derive(Debug, Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// How long a first lookup waits for the registry's answer.
const FIRST_ANSWER: Duration = Duration::from_secs(2);
/// How long one blocking query waits at the registry.
const WATCH_WAIT: Duration = Duration::from_secs(20);

impl Cache {
    /// The cache of the registry at `registry`. Watches stop when `shutdown` fires.
    pub fn new(registry: &str, shutdown: CancellationToken) -> Self {
        Self::build(
            Some(registry.trim_end_matches('/').to_owned()),
            HashMap::new(),
            shutdown,
        )
    }

    /// A client with a fixed table of `service → addresses` and no registry (the `static`
    /// provider: tests, or a deployment where something else does discovery).
    pub fn fixed(table: HashMap<String, Vec<String>>) -> Self {
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
        Self::build(None, views, CancellationToken::new())
    }

    fn build(
        registry: Option<String>,
        views: HashMap<String, Arc<View>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                http: client::client(),
                views: Mutex::new(views.into_iter().collect()),
                shutdown,
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
        Self::current(&self.view(service)).await.to_vec()
    }

    /// The instances of `service` in the order `order` puts them, those set aside after a
    /// refused connection moved to the back (tried only if all else fails): what the balancer
    /// does on every call, with one lookup of the service and no copy of its instances. Waits
    /// for the registry's first answer like [`Cache::instances`].
    pub async fn ordered(
        &self,
        service: &str,
        order: impl FnOnce(&[Endpoint]) -> Vec<Endpoint>,
    ) -> Vec<Endpoint> {
        let view = self.view(service);
        let mut instances = order(&Self::current(&view).await);
        let set_aside = view.set_aside();
        if !set_aside.is_empty() {
            instances.sort_by_key(|endpoint| set_aside.contains(&endpoint.id));
        }
        instances
    }

    /// The instances `view` holds, once the registry has answered (at most [`FIRST_ANSWER`]).
    async fn current(view: &View) -> Arc<Vec<Endpoint>> {
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

    /// Whether the instance `id` of `service` is set aside after a refused connection.
    pub fn is_set_aside(&self, service: &str, id: &str) -> bool {
        self.view(service).set_aside().contains(id)
    }

    /// Notes that `endpoint` refused a connection: it goes to the back of the line until the
    /// registry next reports on `service`.
    pub fn set_aside(&self, service: &str, endpoint: &Endpoint) {
        self.view(service).set_aside().insert(endpoint.id.clone());
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
