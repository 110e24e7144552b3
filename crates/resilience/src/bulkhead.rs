//! Bulkhead: at most `max_concurrent` calls at once, at most `max_waiting` waiting for a place,
//! each for at most `max_wait_ms`. A slow dependency then ties up a bounded share of the caller,
//! not all of it.
//!
//! ```
//! use flotilla_resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
//! let layer = BulkheadLayer::new(BulkheadConfig { max_concurrent: 8, ..Default::default() });
//! let service = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|request: u32| async move { Ok::<_, std::convert::Infallible>(request) });
//! # drop(service);
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

/// Bulkhead parameters.
///
/// ```
/// use flotilla_resilience::bulkhead::BulkheadConfig;
/// let config: BulkheadConfig = serde_json::from_str(r#"{ "max_concurrent": 8 }"#).unwrap();
/// assert_eq!(config, BulkheadConfig { max_concurrent: 8, max_waiting: 64, max_wait_ms: 500 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Calls in flight at once. Default 64.
    pub max_concurrent: u32,
    /// Calls waiting for a place; beyond, calls are refused at once. Default 64.
    pub max_waiting: u32,
    /// Longest wait for a place. Default 500 ms.
    pub max_wait_ms: u64,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            max_waiting: 64,
            max_wait_ms: 500,
        }
    }
}

/// Why the bulkhead refused a call.
///
/// ```
/// use std::time::Duration;
/// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 1, max_waiting: 1, max_wait_ms: 100 });
/// let _held = bulkhead.acquire().await.unwrap();
/// let full = bulkhead.acquire().await.unwrap_err(); // waited in line for 100 ms, in vain
/// assert_eq!(full, BulkheadFull::Timeout(Duration::from_millis(100)));
/// assert_eq!(full.to_string(), "bulkhead full: no place within 100ms");
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadFull {
    /// Every place is taken and the waiting line is full.
    #[error("bulkhead full: {0} calls already waiting")]
    QueueFull(u32),
    /// No place freed up within `max_wait_ms`.
    #[error("bulkhead full: no place within {0:?}")]
    Timeout(Duration),
}

/// A bulkhead, cheap to clone (clones share places).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig};
/// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 1, max_waiting: 0, max_wait_ms: 10 });
/// let place = bulkhead.acquire().await.unwrap();
/// assert!(bulkhead.acquire().await.is_err()); // full, and no room in line
/// drop(place);
/// assert!(bulkhead.acquire().await.is_ok());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Bulkhead {
    places: Arc<Semaphore>,
    waiting: Arc<AtomicU32>,
    config: Arc<std::sync::Mutex<BulkheadConfig>>,
}

impl Bulkhead {
    /// A bulkhead with `config`.
    ///
    /// ```
    /// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig};
    /// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 3, ..BulkheadConfig::default() });
    /// assert_eq!(bulkhead.available(), 3);
    /// ```
    pub fn new(config: BulkheadConfig) -> Self {
        Self {
            places: Arc::new(Semaphore::new(config.max_concurrent as usize)),
            waiting: Arc::default(),
            config: Arc::new(std::sync::Mutex::new(config)),
        }
    }

    fn config(&self) -> std::sync::MutexGuard<'_, BulkheadConfig> {
        self.config
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Changes the limits at run time. More places are usable at once; fewer places are taken
    /// back as calls in flight finish (none is interrupted).
    ///
    /// ```
    /// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 2, ..BulkheadConfig::default() });
    /// bulkhead.reconfigure(BulkheadConfig { max_concurrent: 4, ..BulkheadConfig::default() });
    /// assert_eq!(bulkhead.available(), 4);
    /// bulkhead.reconfigure(BulkheadConfig { max_concurrent: 1, ..BulkheadConfig::default() });
    /// tokio::task::yield_now().await; // places are taken back by a task
    /// assert_eq!(bulkhead.available(), 1);
    /// # }
    /// ```
    pub fn reconfigure(&self, new: BulkheadConfig) {
        let old = std::mem::replace(&mut *self.config(), new);
        if new.max_concurrent > old.max_concurrent {
            self.places
                .add_permits((new.max_concurrent - old.max_concurrent) as usize);
        } else if new.max_concurrent < old.max_concurrent {
            let surplus = old.max_concurrent - new.max_concurrent;
            let places = self.places.clone();
            tokio::spawn(async move {
                if let Ok(taken) = places.acquire_many_owned(surplus).await {
                    taken.forget();
                }
            });
        }
    }

