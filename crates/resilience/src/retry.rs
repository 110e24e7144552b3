//! Retries for HTTP calls: exponential backoff with full jitter, a maximum of attempts, a retry
//! budget, and only where a retry is safe.
//!
//! A call is retried only if all hold:
//! * it failed in a way another attempt may fix: a transport error (refused, reset, timed out)
//!   or a 502, 503 or 504 — never a 4xx, never a 500 or 501 (the server understood and refused);
//! * it was not refused by a resilience layer below the retry ([`Refusal`]): an open circuit
//!   breaker stops the retries at once, and so do a full bulkhead, a rate limit and a passed
//!   deadline of the whole call. Timeouts are told apart by type: tower's
//!   [`Elapsed`](tower::timeout::error::Elapsed), what this crate's [`timeout`](crate::timeout)
//!   layer returns, bounds one attempt (the layer sits below the retry) and is retried like any
//!   transport failure; tokio's [`Elapsed`](tokio::time::error::Elapsed), what
//!   `tokio::time::timeout` returns, is taken for the deadline of the whole call (a request's
//!   remaining time, a deadline passed down by the caller), after which another attempt is
//!   pointless. Errors are looked into through [`MaybeRefusal`]: the crate's error types,
//!   `std::io::Error` and boxed errors (tower's `BoxError`, searched along their
//!   [`source`](std::error::Error::source) chain) implement it;
//! * the request may safely be sent twice: its method is idempotent (`GET`, `HEAD`, `OPTIONS`,
//!   `PUT`, `DELETE`, `TRACE`) or it carries an `Idempotency-Key`;
//! * attempts remain (`max_attempts` counts the first one);
//! * the budget allows it: retries may add at most `budget_percent` to the calls made, plus
//!   `min_retries_per_sec` so that a quiet client can still retry. A budget keeps retries from
//!   multiplying the load on a struggling target — the retry storm of naive policies.
//!
//! The wait before attempt `n + 1` is drawn uniformly from `[0, min(max_delay, base_delay × 2ⁿ)]`
//! ("full jitter"): clients that failed together do not retry together.
//!
//! ```
//! use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
//! let policy = RetryPolicy::new(RetryConfig::default()).unwrap();
//! let layer = tower::retry::RetryLayer::new(policy);
//! # drop(layer);
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

use crate::breaker::{BreakerError, CircuitOpen, ConfigError};
use crate::bulkhead::{BulkheadError, BulkheadFull};
use crate::ratelimit::{RateLimitError, RateLimited};

/// Retry parameters.
///
/// ```
/// use flotilla_resilience::retry::RetryConfig;
/// let config: RetryConfig = serde_json::from_str(r#"{ "max_attempts": 5 }"#).unwrap();
/// assert_eq!(config, RetryConfig { max_attempts: 5, ..RetryConfig::default() });
/// assert_eq!(config.base_delay_ms, 25);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included. Default 3.
    pub max_attempts: u32,
    /// Backoff base. Default 25 ms.
    pub base_delay_ms: u64,
    /// Backoff ceiling. Default 1 000 ms.
    pub max_delay_ms: u64,
    /// Retries may add at most this percentage to the calls made, from 0 to
    /// [`MAX_BUDGET_PERCENT`]. Default 20.
    pub budget_percent: f32,
    /// Retries always allowed per second, whatever the budget; at most
    /// [`MAX_MIN_RETRIES_PER_SEC`]. Default 10.
    pub min_retries_per_sec: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay_ms: 25,
            max_delay_ms: 1_000,
            budget_percent: 20.0,
            min_retries_per_sec: 10,
        }
    }
}

/// The largest retry budget: retries may add at most a thousand times the calls made (the
/// most tower's budget takes).
///
/// ```
/// use flotilla_resilience::retry::{MAX_BUDGET_PERCENT, RetryConfig};
/// let config = RetryConfig { budget_percent: MAX_BUDGET_PERCENT * 2.0, ..RetryConfig::default() };
/// assert_eq!(config.validate().unwrap_err().field, "budget_percent");
/// ```
pub const MAX_BUDGET_PERCENT: f32 = 100_000.0;

