//! Rate limiter: a token bucket per key (a client, a route, an API key).
//!
//! Each key's bucket holds up to `burst` tokens and refills at `per_second`; a call takes one
//! token or is refused with the time until the next one ([`RateLimiter::take`] also says what
//! is left, for a server's `RateLimit` header). Buckets live in memory (one process); the
//! gateway's limits shared by several instances run the same bucket in Redis
//! (`flotilla_gateway::ratelimit`), with this limiter as their fallback.
//!
//! A configuration is checked before use ([`RateLimitConfig::validate`]): a rate outside
//! [`MIN_PER_SECOND`]..=[`MAX_PER_SECOND`] or a burst of 0 is refused with a
//! [`RateLimitConfigError`] naming the field.
//!
//! At most [`MAX_KEYS`] keys are tracked at once. When a new key comes at the cap, the limiter
//! first forgets the buckets that have refilled (a forgotten key starts again with a full bucket:
//! nothing is lost); if that does not free a tenth of the cap, it forgets the least recently used
//! buckets down to nine tenths of it (those keys start again with a full burst: a little
//! leniency, the price of bounded memory — nginx's `limit_req` also drops its least recently used
//! states when its zone is full). New keys are never refused for lack of room: a flood of keys
//! cannot lock out the callers that come after it.
//!
//! ```
//! use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
//! let limiter = RateLimiter::new(RateLimitConfig { per_second: 10.0, burst: 2 }).unwrap();
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

/// Rate limit parameters. Check them with [`RateLimitConfig::validate`] (the limiter does).
///
/// ```
/// use flotilla_resilience::ratelimit::RateLimitConfig;
/// let config: RateLimitConfig = serde_json::from_str(r#"{ "per_second": 5.0 }"#).unwrap();
/// assert_eq!(config, RateLimitConfig { per_second: 5.0, burst: 100 });
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained rate, in calls per second, from [`MIN_PER_SECOND`] to [`MAX_PER_SECOND`].
    /// Default 100.
    pub per_second: f64,
    /// Calls allowed at once after a quiet time; at least 1. Default 100.
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

/// The lowest rate accepted: one call every 1 000 000 s (about 11.6 days). Slower rates would
/// make the wait before the next token meaningless (and, near zero, beyond what a [`Duration`]
/// holds).
///
/// ```
/// use flotilla_resilience::ratelimit::{MIN_PER_SECOND, RateLimitConfig};
/// let hourly = RateLimitConfig { per_second: 1.0 / 3_600.0, burst: 1 };
/// assert!(hourly.per_second >= MIN_PER_SECOND);
/// assert!(hourly.validate().is_ok());
/// ```
pub const MIN_PER_SECOND: f64 = 1e-6;

/// The highest rate accepted: a billion calls per second, beyond what one process serves.
///
/// ```
/// use flotilla_resilience::ratelimit::{MAX_PER_SECOND, RateLimitConfig};
/// let config = RateLimitConfig { per_second: MAX_PER_SECOND * 2.0, burst: 1 };
/// assert_eq!(config.validate().unwrap_err().field, "per_second");
/// ```
pub const MAX_PER_SECOND: f64 = 1e9;

/// A rate limit configuration that cannot work; names the field.
///
/// ```
/// use flotilla_resilience::ratelimit::RateLimitConfig;
/// let error = RateLimitConfig { per_second: 0.0, burst: 10 }.validate().unwrap_err();
/// assert_eq!(error.field, "per_second");
/// assert_eq!(
///     error.to_string(),
///     "invalid rate limit setting `per_second`: must be a number from 1e-6 to 1e9 (calls per second)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit setting `{field}`: {reason}")]
pub struct RateLimitConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl RateLimitConfig {
    /// Checks the values: `per_second` a number from [`MIN_PER_SECOND`] to [`MAX_PER_SECOND`]
    /// (not NaN, not infinite), `burst` at least 1.
    ///
    /// ```
    /// use flotilla_resilience::ratelimit::RateLimitConfig;
    /// assert!(RateLimitConfig::default().validate().is_ok());
    /// assert_eq!(RateLimitConfig { per_second: f64::NAN, burst: 1 }.validate().unwrap_err().field, "per_second");
    /// assert_eq!(RateLimitConfig { per_second: 1.0, burst: 0 }.validate().unwrap_err().field, "burst");
    /// ```
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        let fail = |field, reason| Err(RateLimitConfigError { field, reason });
        // Written so that NaN fails too.
        if !(self.per_second >= MIN_PER_SECOND && self.per_second <= MAX_PER_SECOND) {
            return fail(
                "per_second",
                "must be a number from 1e-6 to 1e9 (calls per second)",
            );
        }
        if self.burst == 0 {
            return fail("burst", "must be at least 1");
        }
        Ok(())
    }
}

