//! Rate limiter: a token bucket per key (a client, a route, an API key).
//!
//! Each key's bucket holds up to `burst` tokens and refills at `per_second`; a call takes one
//! token or is refused with the time until the next one. Buckets live in memory (one process);
//! a cluster-wide limit (Redis) comes with the gateway's quotas.
//!
//! ```
//! use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
//! let limiter = RateLimiter::new(RateLimitConfig { per_second: 10.0, burst: 2 });
//! assert!(limiter.check(&"alice").is_ok());
//! assert!(limiter.check(&"alice").is_ok());
//! assert!(limiter.check(&"alice").is_err()); // burst spent
//! assert!(limiter.check(&"bob").is_ok());    // each key has its own bucket
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

use crate::Clock;

/// Rate limit parameters.
///
/// ```
/// use flotilla_resilience::ratelimit::RateLimitConfig;
/// let config: RateLimitConfig = serde_json::from_str(r#"{ "per_second": 5.0 }"#).unwrap();
/// assert_eq!(config, RateLimitConfig { per_second: 5.0, burst: 100 });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained rate, in calls per second. Default 100.
    pub per_second: f64,
    /// Calls allowed at once after a quiet time. Default 100.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 100.0,
            burst: 100,
        }
    }
}

/// The limit was reached.
///
/// ```
/// use std::time::Duration;
/// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter}};
/// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 4.0, burst: 1 }, Clock::manual());
/// limiter.check(&"alice").unwrap();
/// let limited = limiter.check(&"alice").unwrap_err();
/// assert_eq!(limited.retry_after, Duration::from_millis(250)); // a token every 250 ms
/// assert_eq!(limited.to_string(), "rate limit reached; retry after 250ms");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limit reached; retry after {retry_after:?}")]
pub struct RateLimited {
    /// When the next token arrives.
    pub retry_after: Duration,
}

/// Most keys tracked at once; beyond, full (idle) buckets are forgotten.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: u64,
}

/// A token bucket per key, cheap to clone (clones share buckets).
///
/// ```
/// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
/// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 1 });
/// let clone = limiter.clone();
/// assert!(limiter.check(&"alice").is_ok());
/// assert!(clone.check(&"alice").is_err()); // the same bucket
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    config: Arc<RwLock<RateLimitConfig>>,
    clock: Clock,
    buckets: Arc<Mutex<HashMap<K, Bucket>>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter on the system clock.
    ///
    /// ```
    /// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
    /// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 3 });
    /// for _ in 0..3 {
    ///     assert!(limiter.check(&42).is_ok());
    /// }
    /// assert!(limiter.check(&42).is_err());
    /// ```
    pub fn new(config: RateLimitConfig) -> Self {
        Self::with_clock(config, Clock::system())
    }

    /// A limiter reading `clock`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter}};
    /// let clock = Clock::manual();
    /// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 2.0, burst: 1 }, clock.clone());
    /// assert!(limiter.check(&"alice").is_ok());
    /// assert!(limiter.check(&"alice").is_err());
    /// clock.advance(Duration::from_millis(500)); // one token at 2 per second
    /// assert!(limiter.check(&"alice").is_ok());
    /// ```
    pub fn with_clock(config: RateLimitConfig, clock: Clock) -> Self {
        Self {
            config: Arc::new(RwLock::new(config)),
            clock,
            buckets: Arc::default(),
        }
    }

    /// Changes the rate and burst at run time; buckets keep their tokens (capped at the new
    /// burst on their next use).
    ///
    /// ```
    /// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter}};
    /// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 1.0, burst: 10 }, Clock::manual());
    /// limiter.check(&"alice").unwrap(); // 9 tokens left
    /// limiter.reconfigure(RateLimitConfig { per_second: 1.0, burst: 2 });
    /// assert!(limiter.check(&"alice").is_ok()); // capped at 2, one taken
    /// assert!(limiter.check(&"alice").is_ok());
    /// assert!(limiter.check(&"alice").is_err());
    /// ```
    pub fn reconfigure(&self, config: RateLimitConfig) {
        *self
            .config
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = config;
    }

    /// The configuration in force.
    ///
    /// ```
    /// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
    /// let limiter: RateLimiter<String> = RateLimiter::new(RateLimitConfig::default());
    /// limiter.reconfigure(RateLimitConfig { per_second: 5.0, burst: 5 });
    /// assert_eq!(limiter.config(), RateLimitConfig { per_second: 5.0, burst: 5 });
    /// ```
    pub fn config(&self) -> RateLimitConfig {
        *self
            .config
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes a token from `key`'s bucket, or says when the next one comes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter}};
    /// let clock = Clock::manual();
    /// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 4.0, burst: 1 }, clock.clone());
    /// assert!(limiter.check(&"alice").is_ok());
    /// clock.advance(Duration::from_millis(125)); // half a token back
    /// assert_eq!(limiter.check(&"alice").unwrap_err().retry_after, Duration::from_millis(125));
    /// ```
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        let now = self.clock.now();
        let config = self.config();
        let burst = f64::from(config.burst.max(1));
        let rate = config.per_second.max(f64::MIN_POSITIVE);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let full_after = (burst / rate * 1e9) as u64;
            buckets.retain(|_, bucket| now.saturating_sub(bucket.updated) < full_after);
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_sub(bucket.updated) as f64 / 1e9;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(RateLimited {
                retry_after: Duration::from_secs_f64((1.0 - bucket.tokens) / rate),
            })
        }
    }
}