/// The most retries allowed per second whatever the budget.
///
/// ```
/// use flotilla_resilience::retry::{MAX_MIN_RETRIES_PER_SEC, RetryConfig};
/// let config = RetryConfig { min_retries_per_sec: u32::MAX, ..RetryConfig::default() };
/// assert_eq!(config.validate().unwrap_err().field, "min_retries_per_sec");
/// assert!(RetryConfig { min_retries_per_sec: MAX_MIN_RETRIES_PER_SEC, ..RetryConfig::default() }.validate().is_ok());
/// ```
pub const MAX_MIN_RETRIES_PER_SEC: u32 = 1_000_000;

impl RetryConfig {
    /// Checks the values ([`RetryPolicy::new`] and [`RetryPolicy::reconfigure`] do).
    ///
    /// ```
    /// use flotilla_resilience::retry::RetryConfig;
    /// assert!(RetryConfig::default().validate().is_ok());
    /// let config = RetryConfig { base_delay_ms: 2_000, ..RetryConfig::default() }; // above the 1 s ceiling
    /// assert_eq!(config.validate().unwrap_err().field, "max_delay_ms");
    /// let config = RetryConfig { budget_percent: f32::NAN, ..RetryConfig::default() };
    /// assert_eq!(config.validate().unwrap_err().field, "budget_percent");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, reason| {
            Err(ConfigError {
                component: "retry",
                field,
                reason,
            })
        };
        if self.max_attempts == 0 {
            return fail(
                "max_attempts",
                "must be at least 1 (the first attempt counts)",
            );
        }
        // Written so that NaN fails too.
        if !(self.budget_percent >= 0.0 && self.budget_percent <= MAX_BUDGET_PERCENT) {
            return fail("budget_percent", "must be a number from 0 to 100 000");
        }
        if self.min_retries_per_sec > MAX_MIN_RETRIES_PER_SEC {
            return fail("min_retries_per_sec", "cannot exceed 1 000 000");
        }
        if self.max_delay_ms < self.base_delay_ms {
            return fail("max_delay_ms", "cannot be below base_delay_ms");
        }
        Ok(())
    }
}

/// The header that makes a non-idempotent request safe to retry.
///
/// ```
/// use flotilla_resilience::retry::{IDEMPOTENCY_KEY, is_safe_to_retry};
/// let request = http::Request::post("/orders").header(IDEMPOTENCY_KEY, "order-42").body(()).unwrap();
/// assert!(is_safe_to_retry(&request)); // a POST, made safe by its key
/// ```
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A tower retry [`Policy`] for HTTP requests with cloneable bodies. Clones share the budget
/// and the configuration ([`RetryPolicy::reconfigure`] changes it for all of them).
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
/// use tower::ServiceExt;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// static CALLS: AtomicU32 = AtomicU32::new(0);
/// let service = tower::ServiceBuilder::new()
///     .retry(RetryPolicy::new(RetryConfig::default()).unwrap())
///     .service_fn(|_: http::Request<()>| async {
///         let status = if CALLS.fetch_add(1, Ordering::SeqCst) == 0 { 503 } else { 200 };
///         Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap())
///     });
/// let response = service.oneshot(http::Request::get("/stock").body(()).unwrap()).await.unwrap();
/// assert_eq!(response.status(), 200);
/// assert_eq!(CALLS.load(Ordering::SeqCst), 2); // the 503 was retried
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    shared: Arc<RwLock<Shared>>,
    /// Attempts made for the current request, minus one.
    retries: u32,
}

#[derive(Debug)]
struct Shared {
    config: RetryConfig,
    budget: Arc<TpsBudget>,
}

fn budget(config: &RetryConfig) -> Arc<TpsBudget> {
    // The configuration was validated; the clamps only keep `TpsBudget::new` from panicking
    // (it asserts a percentage in 0..=1000 and a minimum below `i32::MAX`) whatever comes.
    let fraction = config.budget_percent / 100.0;
    let fraction = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1000.0)
    };
    Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        config.min_retries_per_sec.min(MAX_MIN_RETRIES_PER_SEC),
        fraction,
    ))
}