/// The limit was reached.
///
/// ```
/// use std::time::Duration;
/// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter}};
/// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 4.0, burst: 1 }, Clock::manual()).unwrap();
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

/// Most keys tracked at once (see the [module](self) on what happens at the cap).
///
/// ```
/// use flotilla_resilience::ratelimit::{MAX_KEYS, RateLimitConfig, RateLimiter};
/// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 1 }).unwrap();
/// for key in 0..MAX_KEYS + 1 {
///     assert!(limiter.check(&key).is_ok()); // a new key is never refused for lack of room
/// }
/// ```
pub const MAX_KEYS: usize = 100_000;

/// Buckets tracked after making room at the cap: sweeping the map costs one pass over it, paid
/// once per `MAX_KEYS - ROOM_MADE` new keys rather than for each.
const ROOM_MADE: usize = MAX_KEYS - MAX_KEYS / 10;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: u64,
}

impl Bucket {
    /// Whether the bucket has refilled by `now`: forgetting it then loses nothing.
    fn full(&self, now: u64, rate: f64, burst: f64) -> bool {
        let elapsed = now.saturating_sub(self.updated) as f64 / 1e9;
        self.tokens + elapsed * rate >= burst
    }
}

/// Brings `buckets` down to [`ROOM_MADE`]: the full buckets first, then the least recently used.
fn make_room<K>(buckets: &mut HashMap<K, Bucket>, now: u64, rate: f64, burst: f64) {
    buckets.retain(|_, bucket| !bucket.full(now, rate, burst));
    let Some(excess) = buckets.len().checked_sub(ROOM_MADE).filter(|&n| n > 0) else {
        return;
    };
    let mut updated: Vec<u64> = buckets.values().map(|bucket| bucket.updated).collect();
    // The `excess` oldest uses are those before `cutoff`, and some of those at `cutoff`.
    let (older, &mut cutoff, _) = updated.select_nth_unstable(excess - 1);
    let mut at_cutoff = excess - older.iter().filter(|&&at| at < cutoff).count();
    buckets.retain(|_, bucket| {
        if bucket.updated < cutoff {
            false
        } else if bucket.updated == cutoff && at_cutoff > 0 {
            at_cutoff -= 1;
            false
        } else {
            true
        }
    });
}

