//! Fallbacks: what a caller answers when a call fails or its breaker is open.
//!
//! | fallback | answers with |
//! | --- | --- |
//! | [`Fallback::DefaultValue`] | a fixed value (an empty list, a "price unavailable" placeholder) |
//! | [`Fallback::LastGood`] | the last good answer to the same request, if it is younger than `max_age` |
//! | [`Fallback::Alternative`] | the answer of another service (a replica in another zone, a degraded mode) |
//!
//! The *error response* fallback (problem+json 503 with `Retry-After`) is what the gateway does
//! when nothing else is configured; *queue for later* needs the caller's database and is still
//! to come (issue 3).
//!
//! A call falls back when it fails with an error or when the classifier counts its response as a
//! failure (a 5xx, with [`crate::breaker::HttpClassifier`]).
//!
//! ```
//! use std::time::Duration;
//! use flotilla_resilience::fallback::{Fallback, FallbackLayer};
//! use flotilla_resilience::breaker::Outcome;
//! let layer = FallbackLayer::new(
//!     Fallback::<String, Vec<u32>>::last_good(Duration::from_secs(60)),
//!     |request: &String| request.clone(),                  // the cache key
//!     |result: &Result<Vec<u32>, std::io::Error>| match result {
//!         Ok(_) => Outcome::Success,
//!         Err(_) => Outcome::Failure,
//!     },
//! );
//! # drop(layer);
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::Clock;
use crate::breaker::Outcome;

/// A fallback for calls answering `Res`, keyed by `K`.
///
/// ```
/// use flotilla_resilience::fallback::Fallback;
/// // An empty catalog page when the catalog cannot be reached.
/// let fallback: Fallback<String, Vec<String>> = Fallback::DefaultValue(Vec::new());
/// assert!(matches!(fallback, Fallback::DefaultValue(ref page) if page.is_empty()));
/// ```
pub enum Fallback<K, Res, Req = K, E = std::io::Error> {
    /// Answer with this value.
    DefaultValue(Res),
    /// Answer with the last good answer for the same key, if younger than `max_age`.
    LastGood {
        /// Oldest answer still worth giving.
        max_age: Duration,
        /// Last good answers by key, with when they were received.
        cache: Arc<Mutex<HashMap<K, (Res, u64)>>>,
        /// Clock of the ages.
        clock: Clock,
    },
    /// Ask this other service.
    Alternative(BoxCloneSyncService<Req, Res, E>),
}

impl<K, Res: Clone, Req, E> Clone for Fallback<K, Res, Req, E> {
    fn clone(&self) -> Self {
        match self {
            Fallback::DefaultValue(value) => Fallback::DefaultValue(value.clone()),
            Fallback::LastGood {
                max_age,
                cache,
                clock,
            } => Fallback::LastGood {
                max_age: *max_age,
                cache: cache.clone(),
                clock: clock.clone(),
            },
            Fallback::Alternative(service) => Fallback::Alternative(service.clone()),
        }
    }
}

impl<K, Res, Req, E> std::fmt::Debug for Fallback<K, Res, Req, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::DefaultValue(_) => f.write_str("Fallback::DefaultValue"),
            Fallback::LastGood { max_age, .. } => write!(f, "Fallback::LastGood({max_age:?})"),
            Fallback::Alternative(_) => f.write_str("Fallback::Alternative"),
        }
    }
}

impl<K, Res, Req, E> Fallback<K, Res, Req, E> {
    /// The last good answer per key, up to `max_age` old, on the system clock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::fallback::Fallback;
    /// match Fallback::<String, Vec<u32>>::last_good(Duration::from_secs(60)) {
    ///     Fallback::LastGood { max_age, cache, .. } => {
    ///         assert_eq!(max_age, Duration::from_secs(60));
    ///         assert!(cache.lock().unwrap().is_empty()); // filled by the good answers to come
    ///     }
    ///     _ => unreachable!(),
    /// }
    /// ```
    pub fn last_good(max_age: Duration) -> Self {
        Self::last_good_with_clock(max_age, Clock::system())
    }