impl RetryPolicy {
    /// A policy with its own budget (kept over a 10 s window); fails if `config` does not
    /// [validate](RetryConfig::validate).
    ///
    /// ```
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let mut policy = RetryPolicy::new(RetryConfig::default()).unwrap(); // 3 attempts
    /// assert!(policy.next_wait(true, true).is_some());
    /// assert!(policy.next_wait(true, true).is_some());
    /// assert_eq!(policy.next_wait(true, true), None); // the third attempt was the last
    /// assert!(RetryPolicy::new(RetryConfig { max_attempts: 0, ..RetryConfig::default() }).is_err());
    /// ```
    pub fn new(config: RetryConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(RwLock::new(Shared {
                budget: budget(&config),
                config,
            })),
            retries: 0,
        })
    }

    /// Replaces the configuration at run time, for this policy and all its clones; calls in
    /// flight continue under the new rules. A changed budget starts afresh. An invalid
    /// `config` is refused and the one in force kept.
    ///
    /// ```
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let policy = RetryPolicy::new(RetryConfig::default()).unwrap();
    /// let mut clone = policy.clone(); // say, inside a tower RetryLayer
    /// policy.reconfigure(RetryConfig { max_attempts: 1, ..RetryConfig::default() }).unwrap();
    /// assert_eq!(clone.config().max_attempts, 1);
    /// assert_eq!(clone.next_wait(true, true), None);
    /// assert!(policy.reconfigure(RetryConfig { budget_percent: f32::NAN, ..RetryConfig::default() }).is_err());
    /// assert_eq!(policy.config().max_attempts, 1); // unchanged
    /// ```
    pub fn reconfigure(&self, config: RetryConfig) -> Result<(), ConfigError> {
        config.validate()?;
        let mut shared = self
            .shared
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if config.budget_percent != shared.config.budget_percent
            || config.min_retries_per_sec != shared.config.min_retries_per_sec
        {
            shared.budget = budget(&config);
        }
        shared.config = config;
        Ok(())
    }

    /// The configuration in force.
    ///
    /// ```
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let policy = RetryPolicy::new(RetryConfig { max_attempts: 4, ..RetryConfig::default() }).unwrap();
    /// assert_eq!(policy.config().max_attempts, 4);
    /// ```
    pub fn config(&self) -> RetryConfig {
        self.shared
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .config
            .clone()
    }

    /// Decides after a failed or successful attempt: the wait before the next attempt, or `None`
    /// to stop. `safe`: the request may be sent twice; `retryable`: the failure is one another
    /// attempt may fix. Counts the attempt and draws on the budget.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let mut policy = RetryPolicy::new(RetryConfig::default()).unwrap();
    /// assert_eq!(policy.next_wait(false, true), None); // not safe to send twice
    /// assert_eq!(policy.next_wait(true, false), None); // another attempt would not help
    /// let wait = policy.next_wait(true, true).unwrap();
    /// assert!(wait <= Duration::from_millis(25)); // the first wait: at most base_delay_ms
    /// ```
    pub fn next_wait(&mut self, safe: bool, retryable: bool) -> Option<Duration> {
        let (max_attempts, budget) = {
            let shared = self
                .shared
                .read()
                .unwrap_or_else(|poison| poison.into_inner());
            (shared.config.max_attempts, shared.budget.clone())
        };
        if self.retries == 0 {
            // Every request earns the budget its share, whatever happens to it.
            budget.deposit();
        }
        let allowed = retryable && safe && self.retries + 1 < max_attempts && budget.withdraw();
        if !allowed {
            return None;
        }
        let wait = self.backoff(self.retries);
        self.retries += 1;
        Some(wait)
    }

    /// The wait before the next attempt, after `retries` retries (full jitter).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let policy = RetryPolicy::new(RetryConfig { base_delay_ms: 10, max_delay_ms: 100, ..RetryConfig::default() }).unwrap();
    /// for _ in 0..100 {
    ///     assert!(policy.backoff(2) <= Duration::from_millis(40)); // 10 ms × 2²
    ///     assert!(policy.backoff(9) <= Duration::from_millis(100)); // capped
    /// }
    /// ```
    pub fn backoff(&self, retries: u32) -> Duration {
        let (base, max) = {
            let shared = self
                .shared
                .read()
                .unwrap_or_else(|poison| poison.into_inner());
            (shared.config.base_delay_ms, shared.config.max_delay_ms)
        };
        let ceiling = base
            .saturating_mul(1u64.checked_shl(retries).unwrap_or(u64::MAX))
            .min(max);
        Duration::from_millis(rand::random_range(0..=ceiling))
    }
}

/// Whether a request may be sent twice without changing the outcome.
///
/// ```
/// use flotilla_resilience::retry::is_safe_to_retry;
/// assert!(is_safe_to_retry(&http::Request::put("/stock/7").body(()).unwrap()));
/// assert!(!is_safe_to_retry(&http::Request::post("/orders").body(()).unwrap()));
/// ```
pub fn is_safe_to_retry<B>(request: &Request<B>) -> bool {
    is_safe(request.method(), request.headers())
}

