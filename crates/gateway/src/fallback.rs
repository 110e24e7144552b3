//! The fallback layer: what a route answers when its upstream cannot — no instance, none
//! reachable, the deadline passed, the exchange broke, a 502/503/504, or the breaker or the
//! bulkhead refused the call. The route file chooses per route ([`Fallback`]):
//!
//! | `fallback.kind` | the answer | marked |
//! | --- | --- | --- |
//! | `error` (default) | the failure's problem, 503 with `Retry-After` for an open breaker | — |
//! | `cached` | for `GET`, the last 2xx answer to the same path and query, if younger than `max_age_ms` | `x-fallback: stale`, `Age` |
//! | `default` | the route file's status, content type and body | `x-fallback: default` |
//! | `service` | the answer of another service to the same request (a body of known, small size) | `x-fallback: service` |
//! | `queue` | a write with an `Idempotency-Key` that never reached the service: stored, 202, replayed in order later | `x-fallback: queued` |
//!
//! A client's own fault (a broken body) is never covered up: it gets its 4xx.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use flotilla_discovery::outbound::{Client, Exchange, Failure, Kind, Outgoing};
use flotilla_resilience::retry::is_retryable_status;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::{Layer, Service, ServiceExt};

use crate::deferred::{self, Deferred, Queued};
use crate::routes::Fallback;

/// Which fallback answered, as a response extension (for the access log and metrics).
#[derive(Debug, Clone, Copy)]
pub struct Stale(pub &'static str);

/// The largest answer the `cached` fallback keeps.
pub const CACHE_BODY_LIMIT: u64 = 256 * 1024;
/// The most answers the `cached` fallback keeps per route.
pub const CACHE_ENTRIES: usize = 1024;

/// Layer of [`FallbackService`].
#[derive(Debug, Clone)]
pub struct FallbackLayer {
    fallback: Arc<Fallback>,
    alternative: Option<Client>,
    deferred: Option<Deferred>,
    cache: Option<Arc<Cache>>,
}

/// What a route's fallback keeps across requests (the `cached` fallback's answers): one per
/// route, shared by every worker's stack of that route, so that an answer kept by one worker
/// is there for the others.
#[derive(Debug, Clone, Default)]
pub struct FallbackState {
    cache: Arc<Cache>,
}

impl FallbackLayer {
    /// The fallback `fallback`, with the alternative service's client stack and the queue
    /// where they are needed, keeping what it keeps in `state`.
    pub fn new(
        fallback: Fallback,
        alternative: Option<Client>,
        deferred: Option<Deferred>,
        state: &FallbackState,
    ) -> Self {
        let cache = matches!(fallback, Fallback::Cached { .. }).then(|| state.cache.clone());
        Self {
            fallback: Arc::new(fallback),
            alternative,
            deferred,
            cache,
        }
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = FallbackService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            layer: self.clone(),
        }
    }
}

/// Answers for the upstream when it cannot (see the module's documentation).
#[derive(Debug, Clone)]
pub struct FallbackService<S> {
    inner: S,
    layer: FallbackLayer,
}

type Answer = Result<Response, Failure>;

/// Whether the answer is one the fallback covers: a failure that is not the client's, or a
/// 502/503/504.
fn failed(answer: &Answer) -> bool {
    match answer {
        Ok(response) => is_retryable_status(response.status()),
        Err(failure) => failure.kind != Kind::Client,
    }
}

