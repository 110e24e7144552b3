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
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
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
    /// Places to take back as calls in flight end, after `max_concurrent` was lowered below
    /// the calls in flight.
    owed: Arc<AtomicUsize>,
    waiting: Arc<AtomicU32>,
    config: Arc<std::sync::Mutex<BulkheadConfig>>,
}

/// A place in a [`Bulkhead`], held for the length of a call: dropping it gives the place back
/// (or, if the bulkhead was shrunk meanwhile, lets the bulkhead take it back).
///
/// ```
/// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bulkhead = Bulkhead::new(BulkheadConfig { max_concurrent: 2, ..BulkheadConfig::default() });
/// let place = bulkhead.acquire().await.unwrap();
/// assert_eq!(bulkhead.available(), 1);
/// drop(place);
/// assert_eq!(bulkhead.available(), 2);
/// # }
/// ```
#[derive(Debug)]
#[must_use = "the place is given back as soon as it is dropped"]
pub struct Place {
    permit: Option<OwnedSemaphorePermit>,
    owed: Arc<AtomicUsize>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take()
            && self
                .owed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |owed| {
                    owed.checked_sub(1)
                })
                .is_ok()
        {
            // Owed after a shrink: the place leaves the bulkhead instead of coming back.
            permit.forget();
        }
    }
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
            owed: Arc::default(),
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
    /// back at once if free, otherwise as calls in flight finish (none is interrupted). Needs no
    /// async runtime: it may be called from any thread.
    ///
    /// ```
    /// use flotilla_resilience::bulkhead::{Bulkhead, BulkheadConfig};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = |max_concurrent| BulkheadConfig { max_concurrent, ..BulkheadConfig::default() };
    /// let bulkhead = Bulkhead::new(config(2));
    /// bulkhead.reconfigure(config(4));
    /// assert_eq!(bulkhead.available(), 4);
    /// let (a, b) = (bulkhead.acquire().await.unwrap(), bulkhead.acquire().await.unwrap());
    /// bulkhead.reconfigure(config(1)); // two free places taken back at once, one still owed
    /// assert_eq!(bulkhead.available(), 0);
    /// drop(a); // taken back as the call ends
    /// assert_eq!(bulkhead.available(), 0);
    /// drop(b);
    /// assert_eq!(bulkhead.available(), 1);
    /// # }
    /// ```
    pub fn reconfigure(&self, new: BulkheadConfig) {
        // Held throughout, so that reconfigurations do not interleave.
        let mut config = self.config();
        let old = std::mem::replace(&mut *config, new);
        let (old_max, new_max) = (old.max_concurrent as usize, new.max_concurrent as usize);
        if new_max > old_max {
            let more = new_max - old_max;
            // Places still owed from an earlier shrink are forgiven first.
            let owed = self
                .owed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |owed| {
                    Some(owed.saturating_sub(more))
                })
                .unwrap_or_else(|owed| owed);
            self.places.add_permits(more - owed.min(more));
        } else if new_max < old_max {
            // Owed first, then taken from the free places: a place given back in between
            // either pays the debt on its way back or is found free here.
            self.owed.fetch_add(old_max - new_max, Ordering::SeqCst);
            self.take_back_free_places();
        }
    }

    /// Takes back, without waiting, as many free places as are owed.
    fn take_back_free_places(&self) {
        loop {
            let owed = self.owed.load(Ordering::SeqCst);
            let free = self
                .places
                .available_permits()
                .min(owed)
                .min(u32::MAX as usize);
            if free == 0 {
                return;
            }
            let taken = match self.places.try_acquire_many(free as u32) {
                Ok(taken) => taken,
                // Another caller took some meanwhile: look again.
                Err(TryAcquireError::NoPermits) => continue,
                Err(TryAcquireError::Closed) => return,
            };
            // Calls that ended meanwhile may have paid part of the debt.
            let owed = self
                .owed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |owed| {
                    Some(owed.saturating_sub(free))
                })
                .unwrap_or_else(|owed| owed);
            taken.forget();
            self.places.add_permits(free - owed.min(free));
        }
    }

    /// Takes a place, waiting in line if there is room in it; the place is given back when the
    /// returned [`Place`] drops.
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
    pub async fn acquire(&self) -> Result<Place, BulkheadFull> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(self.place(permit));
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
            Ok(Ok(permit)) => Ok(self.place(permit)),
            // The semaphore is never closed; treat it as a timeout all the same.
            Ok(Err(_)) | Err(_) => Err(BulkheadFull::Timeout(wait)),
        }
    }

    fn place(&self, permit: OwnedSemaphorePermit) -> Place {
        Place {
            permit: Some(permit),
            owed: self.owed.clone(),
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
    /// The bulkhead refused the call; the service was not called. (Its [`BulkheadFull`] is also
    /// the error's source, so that a retry policy finds it in a boxed error.)
    #[error("{0}")]
    Full(#[source] BulkheadFull),
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

    /// `max_concurrent` places, no waiting line.
    fn places(max_concurrent: u32) -> BulkheadConfig {
        BulkheadConfig {
            max_concurrent,
            max_waiting: 0,
            max_wait_ms: 10,
        }
    }

    /// `max_concurrent` places and a line of `max_waiting` calls, each waiting 100 ms at most.
    fn with_line(max_concurrent: u32, max_waiting: u32) -> Bulkhead {
        Bulkhead::new(BulkheadConfig {
            max_concurrent,
            max_waiting,
            max_wait_ms: 100,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn places_are_bounded_and_the_line_too() {
        let bulkhead = with_line(2, 1);
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
        let bulkhead = Bulkhead::new(places(1));
        let first = bulkhead.acquire().await.expect("place");
        bulkhead.reconfigure(places(2));
        let second = bulkhead.acquire().await.expect("a place added at run time");
        bulkhead.reconfigure(places(1));
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
        let bulkhead = with_line(1, 4);
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

    #[test]
    fn places_can_be_changed_without_a_runtime() {
        // A plain test thread: no tokio runtime anywhere.
        let bulkhead = Bulkhead::new(places(4));
        bulkhead.reconfigure(places(1));
        assert_eq!(
            bulkhead.available(),
            1,
            "free places are taken back at once"
        );
        bulkhead.reconfigure(places(3));
        assert_eq!(bulkhead.available(), 3);
        bulkhead.reconfigure(places(0));
        assert_eq!(bulkhead.available(), 0);
    }

    #[tokio::test]
    async fn places_in_use_are_taken_back_as_calls_end_after_a_shrink_from_another_thread() {
        let bulkhead = Bulkhead::new(places(3));
        let first = bulkhead.acquire().await.expect("place");
        let second = bulkhead.acquire().await.expect("place");
        // An operator thread, outside any runtime, lowers the limit below the calls in flight.
        let operator = bulkhead.clone();
        std::thread::spawn(move || operator.reconfigure(places(1)))
            .join()
            .expect("reconfigure does not panic outside a runtime");
        assert_eq!(bulkhead.available(), 0, "the free place was taken back");
        assert!(bulkhead.acquire().await.is_err());
        // Both calls go on; the first to end gives its place up for good.
        drop(first);
        assert_eq!(bulkhead.available(), 0);
        assert!(
            bulkhead.acquire().await.is_err(),
            "still one call in flight"
        );
        drop(second);
        assert_eq!(bulkhead.available(), 1);
        let only = bulkhead.acquire().await.expect("the one place left");
        assert!(bulkhead.acquire().await.is_err());
        drop(only);
        // Raising the limit while places are still owed forgives the debt first.
        let a = bulkhead.acquire().await.expect("place");
        bulkhead.reconfigure(places(0)); // one owed, held by `a`
        bulkhead.reconfigure(places(2)); // forgives it and adds one
        assert_eq!(bulkhead.available(), 1);
        drop(a);
        assert_eq!(bulkhead.available(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_shrinks_and_calls_never_lose_or_leak_places() {
        let bulkhead = Bulkhead::new(BulkheadConfig {
            max_concurrent: 8,
            max_waiting: 1_000,
            max_wait_ms: 10_000,
        });
        let calls: Vec<_> = (0..200)
            .map(|_| {
                let bulkhead = bulkhead.clone();
                tokio::spawn(async move {
                    let _place = bulkhead.acquire().await.expect("a place in time");
                    tokio::task::yield_now().await;
                })
            })
            .collect();
        let operator = bulkhead.clone();
        let shrinks = std::thread::spawn(move || {
            for max_concurrent in [6, 2, 7, 1, 5, 3] {
                operator.reconfigure(BulkheadConfig {
                    max_concurrent,
                    max_waiting: 1_000,
                    max_wait_ms: 10_000,
                });
                std::thread::yield_now();
            }
        });
        shrinks.join().expect("no panic");
        for call in calls {
            call.await.expect("task");
        }
        assert_eq!(
            bulkhead.available(),
            3,
            "every place back, as configured last"
        );
        assert_eq!(bulkhead.owed.load(Ordering::SeqCst), 0);
    }
}