/// A token bucket per key, cheap to clone (clones share buckets).
///
/// ```
/// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
/// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 1 }).unwrap();
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
    /// A limiter on the system clock; fails if `config` does not
    /// [validate](RateLimitConfig::validate).
    ///
    /// ```
    /// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
    /// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 3 }).unwrap();
    /// for _ in 0..3 {
    ///     assert!(limiter.check(&42).is_ok());
    /// }
    /// assert!(limiter.check(&42).is_err());
    /// assert!(RateLimiter::<u32>::new(RateLimitConfig { per_second: -1.0, burst: 3 }).is_err());
    /// ```
    pub fn new(config: RateLimitConfig) -> Result<Self, RateLimitConfigError> {
        Self::with_clock(config, Clock::system())
    }

    /// A limiter reading `clock`; fails if `config` does not
    /// [validate](RateLimitConfig::validate).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter}};
    /// let clock = Clock::manual();
    /// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 2.0, burst: 1 }, clock.clone()).unwrap();
    /// assert!(limiter.check(&"alice").is_ok());
    /// assert!(limiter.check(&"alice").is_err());
    /// clock.advance(Duration::from_millis(500)); // one token at 2 per second
    /// assert!(limiter.check(&"alice").is_ok());
    /// ```
    pub fn with_clock(config: RateLimitConfig, clock: Clock) -> Result<Self, RateLimitConfigError> {
        config.validate()?;
        Ok(Self {
            config: Arc::new(RwLock::new(config)),
            clock,
            buckets: Arc::default(),
        })
    }

    /// Changes the rate and burst at run time; buckets keep their tokens (capped at the new
    /// burst on their next use). An invalid `config` is refused and the one in force kept.
    ///
    /// ```
    /// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter}};
    /// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 1.0, burst: 10 }, Clock::manual()).unwrap();
    /// limiter.check(&"alice").unwrap(); // 9 tokens left
    /// limiter.reconfigure(RateLimitConfig { per_second: 1.0, burst: 2 }).unwrap();
    /// assert!(limiter.check(&"alice").is_ok()); // capped at 2, one taken
    /// assert!(limiter.check(&"alice").is_ok());
    /// assert!(limiter.check(&"alice").is_err());
    /// assert!(limiter.reconfigure(RateLimitConfig { per_second: f64::NAN, burst: 2 }).is_err());
    /// assert_eq!(limiter.config().per_second, 1.0); // unchanged
    /// ```
    pub fn reconfigure(&self, config: RateLimitConfig) -> Result<(), RateLimitConfigError> {
        config.validate()?;
        *self
            .config
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = config;
        Ok(())
    }

    /// The configuration in force.
    ///
    /// ```
    /// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimiter};
    /// let limiter: RateLimiter<String> = RateLimiter::new(RateLimitConfig::default()).unwrap();
    /// limiter.reconfigure(RateLimitConfig { per_second: 5.0, burst: 5 }).unwrap();
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
    /// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 4.0, burst: 1 }, clock.clone()).unwrap();
    /// assert!(limiter.check(&"alice").is_ok());
    /// clock.advance(Duration::from_millis(125)); // half a token back
    /// assert_eq!(limiter.check(&"alice").unwrap_err().retry_after, Duration::from_millis(125));
    /// ```
    pub fn check(&self, key: &K) -> Result<(), RateLimited> {
        self.take(key).map(|_| ())
    }

    /// [`RateLimiter::check`], saying on success what is left of the bucket: what a server
    /// tells its client (the `RateLimit` header field).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::{Clock, ratelimit::{RateLimitConfig, RateLimiter, Remaining}};
    /// let clock = Clock::manual();
    /// let limiter = RateLimiter::with_clock(RateLimitConfig { per_second: 2.0, burst: 3 }, clock.clone()).unwrap();
    /// let left = limiter.take(&"alice").unwrap();
    /// assert_eq!(left, Remaining { tokens: 2, next_token: Duration::from_millis(500) });
    /// clock.advance(Duration::from_millis(250));
    /// // 2.5 tokens before this call, 1.5 after: the next whole one in 250 ms.
    /// assert_eq!(limiter.take(&"alice").unwrap(), Remaining { tokens: 1, next_token: Duration::from_millis(250) });
    /// ```
    pub fn take(&self, key: &K) -> Result<Remaining, RateLimited> {
        let now = self.clock.now();
        let config = self.config();
        // The configuration was validated; these guards only keep the arithmetic sane.
        let burst = f64::from(config.burst.max(1));
        let rate = config.per_second.max(f64::MIN_POSITIVE);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // The key is cloned only for a new bucket (a key may own an allocation).
        let bucket = match buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => {
                if buckets.len() >= MAX_KEYS {
                    make_room(&mut buckets, now, rate, burst);
                }
                buckets.entry(key.clone()).or_insert(Bucket {
                    tokens: burst,
                    updated: now,
                })
            }
        };
        let elapsed = now.saturating_sub(bucket.updated) as f64 / 1e9;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        // Saturating: a wait beyond what a `Duration` holds (or not a number) is the longest.
        let wait =
            |tokens: f64| Duration::try_from_secs_f64(tokens / rate).unwrap_or(Duration::MAX);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let tokens = bucket.tokens;
            let next_token = if tokens >= burst {
                Duration::ZERO
            } else {
                wait(tokens.floor() + 1.0 - tokens)
            };
            Ok(Remaining {
                // At most the burst, a `u32`.
                tokens: tokens.floor() as u32,
                next_token,
            })
        } else {
            Err(RateLimited {
                retry_after: wait(1.0 - bucket.tokens),
            })
        }
    }
}

