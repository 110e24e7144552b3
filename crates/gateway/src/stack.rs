//! The gateway as one tower stack, assembled in [`Gateway::service`] and [`route_stack`], read
//! top to bottom:
//!
//! 1. **server layers** — [`AccessLog`] (one structured line and the route's metrics per
//!    request), [`Edge`] (request id, a debug span, problem+json stamped with the request id
//!    for every answer the gateway makes itself) and [`Inbound`] (normalised path, refused
//!    heads, the body held or limited);
//! 2. **route** ([`Route`]) — the route table picks the route; its failure becomes the answer
//!    here, in one place;
//! 3. **per-route policy** — [`Authorize`] (who may call: a valid
//!    token, roles, scopes), [`RateLimit`] (how often each client may: a token bucket and a
//!    quota per period), [`Transform`](crate::transform::TransformLayer) (path rewrite,
//!    headers, JSON fields), [`Fallback`](crate::fallback::FallbackLayer) (what to answer when
//!    the upstream cannot), [`Timeout`] (the call's deadline, retries included), then the
//!    upstream's client stack
//!    ([`flotilla_discovery::outbound::stack`]): retry, circuit breaker, bulkhead;
//! 4. **load balancer** — power of two choices or round robin, version weights, the
//!    `X-Canary` pin, ejected instances last;
//! 5. **endpoint with failover** — the request goes to the first instance that takes the
//!    connection.
//!
//! [`LAYERS`] names that order; a test sends a request through the stack and checks that each
//! layer saw it in that order.
//!
//! The route table with its per-route stacks is one value behind a pointer
//! ([`Gateway::replace_routes`] swaps it): a request in flight keeps the table it started with.
//!
//! Each worker thread has its own table and stacks, over its own connection pool
//! ([`Gateway::worker`]); the upstreams' state (breaker, retry budget, bulkhead, balancer) is
//! one per service for all workers, and a swap reaches every worker.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use flotilla_discovery::Discovery;
use flotilla_discovery::outbound::{
    self, Client, Exchange, Failure, HttpClient, Timeout, TimeoutLayer, Upstream,
};
use flotilla_identity::Verifier;
use flotilla_kit::Problem;
use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker};
use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::access::{AccessLog, AccessLogLayer, AccessSettings, RouteTag};
use crate::auth::{AuthLayer, Authorize};
use crate::deferred::Deferred;
use crate::edge::{Edge, EdgeLayer};
use crate::fallback::{FallbackLayer, FallbackService, FallbackState};
use crate::inbound::{Arrived, Inbound, InboundLayer};
use crate::ratelimit::{Limiter, RateLimit, RateLimitLayer, Store};
use crate::routes::{Fallback, Head, Matched, Routes};
use crate::settings::RateLimitSettings;
use crate::transform::{TransformLayer, TransformService};

/// The layers of the stack, outermost first (the kit's server layers come before them).
pub const LAYERS: &[&str] = &[
    "access_log",
    "edge",
    "inbound",
    "route",
    "auth",
    "ratelimit",
    "transform",
    "fallback",
    "timeout",
    "retry",
    "breaker",
    "bulkhead",
    "balance",
    "endpoint",
];

/// What the gateway's stack is built from, besides the routes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The deadline of a call whose route names none (`request_timeout_ms`).
    pub timeout: Duration,
    /// The breaker of an upstream whose section names none.
    pub breaker: BreakerConfig,
    /// The retry policy of an upstream whose section names none.
    pub retry: RetryConfig,
    /// The largest request body forwarded.
    pub max_body_bytes: u64,
    /// Services whose routes queue for later when they name no fallback (`queue_for_later`).
    pub queue_for_later: Vec<String>,
    /// The access log.
    pub access: AccessSettings,
    /// Checks the tokens of routes that need one; the gateway refuses routes that need a token
    /// without it.
    pub verifier: Option<Verifier>,
    /// The gateway's own token, sent on public routes (`None`: they go on without one).
    pub own_token: Option<flotilla_identity::TokenSource>,
    /// Where the routes' limits are kept (`rate_limit`).
    pub rate_limit: RateLimitSettings,
}

/// The gateway: the upstreams' shared state, and one worker's route table with a stack per
/// route. Cheap to clone; [`Gateway::worker`] makes the handle of another worker.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    local: Arc<Local>,
}