    /// The same, reading `clock`.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// use flotilla_resilience::{Clock, breaker::Outcome, fallback::{Fallback, FallbackLayer}};
    /// use tower::{Layer, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// static DOWN: AtomicBool = AtomicBool::new(false);
    /// let clock = Clock::manual();
    /// let fallback = Fallback::<u32, u32, u32>::last_good_with_clock(Duration::from_secs(60), clock.clone());
    /// let classify = |r: &Result<u32, std::io::Error>| if r.is_ok() { Outcome::Success } else { Outcome::Failure };
    /// let service = FallbackLayer::new(fallback, |n: &u32| *n, classify).layer(tower::service_fn(|n: u32| async move {
    ///     if DOWN.load(Ordering::SeqCst) { Err(std::io::Error::other("down")) } else { Ok(n * 10) }
    /// }));
    /// assert_eq!(service.clone().oneshot(7).await.unwrap(), 70);
    /// DOWN.store(true, Ordering::SeqCst);
    /// assert_eq!(service.clone().oneshot(7).await.unwrap(), 70); // the last good answer
    /// clock.advance(Duration::from_secs(61));
    /// assert!(service.oneshot(7).await.is_err()); // too old to serve
    /// # }
    /// ```
    pub fn last_good_with_clock(max_age: Duration, clock: Clock) -> Self {
        Fallback::LastGood {
            max_age,
            cache: Arc::default(),
            clock,
        }
    }
}

/// Puts a [`Fallback`] behind a service: `key` names a request (for [`Fallback::LastGood`]),
/// `classify` says which results are failures.
///
/// ```
/// use flotilla_resilience::{breaker::Outcome, fallback::{Fallback, FallbackLayer}};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let classify = |r: &Result<Vec<u32>, std::io::Error>| if r.is_ok() { Outcome::Success } else { Outcome::Failure };
/// let service = FallbackLayer::new(Fallback::<(), Vec<u32>, ()>::DefaultValue(Vec::new()), |_: &()| (), classify)
///     .layer(tower::service_fn(|_: ()| async { Err::<Vec<u32>, _>(std::io::Error::other("down")) }));
/// assert_eq!(service.oneshot(()).await.unwrap(), Vec::<u32>::new()); // the default, not the error
/// # }
/// ```
#[derive(Debug)]
pub struct FallbackLayer<K, Res, Req, E, KeyFn, C> {
    fallback: Fallback<K, Res, Req, E>,
    key: KeyFn,
    classify: C,
}