impl<S> Service<Exchange> for FallbackService<S>
where
    S: Service<Exchange, Response = Response, Error = Failure> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let inner = self.inner.clone();
        let layer = self.layer.clone();
        match &*layer.fallback {
            Fallback::Error => Box::pin(inner.oneshot(exchange)),
            Fallback::Default {
                status,
                content_type,
                body,
            } => {
                let (status, content_type, body) = (*status, content_type.clone(), body.clone());
                Box::pin(async move {
                    let answer = inner.oneshot(exchange).await;
                    if !failed(&answer) {
                        return answer;
                    }
                    let mut response = Response::new(Body::from(body));
                    *response.status_mut() = status;
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, content_type);
                    mark(&mut response, "default");
                    Ok(response)
                })
            }
            Fallback::Cached { max_age } => {
                let (Some(cache), true) = (layer.cache.clone(), exchange.method == Method::GET)
                else {
                    return Box::pin(inner.oneshot(exchange));
                };
                let max_age = *max_age;
                Box::pin(async move {
                    let key = exchange.path_and_query.clone();
                    let deadline = exchange.deadline;
                    let service = exchange.service.clone();
                    let answer = inner.oneshot(exchange).await;
                    if failed(&answer) {
                        return cache.stale(&key, max_age).map_or(answer, Ok);
                    }
                    match answer {
                        Ok(response) if response.status().is_success() => {
                            cache.keep(&service, key, response, deadline).await
                        }
                        other => other,
                    }
                })
            }
            Fallback::Service(other) => {
                let other: Arc<str> = Arc::from(other.as_str());
                let (Some(alternative), Some(mut copy)) =
                    (layer.alternative.clone(), exchange.try_clone())
                else {
                    return Box::pin(inner.oneshot(exchange));
                };
                Box::pin(async move {
                    let answer = inner.oneshot(exchange).await;
                    if !failed(&answer) {
                        return answer;
                    }
                    let service = std::mem::replace(&mut copy.service, other);
                    match alternative.oneshot(copy).await {
                        Ok(mut response) => {
                            mark(&mut response, "service");
                            Ok(response)
                        }
                        Err(failure) => {
                            tracing::warn!(%service, %failure, "the alternative service failed too");
                            answer
                        }
                    }
                })
            }
            Fallback::Queue => {
                let queueable = layer.deferred.clone().filter(|deferred| {
                    deferred.accepts(&exchange.service, &exchange.method, &exchange.headers)
                });
                let (Some(deferred), Outgoing::Held(body)) = (queueable, &exchange.body) else {
                    return Box::pin(inner.oneshot(exchange));
                };
                // Its id is given only if it is queued.
                let mut queued = Queued {
                    deferred_id: String::new(),
                    service: exchange.service.to_string(),
                    method: exchange.method.clone(),
                    path_and_query: exchange.path_and_query.clone(),
                    headers: exchange.headers.clone(),
                    body: body.clone(),
                    owner: exchange
                        .extensions
                        .get::<flotilla_identity::Principal>()
                        .map(|principal| principal.subject.clone()),
                };
                Box::pin(async move {
                    let answer = inner.oneshot(exchange).await;
                    // Only what surely never reached the service: stored, it is sent once.
                    match &answer {
                        Err(failure) if failure.kind.never_sent() => {}
                        _ => return answer,
                    }
                    queued.deferred_id = uuid::Uuid::now_v7().to_string();
                    match deferred.enqueue(&queued).await {
                        Ok(()) => {
                            tracing::info!(service = %queued.service, deferred_id = %queued.deferred_id, "request queued for later");
                            let mut response = deferred::accepted(&queued);
                            mark(&mut response, "queued");
                            Ok(response)
                        }
                        Err(error) => {
                            tracing::error!(%error, "could not queue the request; answering with the failure");
                            answer
                        }
                    }
                })
            }
        }
    }
}

/// Marks an answer as a fallback's.
fn mark(response: &mut Response, kind: &'static str) {
    response
        .headers_mut()
        .insert("x-fallback", HeaderValue::from_static(kind));
    response.extensions_mut().insert(Stale(kind));
}

/// The last good answers of one route, by path and query.
#[derive(Debug, Default)]
struct Cache {
    entries: Mutex<HashMap<String, Kept>>,
}

#[derive(Debug, Clone)]
struct Kept {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Cache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `service`'s `response` if it is small enough, and gives it back; fails if its body
    /// breaks off.
    async fn keep(
        &self,
        service: &str,
        key: String,
        response: Response,
        deadline: tokio::time::Instant,
    ) -> Answer {
        let small = http_body::Body::size_hint(response.body())
            .exact()
            .is_some_and(|length| length <= CACHE_BODY_LIMIT);
        if !small {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let body = match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => {
                return Err(Failure::upstream(
                    service,
                    format!("the answer of `{service}` broke off"),
                ));
            }
        };
        let kept = Kept {
            status: parts.status,
            headers: parts.headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        };
        let mut entries = self.entries();
        // Full: the oldest answer makes room.
        if entries.len() >= CACHE_ENTRIES
            && !entries.contains_key(&key)
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, kept)| kept.at)
                .map(|(key, _)| key.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(key, kept);
        drop(entries);
        Ok(Response::from_parts(parts, Body::from(body)))
    }

    /// The kept answer to `key`, if younger than `max_age`, marked stale.
    fn stale(&self, key: &str, max_age: Duration) -> Option<Response> {
        let kept = self.entries().get(key).cloned()?;
        let age = kept.at.elapsed();
        if age > max_age {
            return None;
        }
        let mut response = Response::new(Body::from(kept.body));
        *response.status_mut() = kept.status;
        *response.headers_mut() = kept.headers;
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age.as_secs()));
        mark(&mut response, "stale");
        Some(response)
    }
}