/// What every worker shares.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    discovery: Discovery,
    deferred: Option<Deferred>,
    /// Where the routes' limits are kept when they are shared (Redis).
    store: Option<Store>,
    /// The state of the policies in front of each service (breaker, retry budget, bulkhead,
    /// balancer), by service: one for all workers (added to when routes change).
    upstreams: RwLock<BTreeMap<String, Upstream>>,
    /// The route table, and the workers serving it: changed together, one change at a time.
    routing: Mutex<Routing>,
}

#[derive(Debug)]
struct Routing {
    routes: Arc<Routes>,
    /// What each route's fallback keeps, in the table's order: one for all workers.
    states: Arc<Vec<FallbackState>>,
    /// Each route's limits and what they counted, in the table's order: one for all workers.
    limiters: Arc<Vec<Option<Limiter>>>,
    workers: Vec<Weak<Local>>,
}

/// What one worker owns: its connection pool (a connection's task runs on the worker that
/// opened it), and its route table with the stacks over that pool.
#[derive(Debug)]
struct Local {
    http: HttpClient,
    table: RwLock<Arc<Table>>,
}

/// A route table and the stack of each route, in the table's order.
struct Table {
    routes: Arc<Routes>,
    stacks: Vec<(RouteTag, RouteStack)>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// The stack of one route: its policies in front of its upstream's client stack.
pub type RouteStack = BoxCloneSyncService<Exchange, Response, Failure>;

/// The routes' services whose fallback or settings queue for later.
pub fn queueing_services(routes: &Routes, queue_for_later: &[String]) -> Vec<String> {
    let mut services: Vec<String> = routes
        .iter()
        .filter(|route| match &route.fallback {
            Some(fallback) => *fallback == Fallback::Queue,
            None => queue_for_later.contains(&route.service),
        })
        .map(|route| route.service.clone())
        .collect();
    services.sort();
    services.dedup();
    services
}

impl Gateway {
    /// A gateway for `routes`, finding instances with `discovery`, storing requests queued for
    /// later in `deferred`. Fails if an upstream's policies are invalid, if a route queues
    /// for later without a queue, or if the limits' store cannot be made (outside a tokio
    /// runtime).
    pub fn new(
        discovery: Discovery,
        routes: Routes,
        settings: Settings,
        deferred: Option<Deferred>,
    ) -> Result<Self, String> {
        outbound::describe_metrics();
        crate::access::describe_metrics();
        crate::ratelimit::describe_metrics();
        let store = Store::connect(&settings.rate_limit)?;
        let shared = Arc::new(Shared {
            settings,
            discovery,
            deferred,
            store,
            upstreams: RwLock::default(),
            routing: Mutex::new(Routing {
                routes: Arc::new(Routes::empty()),
                states: Arc::default(),
                limiters: Arc::default(),
                workers: Vec::new(),
            }),
        });
        let gateway = Self::join(shared);
        gateway.replace_routes(routes)?;
        Ok(gateway)
    }

    /// The handle of a new worker: its own connection pool and route stacks over it, the
    /// upstreams' state (breakers, balancers, bulkheads) and the route table shared with every
    /// other. Call it on the worker's thread.
    pub fn worker(&self) -> Self {
        Self::join(self.shared.clone())
    }

    /// A worker of `shared`, serving its current route table.
    fn join(shared: Arc<Shared>) -> Self {
        let mut routing = lock(&shared.routing);
        let http = outbound::http_client();
        let table = build_table(
            &shared,
            &routing.routes,
            &routing.states,
            &routing.limiters,
            &http,
        );
        let local = Arc::new(Local {
            http,
            table: RwLock::new(Arc::new(table)),
        });
        routing.workers.retain(|worker| worker.strong_count() > 0);
        routing.workers.push(Arc::downgrade(&local));
        drop(routing);
        Self { shared, local }
    }

