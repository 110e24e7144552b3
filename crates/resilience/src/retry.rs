//! Retries for HTTP calls: exponential backoff with full jitter, a maximum of attempts, a retry
//! budget, and only where a retry is safe.
//!
//! A call is retried only if all hold:
//! * it failed in a way another attempt may fix: a transport error (refused, reset, timed out)
//!   or a 502, 503 or 504 — never a 4xx, never a 500 or 501 (the server understood and refused);
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
//! let policy = RetryPolicy::new(RetryConfig::default());
//! let layer = tower::retry::RetryLayer::new(policy);
//! # drop(layer);
//! ```

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

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
    /// Retries may add at most this percentage to the calls made. Default 20.
    pub budget_percent: f32,
    /// Retries always allowed per second, whatever the budget. Default 10.
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

impl RetryConfig {
    /// Checks the values.
    ///
    /// ```
    /// use flotilla_resilience::retry::RetryConfig;
    /// assert!(RetryConfig::default().validate().is_ok());
    /// let config = RetryConfig { base_delay_ms: 2_000, ..RetryConfig::default() }; // above the 1 s ceiling
    /// assert_eq!(config.validate().unwrap_err().field, "max_delay_ms");
    /// ```
    pub fn validate(&self) -> Result<(), crate::breaker::ConfigError> {
        let fail = |field, reason| Err(crate::breaker::ConfigError { field, reason });
        if self.max_attempts == 0 {
            return fail(
                "max_attempts",
                "must be at least 1 (the first attempt counts)",
            );
        }
        if !(self.budget_percent >= 0.0 && self.budget_percent.is_finite()) {
            return fail("budget_percent", "must be a non-negative number");
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
///     .retry(RetryPolicy::new(RetryConfig::default()))
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
    Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        config.min_retries_per_sec,
        (config.budget_percent / 100.0).clamp(0.0, 1000.0),
    ))
}

impl RetryPolicy {
    /// A policy with its own budget (kept over a 10 s window).
    ///
    /// ```
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let mut policy = RetryPolicy::new(RetryConfig::default()); // 3 attempts
    /// assert!(policy.next_wait(true, true).is_some());
    /// assert!(policy.next_wait(true, true).is_some());
    /// assert_eq!(policy.next_wait(true, true), None); // the third attempt was the last
    /// ```
    pub fn new(config: RetryConfig) -> Self {
        Self {
            shared: Arc::new(RwLock::new(Shared {
                budget: budget(&config),
                config,
            })),
            retries: 0,
        }
    }

    /// Replaces the configuration at run time, for this policy and all its clones; calls in
    /// flight continue under the new rules. A changed budget starts afresh.
    ///
    /// ```
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let policy = RetryPolicy::new(RetryConfig::default());
    /// let mut clone = policy.clone(); // say, inside a tower RetryLayer
    /// policy.reconfigure(RetryConfig { max_attempts: 1, ..RetryConfig::default() });
    /// assert_eq!(clone.config().max_attempts, 1);
    /// assert_eq!(clone.next_wait(true, true), None);
    /// ```
    pub fn reconfigure(&self, config: RetryConfig) {
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
    }

    /// The configuration in force.
    ///
    /// ```
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let policy = RetryPolicy::new(RetryConfig { max_attempts: 4, ..RetryConfig::default() });
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
    /// let mut policy = RetryPolicy::new(RetryConfig::default());
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
    /// let policy = RetryPolicy::new(RetryConfig { base_delay_ms: 10, max_delay_ms: 100, ..RetryConfig::default() });
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

/// Whether a result is a failure another attempt may fix.
///
/// ```
/// use flotilla_resilience::retry::is_retryable;
/// let answer = |status: u16| -> Result<http::Response<()>, ()> {
///     Ok(http::Response::builder().status(status).body(()).unwrap())
/// };
/// assert!(is_retryable(&answer(503)));
/// assert!(!is_retryable(&answer(500)));
/// assert!(!is_retryable(&answer(429)));
/// ```
pub fn is_retryable<B, E>(result: &Result<Response<B>, E>) -> bool {
    match result {
        Ok(response) => is_retryable_status(response.status()),
        Err(_) => true,
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

impl<B: Clone, R, E> Policy<Request<B>, Response<R>, E> for RetryPolicy {
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
            .retry(RetryPolicy::new(config))
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
        let policy = RetryPolicy::new(RetryConfig::default());
        let calls = Arc::new(AtomicU32::new(0));
        let service = ServiceBuilder::new()
            .retry(policy.clone())
            .service(flaky(vec![503; 10], calls.clone()));
        policy.reconfigure(RetryConfig {
            max_attempts: 5,
            ..RetryConfig::default()
        });
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
        });
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
}