/// Whether a request with this method and these headers may be sent twice: an idempotent
/// method, or an `Idempotency-Key`.
///
/// ```
/// use flotilla_resilience::retry::is_safe;
/// let mut headers = http::HeaderMap::new();
/// assert!(is_safe(&http::Method::GET, &headers));
/// assert!(!is_safe(&http::Method::POST, &headers));
/// headers.insert("idempotency-key", "order-42".parse().unwrap());
/// assert!(is_safe(&http::Method::POST, &headers));
/// ```
pub fn is_safe(method: &Method, headers: &http::HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || headers.contains_key(IDEMPOTENCY_KEY)
}

/// Whether a result is a failure another attempt may fix: a retryable status, or an error that
/// is not a [`Refusal`] by a resilience layer.
///
/// ```
/// use flotilla_resilience::retry::is_retryable;
/// use flotilla_resilience::breaker::{BreakerConfig, BreakerError, CircuitBreaker, Forced};
/// let answer = |status: u16| -> Result<http::Response<()>, std::io::Error> {
///     Ok(http::Response::builder().status(status).body(()).unwrap())
/// };
/// assert!(is_retryable(&answer(503)));
/// assert!(!is_retryable(&answer(500)));
/// assert!(!is_retryable(&answer(429)));
/// let refused = Err::<http::Response<()>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert!(is_retryable(&refused)); // a transport error
/// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
/// breaker.force(Some(Forced::Open));
/// let open = Err::<http::Response<()>, BreakerError<std::io::Error>>(BreakerError::Open(breaker.try_acquire().unwrap_err()));
/// assert!(!is_retryable(&open)); // the breaker refused: retrying would only add load
/// ```
pub fn is_retryable<B, E: MaybeRefusal>(result: &Result<Response<B>, E>) -> bool {
    match result {
        Ok(response) => is_retryable_status(response.status()),
        Err(error) => error.refusal().is_none(),
    }
}

/// A refusal by a resilience layer below the retry, or the end of the time given to the whole
/// call: another attempt now would be refused again, add load where it hurts, or come too late.
/// Never retried.
///
/// ```
/// use flotilla_resilience::retry::{MaybeRefusal, Refusal};
/// use flotilla_resilience::bulkhead::BulkheadFull;
/// let full: tower::BoxError = Box::new(BulkheadFull::QueueFull(64));
/// assert_eq!(full.refusal(), Some(Refusal::BulkheadFull));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// An open circuit breaker ([`CircuitOpen`]): retries stop at once.
    CircuitOpen,
    /// A full bulkhead ([`BulkheadFull`]).
    BulkheadFull,
    /// A rate limit ([`RateLimited`]).
    RateLimited,
    /// The deadline of the whole call passed (tokio's
    /// [`Elapsed`](tokio::time::error::Elapsed); not tower's per-attempt
    /// [`Elapsed`](tower::timeout::error::Elapsed), which is retried).
    Deadline,
}

/// An error the retry policy can look into: says whether it is a [`Refusal`]. Implemented by
/// the crate's errors and layers' errors (looking through their inner error), `std::io::Error`,
/// boxed errors such as tower's `BoxError` (along their source chain, with [`refusal_in`]),
/// both timeouts' `Elapsed` and `Infallible`. Implement it for an error type of your own with
/// [`refusal_in`], or box the error (`.map_err(tower::BoxError::from)`).
///
/// ```
/// use flotilla_resilience::retry::{MaybeRefusal, Refusal, refusal_in};
/// #[derive(Debug, thiserror::Error)]
/// #[error("upstream call failed")]
/// struct UpstreamError(#[source] Box<dyn std::error::Error + Send + Sync>);
/// impl MaybeRefusal for UpstreamError {
///     fn refusal(&self) -> Option<Refusal> {
///         refusal_in(self)
///     }
/// }
/// let error = UpstreamError(Box::new(flotilla_resilience::ratelimit::RateLimited { retry_after: Default::default() }));
/// assert_eq!(error.refusal(), Some(Refusal::RateLimited));
/// ```
pub trait MaybeRefusal {
    /// The refusal this error is or wraps, if any.
    fn refusal(&self) -> Option<Refusal>;
}