/// An error of a service behind a rate limiter.
///
/// ```
/// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimitError, RateLimitLayer, RateLimiter};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 1 });
/// let service = RateLimitLayer::new(limiter, |_: &u32| "everyone")
///     .layer(tower::service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
/// assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
/// assert!(matches!(service.oneshot(2).await, Err(RateLimitError::Limited(_))));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError<E> {
    /// The caller is over its limit; the service was not called.
    #[error(transparent)]
    Limited(RateLimited),
    /// The service failed.
    #[error(transparent)]
    Inner(E),
}

/// Puts a [`RateLimiter`] in front of a service; `key` names the caller of a request.
///
/// ```
/// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimitLayer, RateLimiter};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter: RateLimiter<String> = RateLimiter::new(RateLimitConfig { per_second: 50.0, burst: 10 });
/// let layer = RateLimitLayer::new(limiter, |request: &http::Request<()>| {
///     request.headers().get("x-client").and_then(|v| v.to_str().ok()).unwrap_or("anonymous").to_owned()
/// });
/// let service = layer.layer(tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>("served")
/// }));
/// let request = http::Request::builder().header("x-client", "alice").body(()).unwrap();
/// assert_eq!(service.oneshot(request).await.unwrap(), "served");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer<K, F> {
    limiter: RateLimiter<K>,
    key: F,
}

impl<K, F> RateLimitLayer<K, F> {
    /// A layer sharing `limiter`, keyed by `key`.
    ///
    /// ```
    /// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimitLayer, RateLimiter};
    /// use tower::{Layer, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 1 });
    /// let service = RateLimitLayer::new(limiter, |(client, _): &(&'static str, u32)| *client)
    ///     .layer(tower::service_fn(|(_, n): (&'static str, u32)| async move { Ok::<_, std::io::Error>(n) }));
    /// assert!(service.clone().oneshot(("alice", 1)).await.is_ok());
    /// assert!(service.clone().oneshot(("alice", 2)).await.is_err()); // alice is over her limit
    /// assert!(service.oneshot(("bob", 3)).await.is_ok()); // bob is not
    /// # }
    /// ```
    pub fn new(limiter: RateLimiter<K>, key: F) -> Self {
        Self { limiter, key }
    }
}