/// What is left of a bucket after a call it let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    /// Whole tokens left: the calls allowed at once from now.
    pub tokens: u32,
    /// When the bucket gains its next whole token; zero when it is full.
    pub next_token: Duration,
}

/// An error of a service behind a rate limiter.
///
/// ```
/// use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimitError, RateLimitLayer, RateLimiter};
/// use tower::{Layer, ServiceExt};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 1 }).unwrap();
/// let service = RateLimitLayer::new(limiter, |_: &u32| "everyone")
///     .layer(tower::service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }));
/// assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
/// assert!(matches!(service.oneshot(2).await, Err(RateLimitError::Limited(_))));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError<E> {
    /// The caller is over its limit; the service was not called. (Its [`RateLimited`] is also
    /// the error's source, so that a retry policy finds it in a boxed error.)
    #[error("{0}")]
    Limited(#[source] RateLimited),
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
/// let limiter: RateLimiter<String> = RateLimiter::new(RateLimitConfig { per_second: 50.0, burst: 10 }).unwrap();
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
    /// let limiter = RateLimiter::new(RateLimitConfig { per_second: 1.0, burst: 1 }).unwrap();
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
/// let limiter = RateLimiter::new(RateLimitConfig::default()).unwrap();
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

    /// A limiter of `per_second` and `burst` on a manual clock, and the clock.
    fn on_manual_clock<K: Hash + Eq + Clone>(
        per_second: f64,
        burst: u32,
    ) -> (Clock, RateLimiter<K>) {
        let clock = Clock::manual();
        let limiter = RateLimiter::with_clock(RateLimitConfig { per_second, burst }, clock.clone())
            .expect("valid");
        (clock, limiter)
    }

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_the_burst() {
        let (clock, limiter) = on_manual_clock(4.0, 2);
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
        let (clock, limiter) = on_manual_clock(1.0, 1);
        let service = RateLimitLayer::new(limiter.clone(), |(client, _): &(&'static str, u32)| {
            *client
        })
        .layer(tower::service_fn(
            |(_, n): (&'static str, u32)| async move { Ok::<_, std::convert::Infallible>(n) },
        ));
        let call = |client, n| service.clone().oneshot((client, n));
        assert_eq!(call("a", 1).await.expect("within the limit"), 1);
        let refused = call("a", 2).await.expect_err("over the limit");
        assert!(matches!(refused, RateLimitError::Limited(_)));
        assert_eq!(call("b", 3).await.expect("another caller"), 3);
        // Raised at run time: the new burst applies as the bucket refills.
        limiter
            .reconfigure(RateLimitConfig {
                per_second: 100.0,
                burst: 5,
            })
            .expect("valid");
        clock.advance(Duration::from_secs(1));
        for n in 0..5 {
            assert_eq!(call("a", n).await.expect("new burst"), n);
        }
        assert!(call("a", 9).await.is_err());
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let (clock, limiter) = on_manual_clock(50.0, 5);
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

    /// A limiter on `config` as is, bypassing validation (as a future bug might).
    fn unchecked(config: RateLimitConfig) -> RateLimiter<u32> {
        RateLimiter {
            config: Arc::new(RwLock::new(config)),
            clock: Clock::manual(),
            buckets: Arc::default(),
        }
    }

    #[test]
    fn rates_and_bursts_that_cannot_work_are_refused() {
        for per_second in [
            0.0,
            -0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e-30,
            MIN_PER_SECOND / 2.0,
            MAX_PER_SECOND * 2.0,
        ] {
            let config = RateLimitConfig {
                per_second,
                burst: 1,
            };
            let error = config.validate().expect_err("refused");
            assert_eq!(error.field, "per_second", "{per_second}");
            assert!(RateLimiter::<u32>::new(config).is_err(), "{per_second}");
            assert!(
                RateLimiter::<u32>::with_clock(config, Clock::manual()).is_err(),
                "{per_second}"
            );
        }
        let no_burst = RateLimitConfig {
            per_second: 1.0,
            burst: 0,
        };
        assert_eq!(no_burst.validate().expect_err("refused").field, "burst");
        for per_second in [MIN_PER_SECOND, 1.0, MAX_PER_SECOND] {
            let config = RateLimitConfig {
                per_second,
                burst: 1,
            };
            assert_eq!(config.validate(), Ok(()), "{per_second}");
        }
    }

    #[test]
    fn an_invalid_reconfiguration_is_refused_and_the_old_one_kept() {
        let (_, limiter) = on_manual_clock::<u32>(2.0, 1);
        let error = limiter
            .reconfigure(RateLimitConfig {
                per_second: f64::NAN,
                burst: 1,
            })
            .expect_err("refused");
        assert_eq!(error.field, "per_second");
        assert_eq!(limiter.config().per_second, 2.0);
        assert!(limiter.check(&1).is_ok());
        assert_eq!(
            limiter.check(&1).expect_err("spent").retry_after,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn the_wait_saturates_instead_of_panicking_whatever_the_rate() {
        for per_second in [0.0, -1.0, f64::NAN, 1e-30, f64::MIN_POSITIVE] {
            let limiter = unchecked(RateLimitConfig {
                per_second,
                burst: 1,
            });
            assert!(limiter.check(&7).is_ok(), "the first token");
            let limited = limiter.check(&7).expect_err("no token left");
            assert_eq!(limited.retry_after, Duration::MAX, "{per_second}");
        }
        // An infinite rate refills at once: no wait, and no panic either.
        let limiter = unchecked(RateLimitConfig {
            per_second: f64::INFINITY,
            burst: 1,
        });
        for _ in 0..3 {
            let _ = limiter.check(&7);
        }
    }

    #[test]
    fn the_number_of_keys_is_bounded_even_when_every_bucket_is_in_use() {
        let (clock, limiter) = on_manual_clock(1.0, 10);
        // Every key takes a token and keeps a bucket that is not full.
        let keys = MAX_KEYS as u32 + 25_000;
        for key in 0..keys {
            assert!(limiter.check(&key).is_ok(), "a new key is never refused");
            clock.advance(Duration::from_micros(1));
        }
        let buckets = limiter.buckets.lock().expect("lock");
        assert!(buckets.len() <= MAX_KEYS, "{} keys", buckets.len());
        assert!(
            !buckets.contains_key(&0),
            "the least recently used went first"
        );
        assert!(buckets.contains_key(&(keys - 1)), "the latest stays");
        assert!(buckets.contains_key(&(keys - 5_000)));
    }

    #[test]
    fn at_the_cap_full_buckets_are_forgotten_before_buckets_in_use() {
        let (clock, limiter) = on_manual_clock(1.0, 2);
        // The least recently used key has spent its burst...
        let spender = u32::MAX;
        assert!(limiter.check(&spender).is_ok());
        assert!(limiter.check(&spender).is_ok());
        // ...then the map fills up with keys that took one token each...
        for key in 0..MAX_KEYS as u32 - 1 {
            assert!(limiter.check(&key).is_ok());
        }
        // ...which have all refilled 1.5 s later, when the spender has 1.5 tokens.
        clock.advance(Duration::from_millis(1_500));
        assert!(limiter.check(&(MAX_KEYS as u32)).is_ok(), "a new key");
        assert!(limiter.buckets.lock().expect("lock").len() <= MAX_KEYS);
        assert!(limiter.check(&spender).is_ok(), "1.5 tokens");
        assert!(
            limiter.check(&spender).is_err(),
            "the spender's bucket was kept: no fresh burst"
        );
    }
}