/// The refusal found in `error` or along its [`source`](Error::source) chain, by type: an
/// open breaker, a full bulkhead, a rate limit or tokio's deadline `Elapsed`.
///
/// ```
/// use flotilla_resilience::retry::{Refusal, refusal_in};
/// use flotilla_resilience::bulkhead::{BulkheadError, BulkheadFull};
/// let error = BulkheadError::<std::io::Error>::Full(BulkheadFull::QueueFull(8));
/// assert_eq!(refusal_in(&error), Some(Refusal::BulkheadFull));
/// assert_eq!(refusal_in(&std::io::Error::other("reset")), None);
/// ```
pub fn refusal_in(error: &(dyn Error + 'static)) -> Option<Refusal> {
    search(error, 0)
}

/// Links followed at most, in case a chain loops.
const MAX_LINKS: usize = 64;

fn search(error: &(dyn Error + 'static), mut links: usize) -> Option<Refusal> {
    let mut next = Some(error);
    while let Some(error) = next {
        links += 1;
        if links > MAX_LINKS {
            return None;
        }
        if error.is::<CircuitOpen>() {
            return Some(Refusal::CircuitOpen);
        } else if error.is::<BulkheadFull>() {
            return Some(Refusal::BulkheadFull);
        } else if error.is::<RateLimited>() {
            return Some(Refusal::RateLimited);
        } else if error.is::<tokio::time::error::Elapsed>() {
            return Some(Refusal::Deadline);
        }
        // An `io::Error`'s source is its inner error's source, skipping the inner error itself.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(refusal) = search(inner, links)
        {
            return Some(refusal);
        }
        next = error.source();
    }
    None
}

impl<E: MaybeRefusal> MaybeRefusal for BreakerError<E> {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            BreakerError::Open(_) => Some(Refusal::CircuitOpen),
            BreakerError::Inner(inner) => inner.refusal(),
        }
    }
}

impl<E: MaybeRefusal> MaybeRefusal for BulkheadError<E> {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            BulkheadError::Full(_) => Some(Refusal::BulkheadFull),
            BulkheadError::Inner(inner) => inner.refusal(),
        }
    }
}

impl<E: MaybeRefusal> MaybeRefusal for RateLimitError<E> {
    fn refusal(&self) -> Option<Refusal> {
        match self {
            RateLimitError::Limited(_) => Some(Refusal::RateLimited),
            RateLimitError::Inner(inner) => inner.refusal(),
        }
    }
}

impl MaybeRefusal for CircuitOpen {
    fn refusal(&self) -> Option<Refusal> {
        Some(Refusal::CircuitOpen)
    }
}

impl MaybeRefusal for BulkheadFull {
    fn refusal(&self) -> Option<Refusal> {
        Some(Refusal::BulkheadFull)
    }
}

impl MaybeRefusal for RateLimited {
    fn refusal(&self) -> Option<Refusal> {
        Some(Refusal::RateLimited)
    }
}

/// The per-attempt timeout of the crate's [`timeout`](crate::timeout) layer: retried.
impl MaybeRefusal for tower::timeout::error::Elapsed {
    fn refusal(&self) -> Option<Refusal> {
        None
    }
}

/// `tokio::time::timeout`'s: the deadline of the whole call.
impl MaybeRefusal for tokio::time::error::Elapsed {
    fn refusal(&self) -> Option<Refusal> {
        Some(Refusal::Deadline)
    }
}

impl MaybeRefusal for std::io::Error {
    fn refusal(&self) -> Option<Refusal> {
        refusal_in(self)
    }
}

impl MaybeRefusal for Infallible {
    fn refusal(&self) -> Option<Refusal> {
        match *self {}
    }
}

impl MaybeRefusal for Box<dyn Error + Send + Sync> {
    fn refusal(&self) -> Option<Refusal> {
        refusal_in(self.as_ref())
    }
}

impl MaybeRefusal for Box<dyn Error + Send> {
    fn refusal(&self) -> Option<Refusal> {
        refusal_in(self.as_ref())
    }
}

impl MaybeRefusal for Box<dyn Error> {
    fn refusal(&self) -> Option<Refusal> {
        refusal_in(self.as_ref())
    }
}