    /// Swaps the route table of every worker: requests in flight finish with the old one. An
    /// upstream keeps its state (breaker, balancer) across the swap; a new one is made with the
    /// new table's section. Fails, leaving the table as it was, if the new table cannot be
    /// served.
    pub fn replace_routes(&self, routes: Routes) -> Result<(), String> {
        let shared = &self.shared;
        let mut routing = lock(&shared.routing);
        let queueing = queueing_services(&routes, &shared.settings.queue_for_later);
        if !queueing.is_empty() && shared.deferred.is_none() {
            return Err(format!(
                "routes to {queueing:?} queue for later, but the gateway has no queue"
            ));
        }
        if shared.settings.verifier.is_none()
            && let Some(route) = routes.first_protected()
        {
            return Err(format!(
                "route `{}` needs a token, but the gateway has no identity provider to check \
                 it (set identity.url, FLOTILLA_IDENTITY__URL, or auth = \"public\")",
                route.name
            ));
        }
        let mut added = Vec::new();
        for service in routes.services() {
            if lock_read(&shared.upstreams).contains_key(&service) {
                continue;
            }
            let config = routes
                .upstream(&service)
                .config(&shared.settings.breaker, &shared.settings.retry);
            let upstream = Upstream::new(&service, &config)
                .map_err(|error| format!("upstream `{service}`: {error}"))?;
            added.push((service, upstream));
        }
        lock_write(&shared.upstreams).extend(added);
        let routes = Arc::new(routes);
        // A new table starts with nothing kept (a route may have changed its upstream).
        let states: Arc<Vec<FallbackState>> =
            Arc::new(routes.iter().map(|_| FallbackState::default()).collect());
        let limiters = Arc::new(limiters_of(&routes, &routing, shared.store.as_ref())?);
        routing.workers.retain(|worker| worker.strong_count() > 0);
        for worker in routing.workers.iter().filter_map(Weak::upgrade) {
            let table = build_table(shared, &routes, &states, &limiters, &worker.http);
            *lock_write(&worker.table) = Arc::new(table);
        }
        routing.routes = routes;
        routing.states = states;
        routing.limiters = limiters;
        Ok(())
    }

    /// The whole stack, from the edge down (the listener's limits go around it).
    pub fn service(&self) -> BoxCloneSyncService<Request, Response, Infallible> {
        BoxCloneSyncService::new(self.layers())
    }

    /// [`Gateway::service`] before it is boxed (its type names its layers in order).
    fn layers(&self) -> AccessLog<Edge<Inbound<Route>>> {
        let settings = &self.shared.settings;
        ServiceBuilder::new()
            // One line and the route's metrics per request: it sees every answer as it leaves.
            .layer(AccessLogLayer::new(settings.access))
            // Request id, span, the gateway's problems stamped: what the kit's layers do for
            // the process's own routes.
            .layer(EdgeLayer)
            // What a client sends is checked before any route is chosen.
            .layer(InboundLayer::new(settings.max_body_bytes, settings.timeout))
            .service(Route {
                gateway: self.clone(),
            })
    }

    /// The gateway's own routes, served inside the kit's stack: `/v1/deferred/{id}` when
    /// requests may be queued. Every other path is proxied by [`Gateway::service`] (the kit's
    /// [`App::proxy`](flotilla_kit::App::proxy)).
    pub fn router(&self) -> Router {
        match &self.shared.deferred {
            Some(deferred) => deferred.routes(self.shared.settings.verifier.clone()),
            None => Router::new(),
        }
    }

    /// The breaker in front of `service`, if a route leads to it.
    pub fn breaker(&self, service: &str) -> Option<CircuitBreaker> {
        lock_read(&self.shared.upstreams)
            .get(service)
            .and_then(|upstream| upstream.breaker().cloned())
    }

    /// The retry policy in front of `service`, if a route leads to it.
    pub fn retry(&self, service: &str) -> Option<RetryPolicy> {
        lock_read(&self.shared.upstreams)
            .get(service)
            .and_then(|upstream| upstream.retry().cloned())
    }

    /// The upstream services, sorted.
    pub fn upstreams(&self) -> Vec<String> {
        lock_read(&self.shared.upstreams).keys().cloned().collect()
    }

    /// The services whose queued requests need a replayer.
    pub fn deferred_services(&self) -> Vec<String> {
        let routes = lock(&self.shared.routing).routes.clone();
        queueing_services(&routes, &self.shared.settings.queue_for_later)
    }

    /// The client stack of `service` over this worker's pool, if a route leads to it.
    fn client(&self, service: &str) -> Option<Client> {
        lock_read(&self.shared.upstreams)
            .get(service)
            .map(|upstream| {
                outbound::stack(upstream, self.shared.discovery.cache(), &self.local.http)
            })
    }