impl<S, K: Clone, F: Clone> Layer<S> for RateLimitLayer<K, F> {
    type Service = RateLimitService<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// A service behind a rate limiter (see [`RateLimitLayer`]).
///
/// ```
/// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimitError, RateLimitLayer, RateLimiter};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::new(RateLimitConfig::default());
/// let service = RateLimitLayer::new(limiter, |_: &u32| ())
///     .layer(tower::service_fn(|_: u32| async { Err::<u32, _>(std::io::Error::other("down")) }));
/// // Within the limit, the service is called: its own error comes back wrapped.
/// assert!(matches!(service.oneshot(1).await, Err(RateLimitError::Inner(_))));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitService<S, K, F> {
    inner: S,
    limiter: RateLimiter<K>,
    key: F,
}

impl<S, K, F, Request> Service<Request> for RateLimitService<S, K, F>
where
    S: Service<Request>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: Hash + Eq + Clone,
    F: Fn(&Request) -> K,
{
    type Response = S::Response;
    type Error = RateLimitError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RateLimitError::Inner)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.limiter.check(&(self.key)(&request)) {
            Ok(()) => {
                let future = self.inner.call(request);
                Box::pin(async move { future.await.map_err(RateLimitError::Inner) })
            }
            Err(limited) => Box::pin(std::future::ready(Err(RateLimitError::Limited(limited)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_the_burst() {
        let clock = Clock::manual();
        let limiter = RateLimiter::with_clock(
            RateLimitConfig {
                per_second: 4.0,
                burst: 2,
            },
            clock.clone(),
        );
        assert!(limiter.check(&1).is_ok());
        assert!(limiter.check(&1).is_ok());
        let refused = limiter.check(&1).expect_err("burst spent");
        assert_eq!(refused.retry_after, Duration::from_millis(250));
        clock.advance(Duration::from_millis(250));
        assert!(limiter.check(&1).is_ok(), "one token after 250 ms at 4/s");
        assert!(limiter.check(&1).is_err());
        clock.advance(Duration::from_secs(60));
        assert!(limiter.check(&1).is_ok());
        assert!(limiter.check(&1).is_ok());
        assert!(
            limiter.check(&1).is_err(),
            "a long pause refills to the burst, not beyond"
        );
    }

    #[tokio::test]
    async fn the_layer_refuses_callers_over_their_limit_and_not_the_others() {
        use tower::ServiceExt;
        let clock = Clock::manual();
        let limiter = RateLimiter::with_clock(
            RateLimitConfig {
                per_second: 1.0,
                burst: 1,
            },
            clock.clone(),
        );
        let service = RateLimitLayer::new(limiter.clone(), |(client, _): &(&'static str, u32)| {
            *client
        })
        .layer(tower::service_fn(
            |(_, n): (&'static str, u32)| async move { Ok::<_, std::convert::Infallible>(n) },
        ));
        assert_eq!(
            service
                .clone()
                .oneshot(("a", 1))
                .await
                .expect("within the limit"),
            1
        );
        let refused = service
            .clone()
            .oneshot(("a", 2))
            .await
            .expect_err("over the limit");
        assert!(matches!(refused, RateLimitError::Limited(_)));
        assert_eq!(
            service
                .clone()
                .oneshot(("b", 3))
                .await
                .expect("another caller"),
            3
        );
        // Raised at run time: the new burst applies as the bucket refills.
        limiter.reconfigure(RateLimitConfig {
            per_second: 100.0,
            burst: 5,
        });
        clock.advance(Duration::from_secs(1));
        for n in 0..5 {
            assert_eq!(
                service.clone().oneshot(("a", n)).await.expect("new burst"),
                n
            );
        }
        assert!(service.oneshot(("a", 9)).await.is_err());
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let clock = Clock::manual();
        let limiter = RateLimiter::with_clock(
            RateLimitConfig {
                per_second: 50.0,
                burst: 5,
            },
            clock.clone(),
        );
        let mut admitted = 0;
        // 10 s of calls every millisecond: 5 (burst) + 50/s × 10 s admitted.
        for _ in 0..10_000 {
            if limiter.check(&"k").is_ok() {
                admitted += 1;
            }
            clock.advance(Duration::from_millis(1));
        }
        assert!((500..=506).contains(&admitted), "{admitted}");
    }
}