    /// Takes a place, waiting in line if there is room in it; the place is given back when the
    /// returned permit drops.
    ///
    /// ```
    /// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 2, ..BulkheadConfig::default() });
    /// let place = bulkhead.acquire().await.unwrap();
    /// assert_eq!(bulkhead.available(), 1);
    /// drop(place); // the place is given back
    /// assert_eq!(bulkhead.available(), 2);
    /// # }
    /// ```
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, BulkheadFull> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let (max_waiting, max_wait_ms) = {
            let config = self.config();
            (config.max_waiting, config.max_wait_ms)
        };
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        if ahead >= max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(BulkheadFull::QueueFull(ahead));
        }
        let wait = Duration::from_millis(max_wait_ms);
        let permit = tokio::time::timeout(wait, self.places.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it as a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(BulkheadFull::Timeout(wait)),
        }
    }

    /// Places free now.
    ///
    /// ```
    /// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 2, ..BulkheadConfig::default() });
    /// let (_a, _b) = (bulkhead.acquire().await.unwrap(), bulkhead.acquire().await.unwrap());
    /// assert_eq!(bulkhead.available(), 0);
    /// # }
    /// ```
    pub fn available(&self) -> usize {
        self.places.available_permits()
    }
}

/// An error of a service behind a bulkhead.
///
/// ```
/// use flotilla_resilience::bulkhead::{BulkheadConfig, BulkheadError, BulkheadFull, BulkheadLayer};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let no_room = BulkheadConfig { max_concurrent: 0, max_waiting: 0, max_wait_ms: 0 };
/// let service = BulkheadLayer::new(no_room)
///     .layer(tower::service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
/// let error = service.oneshot(1).await.unwrap_err();
/// assert!(matches!(error, BulkheadError::Full(BulkheadFull::QueueFull(0))));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum BulkheadError<E> {
    /// The bulkhead refused the call; the service was not called.
    #[error(transparent)]
    Full(BulkheadFull),
    /// The service failed.
    #[error(transparent)]
    Inner(E),
}

/// Puts a [`Bulkhead`] in front of a service.
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use flotilla_resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = BulkheadLayer::new(BulkheadConfig { max_concurrent: 1, max_waiting: 0, max_wait_ms: 0 });
/// let slow = layer.layer(tower::service_fn(|_: ()| async {
///     tokio::time::sleep(Duration::from_secs(1)).await;
///     Ok::<_, Infallible>(())
/// }));
/// let fast = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, Infallible>(()) }));
/// let call = tokio::spawn(slow.oneshot(()));
/// tokio::task::yield_now().await;
/// assert!(fast.oneshot(()).await.is_err()); // services of one layer share its places
/// assert!(call.await.unwrap().is_ok());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer with a new bulkhead.
    ///
    /// ```
    /// use flotilla_resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
    /// use tower::{Layer, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let service = BulkheadLayer::new(BulkheadConfig { max_concurrent: 2, ..BulkheadConfig::default() })
    ///     .layer(tower::service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n * 2) }));
    /// assert_eq!(service.oneshot(21).await.unwrap(), 42);
    /// # }
    /// ```
    pub fn new(config: BulkheadConfig) -> Self {
        Self::shared(Bulkhead::new(config))
    }

    /// A layer sharing `bulkhead` with others.
    ///
    /// ```
    /// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
    /// use tower::{Layer, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 1, max_waiting: 0, max_wait_ms: 0 });
    /// let service = BulkheadLayer::shared(bulkhead.clone())
    ///     .layer(tower::service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n) }));
    /// let place = bulkhead.acquire().await.unwrap(); // taken outside the service
    /// assert!(service.clone().oneshot(1).await.is_err());
    /// drop(place);
    /// assert_eq!(service.oneshot(2).await.unwrap(), 2);
    /// # }
    /// ```
    pub fn shared(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
        }
    }
}