    /// Replays the requests queued for `service`, oldest first, through its client stack
    /// (breaker, bulkhead, balancer; no retries: the next round is the retry); stops at the
    /// first that fails again, so that order is kept, and looks again later.
    pub async fn replay(self, service: String, shutdown: CancellationToken) {
        let (Some(deferred), Some(client)) = (self.shared.deferred.clone(), self.client(&service))
        else {
            return;
        };
        let timeout = self.shared.settings.timeout;
        loop {
            while let Ok(Some(queued)) = deferred.next(&service).await {
                let mut exchange = Exchange::new(
                    Arc::from(service.as_str()),
                    queued.method.clone(),
                    queued.path_and_query.clone(),
                    queued.headers.clone(),
                    outbound::Outgoing::Held(queued.body.clone()),
                    timeout,
                );
                exchange.retry = false;
                let deadline = exchange.deadline;
                let Ok(response) = client.clone().oneshot(exchange).await else {
                    break;
                };
                let status = response.status();
                if flotilla_resilience::retry::is_retryable_status(status) {
                    break;
                }
                use http_body_util::BodyExt as _;
                let body = tokio::time::timeout_at(deadline, response.into_body().collect()).await;
                let Ok(Ok(body)) = body else { break };
                if let Err(error) = deferred
                    .complete(&queued.deferred_id, status, &body.to_bytes())
                    .await
                {
                    tracing::error!(%error, "could not record a replay; it will be sent again (the idempotency key makes that safe)");
                    break;
                }
                tracing::info!(%service, deferred_id = %queued.deferred_id, status = status.as_u16(), "queued request replayed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = deferred.queued.notified() => {}
                _ = tokio::time::sleep(crate::deferred::REPLAY_INTERVAL) => {}
            }
        }
    }
}

/// The limiter of each of `routes`, in order, keeping its counts in `store` if given: a route
/// whose limits did not change keeps the one of `routing`'s table, with what it counted in
/// this process; another starts afresh (in Redis, the counts are by route name and client,
/// and stay).
fn limiters_of(
    routes: &Routes,
    routing: &Routing,
    store: Option<&Store>,
) -> Result<Vec<Option<Limiter>>, String> {
    routes
        .iter()
        .map(|route| {
            let kept = routing
                .routes
                .iter()
                .zip(routing.limiters.iter())
                .find_map(|(old, limiter)| (old.name == route.name).then_some(limiter))
                .and_then(Option::as_ref)
                .filter(|limiter| *limiter.limits() == route.limits);
            match kept {
                Some(limiter) => Ok(Some(limiter.clone())),
                None => Limiter::new(&route.name, &route.limits, store.cloned())
                    .map_err(|error| format!("route `{}`: {error}", route.name)),
            }
        })
        .collect()
}

/// The stacks of `routes` over `http`, one worker's pool, in front of the shared upstreams,
/// each route's fallback keeping what it keeps in its shared state of `states`, and its
/// limits counting in its limiter of `limiters`.
fn build_table(
    shared: &Shared,
    routes: &Arc<Routes>,
    states: &[FallbackState],
    limiters: &[Option<Limiter>],
    http: &HttpClient,
) -> Table {
    let upstreams = lock_read(&shared.upstreams);
    let clients: BTreeMap<&str, Client> = upstreams
        .iter()
        .map(|(service, upstream)| {
            let client = outbound::stack(upstream, shared.discovery.cache(), http);
            (service.as_str(), client)
        })
        .collect();
    let mut stacks = Vec::new();
    for ((route, state), limiter) in routes.iter().zip(states).zip(limiters) {
        let client = &clients[route.service.as_str()];
        let fallback = match &route.fallback {
            Some(fallback) => fallback.clone(),
            None if shared.settings.queue_for_later.contains(&route.service) => Fallback::Queue,
            None => Fallback::Error,
        };
        let alternative = match &fallback {
            Fallback::Service(other) => Some(clients[other.as_str()].clone()),
            _ => None,
        };
        let policy = RoutePolicy {
            access: &route.access,
            verifier: shared.settings.verifier.clone(),
            own_token: shared.settings.own_token.clone(),
            limiter: limiter.clone(),
            timeout: route.timeout.unwrap_or(shared.settings.timeout),
            transform: &route.transform,
            fallback,
            alternative,
            deferred: shared.deferred.clone(),
            state,
        };
        stacks.push((
            RouteTag::new(&route.name, &route.service),
            route_stack(policy, client.clone()),
        ));
    }
    Table {
        routes: routes.clone(),
        stacks,
    }
}

/// A route's policies, as [`route_stack`] needs them.
pub struct RoutePolicy<'a> {
    /// Who may call the route.
    pub access: &'a crate::routes::Access,
    /// Checks the tokens, if the route needs them.
    pub verifier: Option<Verifier>,
    /// The gateway's own token, for a public route.
    pub own_token: Option<flotilla_identity::TokenSource>,
    /// Counts each client's calls, if the route limits them.
    pub limiter: Option<Limiter>,
    /// The deadline of a call, retries included.
    pub timeout: Duration,
    /// How the request and its answer are changed.
    pub transform: &'a crate::transform::Transform,
    /// What to answer when the upstream cannot.
    pub fallback: Fallback,
    /// The alternative service's client stack, for [`Fallback::Service`].
    pub alternative: Option<Client>,
    /// The queue, for [`Fallback::Queue`].
    pub deferred: Option<Deferred>,
    /// What the route's fallback keeps, shared by every worker's stack of the route.
    pub state: &'a FallbackState,
}

/// The stack of one route: who may call it, how often, its policies, then `client`, the
/// upstream's client stack (retry, breaker, bulkhead, balancer, endpoint).
pub fn route_stack(policy: RoutePolicy<'_>, client: Client) -> RouteStack {
    BoxCloneSyncService::new(route_layers(policy, client))
}

/// [`route_stack`] before it is boxed, over any client stack.
fn route_layers<C>(
    policy: RoutePolicy<'_>,
    client: C,
) -> Authorize<RateLimit<TransformService<FallbackService<Timeout<C>>>>> {
    ServiceBuilder::new()
        // Before anything else of the route's: a caller it refuses costs the upstream nothing
        // and is answered untransformed.
        .layer(
            AuthLayer::new(policy.access.clone(), policy.verifier).with_own_token(policy.own_token),
        )
        // Below auth, which names the caller it counts (and refuses strangers before they
        // cost a count); above all that reaches the upstream: a refusal never does, and so
        // never counts against its breaker.
        .layer(RateLimitLayer::new(policy.limiter))
        // Outermost of the route's policies, so that a fallback's answer is transformed too.
        .layer(TransformLayer::new(policy.transform.clone()))
        // Above the timeout: a call that ran out of time falls back like any failure.
        .layer(FallbackLayer::new(
            policy.fallback,
            policy.alternative,
            policy.deferred,
            policy.state,
        ))
        // The whole call's deadline: every retry fits in it.
        .layer(TimeoutLayer::new(policy.timeout))
        .service(client)
}

/// Picks the route of a request and sends it down the route's stack; turns a failure into
/// its answer (the one place that does).
#[derive(Debug, Clone)]
pub struct Route {
    gateway: Gateway,
}

impl Service<Arrived> for Route {
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, arrived: Arrived) -> Self::Future {
        let table = lock_read(&self.gateway.local.table).clone();
        Box::pin(async move {
            let head = Head {
                method: &arrived.method,
                path: &arrived.path,
                headers: &arrived.headers,
            };
            let Some(Matched {
                upstream_path,
                index,
                ..
            }) = table.routes.find(head)
            else {
                let problem = Problem::not_found(format!("no route serves `{}`", arrived.path));
                return Ok(axum::response::IntoResponse::into_response(problem));
            };
            let (tag, stack) = &table.stacks[index];
            let path_and_query = match &arrived.query {
                Some(query) => format!("{upstream_path}?{query}"),
                None => upstream_path,
            };
            let mut exchange = Exchange::new(
                tag.service.clone(),
                arrived.method,
                path_and_query,
                crate::inbound::forwarded_headers(arrived.headers),
                arrived.body,
                Duration::MAX,
            );
            exchange.extensions = arrived.extensions;
            let mut response = match stack.clone().oneshot(exchange).await {
                Ok(response) => response,
                Err(failure) => {
                    if failure.kind != outbound::Kind::Client {
                        tracing::debug!(route = %tag.name, %failure, "call failed");
                    }
                    let kind = failure.kind;
                    let mut response = failure.into_response();
                    response.extensions_mut().insert(kind);
                    response
                }
            };
            response.extensions_mut().insert(tag.clone());
            Ok(response)
        })
    }
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock_write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use flotilla_discovery::outbound::UpstreamConfig;