impl<K, Res: Clone, Req, E, KeyFn: Clone, C: Clone> Clone
    for FallbackLayer<K, Res, Req, E, KeyFn, C>
{
    fn clone(&self) -> Self {
        Self {
            fallback: self.fallback.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<K, Res, Req, E, KeyFn, C> FallbackLayer<K, Res, Req, E, KeyFn, C> {
    /// A layer with `fallback`, naming requests with `key` and judging results with `classify`.
    ///
    /// ```
    /// use flotilla_resilience::{breaker::Outcome, fallback::{Fallback, FallbackLayer}};
    /// use tower::{Layer, ServiceExt, util::BoxCloneSyncService};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let replica = BoxCloneSyncService::new(tower::service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n + 1) }));
    /// let classify = |r: &Result<u32, std::io::Error>| if r.is_ok() { Outcome::Success } else { Outcome::Failure };
    /// let service = FallbackLayer::new(Fallback::<u32, u32, u32>::Alternative(replica), |n: &u32| *n, classify)
    ///     .layer(tower::service_fn(|_: u32| async { Err::<u32, _>(std::io::Error::other("down")) }));
    /// assert_eq!(service.oneshot(1).await.unwrap(), 2); // answered by the replica
    /// # }
    /// ```
    pub fn new(fallback: Fallback<K, Res, Req, E>, key: KeyFn, classify: C) -> Self {
        Self {
            fallback,
            key,
            classify,
        }
    }
}

impl<S, K, Res: Clone, Req, E, KeyFn: Clone, C: Clone> Layer<S>
    for FallbackLayer<K, Res, Req, E, KeyFn, C>
{
    type Service = FallbackService<S, K, Res, Req, E, KeyFn, C>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            fallback: self.fallback.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service with a fallback (see [`FallbackLayer`]).
///
/// ```
/// use flotilla_resilience::{breaker::Outcome, fallback::{Fallback, FallbackLayer}};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Answers are status codes; a 5xx is a failure even though the call returned `Ok`.
/// let classify = |r: &Result<u16, std::io::Error>| match r {
///     Ok(500..) | Err(_) => Outcome::Failure,
///     Ok(_) => Outcome::Success,
/// };
/// let service = FallbackLayer::new(Fallback::<(), u16, ()>::DefaultValue(204), |_: &()| (), classify)
///     .layer(tower::service_fn(|_: ()| async { Ok::<u16, std::io::Error>(503) }));
/// assert_eq!(service.oneshot(()).await.unwrap(), 204);
/// # }
/// ```
#[derive(Debug)]
pub struct FallbackService<S, K, Res, Req, E, KeyFn, C> {
    inner: S,
    fallback: Fallback<K, Res, Req, E>,
    key: KeyFn,
    classify: C,
}

impl<S: Clone, K, Res: Clone, Req, E, KeyFn: Clone, C: Clone> Clone
    for FallbackService<S, K, Res, Req, E, KeyFn, C>
{
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            fallback: self.fallback.clone(),
            key: self.key.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S, K, Res, Req, E, KeyFn, C> Service<Req> for FallbackService<S, K, Res, Req, E, KeyFn, C>
where
    S: Service<Req, Response = Res, Error = E> + Clone + Send + 'static,
    S::Future: Send,
    K: Hash + Eq + Send + 'static,
    Res: Clone + Send + 'static,
    Req: Clone + Send + 'static,
    E: Send + 'static,
    KeyFn: Fn(&Req) -> K,
    C: Fn(&Result<Res, E>) -> Outcome + Clone + Send + 'static,
{
    type Response = Res;
    type Error = E;
    type Future = Pin<Box<dyn Future<Output = Result<Res, E>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = (self.key)(&request);
        let spare = matches!(self.fallback, Fallback::Alternative(_)).then(|| request.clone());
        let (inner, fallback, classify) = (
            self.inner.clone(),
            self.fallback.clone(),
            self.classify.clone(),
        );
        Box::pin(async move {
            let result = inner.oneshot(request).await;
            let failed = classify(&result) == Outcome::Failure;
            match fallback {
                Fallback::LastGood {
                    max_age,
                    cache,
                    clock,
                } => {
                    let mut cache = cache.lock().unwrap_or_else(|poison| poison.into_inner());
                    let now = clock.now();
                    match (&result, failed) {
                        (Ok(response), false) => {
                            cache.insert(key, (response.clone(), now));
                            result
                        }
                        (_, true) | (Err(_), _) => match cache.get(&key) {
                            Some((response, at))
                                if now.saturating_sub(*at) <= crate::clock::nanos(max_age) =>
                            {
                                Ok(response.clone())
                            }
                            _ => result,
                        },
                    }
                }
                _ if !failed => result,
                Fallback::DefaultValue(value) => Ok(value),
                Fallback::Alternative(service) => match spare {
                    Some(request) => service.oneshot(request).await,
                    None => result,
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    type Answer = Result<u32, std::io::Error>;

    fn classify(result: &Answer) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    /// A service answering its request ×10, or failing while `down`.
    fn target(
        down: Arc<AtomicBool>,
    ) -> impl Service<u32, Response = u32, Error = std::io::Error, Future = impl Send>
    + Clone
    + Send
    + Sync
    + 'static {
        tower::service_fn(move |n: u32| {
            let down = down.load(Ordering::SeqCst);
            async move {
                if down {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(n * 10)
                }
            }
        })
    }

    #[tokio::test]
    async fn a_default_value_replaces_failures_only() {
        let down = Arc::new(AtomicBool::new(false));
        let service = FallbackLayer::new(
            Fallback::<u32, u32, u32>::DefaultValue(0),
            |n: &u32| *n,
            classify,
        )
        .layer(target(down.clone()));
        assert_eq!(service.clone().oneshot(4).await.expect("up"), 40);
        down.store(true, Ordering::SeqCst);
        assert_eq!(service.oneshot(4).await.expect("fallback"), 0);
    }

    #[tokio::test]
    async fn the_last_good_answer_is_served_until_it_is_too_old() {
        let down = Arc::new(AtomicBool::new(false));
        let clock = Clock::manual();
        let fallback =
            Fallback::<u32, u32, u32>::last_good_with_clock(Duration::from_secs(60), clock.clone());
        let service =
            FallbackLayer::new(fallback, |n: &u32| *n, classify).layer(target(down.clone()));
        assert_eq!(service.clone().oneshot(7).await.expect("up"), 70);
        down.store(true, Ordering::SeqCst);
        assert_eq!(service.clone().oneshot(7).await.expect("cached"), 70);
        assert!(
            service.clone().oneshot(8).await.is_err(),
            "nothing cached for another key"
        );
        clock.advance(Duration::from_secs(61));
        assert!(service.oneshot(7).await.is_err(), "too old to serve");
    }

    #[tokio::test]
    async fn an_alternative_service_answers_when_the_first_fails() {
        let down = Arc::new(AtomicBool::new(true));
        let alternative = BoxCloneSyncService::new(tower::service_fn(|n: u32| async move {
            Ok::<_, std::io::Error>(n + 1)
        }));
        let service = FallbackLayer::new(
            Fallback::<u32, u32, u32>::Alternative(alternative),
            |n: &u32| *n,
            classify,
        )
        .layer(target(down));
        assert_eq!(service.oneshot(1).await.expect("alternative"), 2);
    }
}