/// A service behind a bulkhead (see [`BulkheadLayer`]).
///
/// ```
/// use flotilla_resilience::bulkhead::{BulkheadConfig, BulkheadError, BulkheadLayer};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let service = BulkheadLayer::new(BulkheadConfig::default()).layer(tower::service_fn(|n: u32| async move {
///     if n == 0 { Err(std::io::Error::other("zero")) } else { Ok(n) }
/// }));
/// assert_eq!(service.clone().oneshot(3).await.unwrap(), 3);
/// assert!(matches!(service.oneshot(0).await, Err(BulkheadError::Inner(_)))); // the service's own error
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Request> Service<Request> for BulkheadService<S>
where
    S: Service<Request> + Clone + Send + 'static,
    S::Future: Send,
    Request: Send + 'static,
{
    type Response = S::Response;
    type Error = BulkheadError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per call, once a place is held.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let bulkhead = self.bulkhead.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let _place = bulkhead.acquire().await.map_err(BulkheadError::Full)?;
            inner.oneshot(request).await.map_err(BulkheadError::Inner)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn places_are_bounded_and_the_line_too() {
        let bulkhead = Bulkhead::new(BulkheadConfig {
            max_concurrent: 2,
            max_waiting: 1,
            max_wait_ms: 100,
        });
        let a = bulkhead.acquire().await.expect("first place");
        let _b = bulkhead.acquire().await.expect("second place");
        // A third waits in line; a fourth finds the line full.
        let waiter = {
            let bulkhead = bulkhead.clone();
            tokio::spawn(async move { bulkhead.acquire().await.map(drop) })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            bulkhead.acquire().await.map(drop),
            Err(BulkheadFull::QueueFull(1))
        );
        // A place frees up in time for the one in line.
        drop(a);
        assert_eq!(waiter.await.expect("task"), Ok(()));
    }

    #[tokio::test]
    async fn places_can_be_added_and_taken_back_at_run_time() {
        let bulkhead = Bulkhead::new(BulkheadConfig {
            max_concurrent: 1,
            max_waiting: 0,
            max_wait_ms: 10,
        });
        let first = bulkhead.acquire().await.expect("place");
        bulkhead.reconfigure(BulkheadConfig {
            max_concurrent: 2,
            max_waiting: 0,
            max_wait_ms: 10,
        });
        let second = bulkhead.acquire().await.expect("a place added at run time");
        bulkhead.reconfigure(BulkheadConfig {
            max_concurrent: 1,
            max_waiting: 0,
            max_wait_ms: 10,
        });
        // Both calls in flight go on; the surplus place is taken back once one of them ends.
        drop(first);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            bulkhead.acquire().await.is_err(),
            "back to one place, held by the second call"
        );
        drop(second);
        assert!(bulkhead.acquire().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_after_max_wait() {
        let bulkhead = Bulkhead::new(BulkheadConfig {
            max_concurrent: 1,
            max_waiting: 4,
            max_wait_ms: 100,
        });
        let _held = bulkhead.acquire().await.expect("place");
        let started = tokio::time::Instant::now();
        assert_eq!(
            bulkhead.acquire().await.map(drop),
            Err(BulkheadFull::Timeout(Duration::from_millis(100)))
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn the_layer_never_runs_more_than_the_places() {
        let running = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let service = tower::ServiceBuilder::new()
            .layer(BulkheadLayer::new(BulkheadConfig {
                max_concurrent: 3,
                max_waiting: 100,
                max_wait_ms: 10_000,
            }))
            .service_fn({
                let (running, most) = (running.clone(), most.clone());
                move |_: ()| {
                    let (running, most) = (running.clone(), most.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(())
                    }
                }
            });
        let calls: Vec<_> = (0..30)
            .map(|_| tokio::spawn(service.clone().oneshot(())))
            .collect();
        for call in calls {
            call.await.expect("task").expect("served");
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }
}