/// Whether an answer with this status may be fixed by another attempt: 502, 503, 504.
///
/// ```
/// use flotilla_resilience::retry::is_retryable_status;
/// use http::StatusCode;
/// assert!(is_retryable_status(StatusCode::GATEWAY_TIMEOUT));
/// assert!(!is_retryable_status(StatusCode::NOT_IMPLEMENTED));
/// assert!(!is_retryable_status(StatusCode::TOO_MANY_REQUESTS));
/// ```
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Retries what [`is_retryable`] finds retryable, if the request [is safe](is_safe_to_retry) to
/// send again; a [`Refusal`] stops the retries at once.
impl<B: Clone, R, E: MaybeRefusal> Policy<Request<B>, Response<R>, E> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request<B>,
        result: &mut Result<Response<R>, E>,
    ) -> Option<Self::Future> {
        let wait = self.next_wait(is_safe_to_retry(request), is_retryable(result))?;
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        let mut clone = Request::builder()
            .method(request.method().clone())
            .uri(request.uri().clone())
            .version(request.version())
            .body(request.body().clone())
            .ok()?;
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tower::layer::util::{Identity, Stack};
    use tower::retry::RetryLayer;
    use tower::util::MapRequestLayer;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    /// A service answering `statuses` in turn (then 200), counting its calls.
    fn flaky(
        statuses: Vec<u16>,
        calls: Arc<AtomicU32>,
    ) -> impl tower::Service<
        Request<()>,
        Response = Response<()>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
            let status = statuses.get(n).copied().unwrap_or(200);
            async move {
                if status == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "refused",
                    ));
                }
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::from_u16(status).expect("status");
                Ok(response)
            }
        })
    }

    async fn run(
        config: RetryConfig,
        statuses: Vec<u16>,
        request: Request<()>,
    ) -> (Result<u16, ()>, u32) {
        let calls = Arc::new(AtomicU32::new(0));
        let service = ServiceBuilder::new()
            .retry(RetryPolicy::new(config).expect("valid"))
            .service(flaky(statuses, calls.clone()));
        let result = service
            .oneshot(request)
            .await
            .map(|r| r.status().as_u16())
            .map_err(|_| ());
        (result, calls.load(Ordering::SeqCst))
    }

    fn get() -> Request<()> {
        Request::get("/x").body(()).expect("request")
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_up_to_the_limit() {
        let (result, calls) = run(RetryConfig::default(), vec![503, 0], get()).await;
        assert_eq!(
            (result, calls),
            (Ok(200), 3),
            "503 then refused, then success on the third attempt"
        );
        let (result, calls) = run(RetryConfig::default(), vec![503, 503, 503, 503], get()).await;
        assert_eq!((result, calls), (Ok(503), 3), "gives up after max_attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_and_server_refusals_are_never_retried() {
        for status in [400, 404, 409, 422, 429, 500, 501] {
            let (result, calls) = run(RetryConfig::default(), vec![status], get()).await;
            assert_eq!((result, calls), (Ok(status), 1), "{status}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_requests_safe_to_repeat_are_retried() {
        let post = Request::post("/orders").body(()).expect("request");
        let (result, calls) = run(RetryConfig::default(), vec![503], post).await;
        assert_eq!(
            (result, calls),
            (Ok(503), 1),
            "a POST without a key is sent once"
        );
        let keyed = Request::post("/orders")
            .header(IDEMPOTENCY_KEY, "k1")
            .body(())
            .expect("request");
        let (result, calls) = run(RetryConfig::default(), vec![503], keyed).await;
        assert_eq!(
            (result, calls),
            (Ok(200), 2),
            "a POST with a key is retried"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_configuration_applies_to_every_clone() {
        let policy = RetryPolicy::new(RetryConfig::default()).expect("valid");
        let calls = Arc::new(AtomicU32::new(0));
        let service = ServiceBuilder::new()
            .retry(policy.clone())
            .service(flaky(vec![503; 10], calls.clone()));
        policy
            .reconfigure(RetryConfig {
                max_attempts: 5,
                ..RetryConfig::default()
            })
            .expect("valid");
        let status = service
            .oneshot(get())
            .await
            .map(|r| r.status().as_u16())
            .ok();
        assert_eq!((status, calls.load(Ordering::SeqCst)), (Some(503), 5));
        assert_eq!(policy.config().max_attempts, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_stops_retries() {
        let config = RetryConfig {
            budget_percent: 0.0,
            min_retries_per_sec: 0,
            ..RetryConfig::default()
        };
        let (result, calls) = run(config, vec![503], get()).await;
        assert_eq!((result, calls), (Ok(503), 1));
    }

    #[test]
    fn backoff_is_full_jitter_under_a_growing_ceiling() {
        let policy = RetryPolicy::new(RetryConfig {
            base_delay_ms: 10,
            max_delay_ms: 100,
            ..RetryConfig::default()
        })
        .expect("valid");
        for retries in 0..10u32 {
            let ceiling = (10u64 << retries).min(100);
            for _ in 0..50 {
                assert!(policy.backoff(retries) <= Duration::from_millis(ceiling));
            }
        }
        // Full jitter: waits spread down to zero, not clustered at the ceiling.
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(5)).collect();
        assert!(waits.iter().any(|w| *w < Duration::from_millis(30)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(70)));
    }

    #[test]
    fn configurations_that_cannot_work_are_refused_not_panicked_on() {
        /// Makes a valid configuration invalid in one field.
        type Spoil = fn(&mut RetryConfig);
        let spoilt: [(Spoil, &str); 5] = [
            (|c| c.budget_percent = f32::NAN, "budget_percent"),
            (|c| c.budget_percent = f32::INFINITY, "budget_percent"),
            (|c| c.budget_percent = -1.0, "budget_percent"),
            (|c| c.min_retries_per_sec = u32::MAX, "min_retries_per_sec"),
            (|c| c.max_attempts = 0, "max_attempts"),
        ];
        for (spoil, field) in spoilt {
            let mut config = RetryConfig::default();
            spoil(&mut config);
            let error = RetryPolicy::new(config.clone()).expect_err("refused");
            assert_eq!(error.field, field);
            let policy = RetryPolicy::new(RetryConfig::default()).expect("valid");
            let error = policy.reconfigure(config).expect_err("refused");
            assert_eq!(error.field, field);
            assert_eq!(policy.config(), RetryConfig::default(), "the old one kept");
        }
        // Even unvalidated, the budget never panics.
        let _ = budget(&RetryConfig {
            budget_percent: f32::NAN,
            min_retries_per_sec: u32::MAX,
            ..RetryConfig::default()
        });
    }

    /// A retry and, under it, a count of its attempts: the layers to stack the rest on, and the
    /// count.
    type CountedRetry<F> = (
        ServiceBuilder<Stack<MapRequestLayer<F>, Stack<RetryLayer<RetryPolicy>, Identity>>>,
        Arc<AtomicU32>,
    );

    /// A retry with `config` counting the attempts that reach the layers under it.
    fn counted_retry(
        config: RetryConfig,
    ) -> CountedRetry<impl Fn(Request<()>) -> Request<()> + Clone> {
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        let count = move |request: Request<()>| {
            counted.fetch_add(1, Ordering::SeqCst);
            request
        };
        let layers = ServiceBuilder::new()
            .retry(RetryPolicy::new(config).expect("valid"))
            .map_request(count);
        (layers, attempts)
    }

    fn forced_open() -> crate::CircuitBreaker {
        let breaker =
            crate::CircuitBreaker::new("down", crate::BreakerConfig::default()).expect("valid");
        breaker.force(Some(crate::breaker::Forced::Open));
        breaker
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_below_the_retry_ends_the_call_after_one_attempt() {
        use crate::breaker::{BreakerError, CircuitBreakerLayer, HttpClassifier};
        let (retry, attempts) = counted_retry(RetryConfig::default());
        let calls = Arc::new(AtomicU32::new(0));
        let service = retry
            .layer(CircuitBreakerLayer::new(forced_open(), HttpClassifier))
            .service(flaky(vec![], calls.clone()));
        let error = service.oneshot(get()).await.expect_err("refused");
        assert!(matches!(error, BreakerError::Open(_)));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "no retry into an open breaker"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_is_found_in_a_boxed_error_too() {
        use crate::breaker::{CircuitBreakerLayer, HttpClassifier};
        let (retry, attempts) = counted_retry(RetryConfig::default());
        let service = retry
            .map_err(tower::BoxError::from)
            .layer(CircuitBreakerLayer::new(forced_open(), HttpClassifier))
            .service(flaky(vec![], Arc::default()));
        let error = service.oneshot(get()).await.expect_err("refused");
        assert_eq!(error.refusal(), Some(Refusal::CircuitOpen));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_breaker_opens_during_the_call() {
        use crate::breaker::{BreakerError, CircuitBreakerLayer, HttpClassifier, over_last_calls};
        let breaker = over_last_calls("flaky", 2);
        let (retry, attempts) = counted_retry(RetryConfig {
            max_attempts: 5,
            ..RetryConfig::default()
        });
        let calls = Arc::new(AtomicU32::new(0));
        let service = retry
            .layer(CircuitBreakerLayer::new(breaker, HttpClassifier))
            .service(flaky(vec![503; 10], calls.clone()));
        let error = service.oneshot(get()).await.expect_err("refused");
        assert!(matches!(error, BreakerError::Open(_)));
        // Two 503s open the breaker; the third attempt is refused, and the retries end there.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bulkhead_or_a_rate_limit_below_the_retry_is_not_retried() {
        use crate::bulkhead::{BulkheadConfig, BulkheadError, BulkheadLayer};
        use crate::ratelimit::{RateLimitConfig, RateLimitError, RateLimitLayer, RateLimiter};
        let (retry, attempts) = counted_retry(RetryConfig::default());
        let service = retry
            .layer(BulkheadLayer::new(BulkheadConfig {
                max_concurrent: 0,
                max_waiting: 0,
                max_wait_ms: 0,
            }))
            .service(flaky(vec![], Arc::default()));
        let error = service.oneshot(get()).await.expect_err("refused");
        assert!(matches!(error, BulkheadError::Full(_)));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);

        let limiter = RateLimiter::with_clock(
            RateLimitConfig {
                per_second: 1.0,
                burst: 1,
            },
            crate::Clock::manual(),
        )
        .expect("valid");
        let (retry, attempts) = counted_retry(RetryConfig::default());
        let calls = Arc::new(AtomicU32::new(0));
        let service = retry
            .layer(RateLimitLayer::new(limiter, |_: &Request<()>| ()))
            .service(flaky(vec![503], calls.clone()));
        let error = service.oneshot(get()).await.expect_err("limited");
        assert!(matches!(error, RateLimitError::Limited(_)));
        // The 503 is retried; the retry meets the limit, and that ends it.
        assert_eq!(
            (
                attempts.load(Ordering::SeqCst),
                calls.load(Ordering::SeqCst)
            ),
            (2, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_attempt_timeout_is_retried_and_a_deadline_of_the_call_is_not() {
        // tower's timeout under the retry bounds one attempt: the next one may be quicker.
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let service = ServiceBuilder::new()
            .retry(RetryPolicy::new(RetryConfig::default()).expect("valid"))
            .layer(crate::timeout::TimeoutConfig { timeout_ms: 100 }.layer())
            .service_fn(move |_: Request<()>| {
                let slow = counted.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if slow {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Ok::<_, std::io::Error>(Response::new(()))
                }
            });
        let response = service.oneshot(get()).await.expect("the second attempt");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // tokio's `Elapsed` is the deadline of the whole call: no attempt can beat it.
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let service = ServiceBuilder::new()
            .retry(RetryPolicy::new(RetryConfig::default()).expect("valid"))
            .service_fn(move |_: Request<()>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::timeout(Duration::ZERO, std::future::pending::<()>())
                        .await
                        .map_err(tower::BoxError::from)?;
                    Ok::<_, tower::BoxError>(Response::new(()))
                }
            });
        let error = service.oneshot(get()).await.expect_err("too late");
        assert_eq!(error.refusal(), Some(Refusal::Deadline));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn refusals_are_found_through_wrappers_and_boxes() {
        use crate::breaker::BreakerError;
        use crate::bulkhead::{BulkheadError, BulkheadFull};
        let full = BulkheadFull::QueueFull(1);
        // Typed: a bulkhead refusal under a breaker's error.
        let typed: BreakerError<BulkheadError<std::io::Error>> =
            BreakerError::Inner(BulkheadError::Full(full));
        assert_eq!(typed.refusal(), Some(Refusal::BulkheadFull));
        // Boxed: the same, boxed by a tower layer above them.
        let boxed: tower::BoxError = Box::new(
            BreakerError::<BulkheadError<std::io::Error>>::Inner(BulkheadError::Full(full)),
        );
        assert_eq!(boxed.refusal(), Some(Refusal::BulkheadFull));
        // In an `io::Error`.
        assert_eq!(
            std::io::Error::other(full).refusal(),
            Some(Refusal::BulkheadFull)
        );
        // Plain failures are not refusals.
        let reset: tower::BoxError =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(reset.refusal(), None);
        let inner: BreakerError<std::io::Error> =
            BreakerError::Inner(std::io::Error::other("reset"));
        assert_eq!(inner.refusal(), None);
    }
}