    use super::*;

    /// The layers a stack's type names, outermost first.
    fn layers_of(type_name: &str) -> Vec<&'static str> {
        let known = [
            ("AccessLog", "access_log"),
            ("Edge", "edge"),
            ("Inbound", "inbound"),
            ("Route", "route"),
            ("Authorize", "auth"),
            ("RateLimit", "ratelimit"),
            ("TransformService", "transform"),
            ("FallbackService", "fallback"),
            ("Timeout", "timeout"),
            ("Retry", "retry"),
            ("Breaker", "breaker"),
            ("Bulkhead", "bulkhead"),
            ("Balance", "balance"),
            ("Endpoint", "endpoint"),
        ];
        type_name
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter_map(|ident| known.iter().find(|(name, _)| *name == ident))
            .map(|(_, layer)| *layer)
            .collect()
    }

    fn settings() -> Settings {
        Settings {
            timeout: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            max_body_bytes: 1024,
            queue_for_later: Vec::new(),
            access: AccessSettings::default(),
            verifier: Some(verifier()),
            own_token: None,
            rate_limit: RateLimitSettings::default(),
        }
    }

    /// A verifier of the test provider's tokens, with its keys at hand.
    fn verifier() -> Verifier {
        let idp = &flotilla_testkit::TestIdp::shared().idp;
        Verifier::new(
            &idp.settings().verifier_settings(),
            flotilla_identity::KeySource::Fixed(idp.jwks()),
        )
        .expect("a verifier")
    }

    /// A gateway with `routes` in front of `upstream`, served as the one instance of `service`.
    async fn gateway_over(service: &str, upstream: axum::Router, routes: Routes) -> Gateway {
        let address = flotilla_testkit::serve_instance(upstream).await;
        let discovery = Discovery::fixed(
            HashMap::from([(service.to_owned(), vec![address])]),
            Duration::from_secs(2),
        );
        Gateway::new(discovery, routes, settings(), None).expect("gateway")
    }

    fn get(path: &str) -> Request {
        http::Request::get(path)
            .header(http::header::HOST, "gateway")
            .header(
                http::header::AUTHORIZATION,
                flotilla_testkit::TestIdp::shared().bearer("alice"),
            )
            .body(axum::body::Body::empty())
            .expect("request")
    }

    #[tokio::test]
    async fn a_new_route_table_serves_new_requests_while_those_in_flight_finish_on_the_old() {
        use axum::routing::get as on_get;
        let slow = axum::Router::new().route(
            "/v1/orders/slow",
            on_get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "old table"
            }),
        );
        let gateway = gateway_over("order", slow, Routes::default()).await;
        let in_flight = tokio::spawn(gateway.service().oneshot(get("/v1/orders/slow")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let renamed = Routes::parse(
            r#"
[[routes]]
name = "orders-v2"
service = "order"
path = "/v2/orders"
"#,
        )
        .expect("routes");
        gateway.replace_routes(renamed).expect("swapped");
        let Ok(Ok(response)) = in_flight.await else {
            panic!("the request in flight was dropped")
        };
        assert_eq!(response.status(), http::StatusCode::OK);
        let Ok(response) = gateway.service().oneshot(get("/v1/orders/slow")).await;
        assert_eq!(
            response.status(),
            http::StatusCode::NOT_FOUND,
            "the old route is gone"
        );
        assert_eq!(
            gateway.breaker("order").map(|b| b.name().to_owned()),
            Some("order".to_owned()),
            "the upstream kept its breaker"
        );
    }

    #[tokio::test]
    async fn a_new_route_table_reaches_every_worker_which_share_the_upstreams_state() {
        use axum::routing::get as on_get;
        let upstream = axum::Router::new()
            .route("/v1/orders/{id}", on_get(|| async { "an order" }))
            .route("/v1/items/{id}", on_get(|| async { "an item" }));
        let gateway = gateway_over("order", upstream, Routes::default()).await;
        let workers = [gateway.worker(), gateway.worker()];
        for worker in &workers {
            let Ok(response) = worker.service().oneshot(get("/v1/orders/1")).await;
            assert_eq!(response.status(), http::StatusCode::OK);
        }
        let renamed = Routes::parse(
            r#"
[[routes]]
name = "items"
service = "order"
path = "/items"
version = 1
"#,
        )
        .expect("routes");
        // Swapped through one worker's handle: every worker serves the new table.
        workers[1].replace_routes(renamed).expect("swapped");
        for worker in workers.iter().chain([&gateway]) {
            let Ok(old) = worker.service().oneshot(get("/v1/orders/1")).await;
            assert_eq!(old.status(), http::StatusCode::NOT_FOUND);
            let Ok(new) = worker.service().oneshot(get("/v1/items/1")).await;
            assert_eq!(new.status(), http::StatusCode::OK);
        }
        // One breaker for the service, whichever worker's handle is asked.
        let (Some(a), Some(b)) = (gateway.breaker("order"), workers[0].breaker("order")) else {
            panic!("a breaker in front of `order`");
        };
        a.force(Some(flotilla_resilience::breaker::Forced::Open));
        assert_eq!(
            b.state(),
            flotilla_resilience::breaker::State::ForcedOpen,
            "the workers share the breaker"
        );
    }

    #[tokio::test]
    async fn an_answer_kept_by_one_workers_cached_fallback_serves_the_others() {
        use std::sync::atomic::{AtomicBool, Ordering};

        use axum::routing::get as on_get;
        let failing = Arc::new(AtomicBool::new(false));
        let upstream = {
            let failing = failing.clone();
            axum::Router::new().route(
                "/v1/items",
                on_get(move || {
                    let failing = failing.load(Ordering::SeqCst);
                    async move {
                        if failing {
                            (http::StatusCode::SERVICE_UNAVAILABLE, "down")
                        } else {
                            (http::StatusCode::OK, "the items")
                        }
                    }
                }),
            )
        };
        let routes = Routes::parse(
            r#"
[[routes]]
name = "items"
service = "catalog"
path = "/v1/items"
fallback = { kind = "cached", max_age_ms = 60000 }
[upstreams.catalog]
retry = { max_attempts = 1 }
"#,
        )
        .expect("routes");
        let gateway = gateway_over("catalog", upstream, routes).await;
        let (one, other) = (gateway.worker(), gateway.worker());
        let Ok(fresh) = one.service().oneshot(get("/v1/items")).await;
        assert_eq!(fresh.status(), http::StatusCode::OK);
        use http_body_util::BodyExt as _;
        let fresh = fresh.into_body().collect().await.expect("body").to_bytes();
        failing.store(true, Ordering::SeqCst);
        let Ok(stale) = other.service().oneshot(get("/v1/items")).await;
        assert_eq!(
            stale.status(),
            http::StatusCode::OK,
            "the other worker falls back on what the first kept"
        );
        assert_eq!(stale.headers()["x-fallback"], "stale");
        let stale = stale.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(stale, fresh);
    }

    #[tokio::test]
    async fn the_layers_are_stacked_in_the_documented_order() {
        let discovery = Discovery::fixed(HashMap::new(), Duration::from_secs(1));
        let settings = settings();
        let gateway = Gateway::new(discovery.clone(), Routes::default(), settings, None)
            .expect("the shipped routes");
        let upstream = Upstream::new("order", &UpstreamConfig::default()).expect("defaults");
        let client = outbound::layers(&upstream, discovery.cache(), &outbound::http_client());
        let transform = crate::transform::Transform::default();
        let state = FallbackState::default();
        let policy = RoutePolicy {
            access: &crate::routes::Access::Public,
            verifier: None,
            own_token: None,
            limiter: None,
            timeout: Duration::from_secs(1),
            transform: &transform,
            fallback: Fallback::Error,
            alternative: None,
            deferred: None,
            state: &state,
        };
        let server = std::any::type_name_of_val(&gateway.layers());
        let route = std::any::type_name_of_val(&route_layers(policy, client));
        let mut stacked = layers_of(server);
        stacked.extend(layers_of(route));
        assert_eq!(stacked, LAYERS, "{server}\n{route}");
    }
}
