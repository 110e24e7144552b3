//! A breaker and a retry policy applied together around any async call, for callers that are
//! not tower services (a proxy streaming bodies, a client failing over between instances).
//!
//! Each attempt must be admitted by the breaker and reports its outcome to it; a rejection
//! ends the call at once, even between retries (retrying into an open breaker would only add
//! load). The retry policy decides after each attempt.
//!
//! ```
//! use flotilla_resilience::pipeline::{Pipeline, Verdict};
//! use flotilla_resilience::{BreakerConfig, CircuitBreaker};
//! use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let pipeline = Pipeline::new(
//!     Some(CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap()),
//!     Some(RetryPolicy::new(RetryConfig::default()).unwrap()),
//! );
//! let answer = pipeline
//!     .run(true, |_attempt| async { 200u16 }, |status: &u16| match *status {
//!         502..=504 => Verdict::Failure { retryable: true },
//!         500..=599 => Verdict::Failure { retryable: false },
//!         _ => Verdict::Success,
//!     })
//!     .await;
//! assert_eq!(answer, Ok(200));
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use crate::breaker::{CircuitBreaker, CircuitOpen, Outcome, Permit};
use crate::retry::RetryPolicy;

/// How an attempt went.
///
/// ```
/// use flotilla_resilience::pipeline::{Pipeline, Verdict};
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, State, Window};
/// let config = BreakerConfig { window: Window::Count { calls: 1 }, minimum_calls: 1, ..BreakerConfig::default() };
/// let pipeline = Pipeline::new(Some(CircuitBreaker::new("inventory", config).unwrap()), None);
/// let mut call = pipeline.start(true);
/// let permit = call.admit().unwrap();
/// call.after(permit, Verdict::Ignored); // says nothing about the target
/// assert_eq!(pipeline.breaker().unwrap().state(), State::Closed);
/// let permit = call.admit().unwrap();
/// call.after(permit, Verdict::Failure { retryable: false });
/// assert_eq!(pipeline.breaker().unwrap().state(), State::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It worked.
    Success,
    /// It failed; `retryable` if another attempt may fix it.
    Failure {
        /// Whether to try again (if the policy and the budget allow).
        retryable: bool,
    },
    /// It says nothing about the target (nobody was called, or the caller erred).
    Ignored,
}

impl Verdict {
    /// The verdict on an HTTP answer: 502, 503 and 504 are failures another attempt may fix;
    /// other 5xx are failures it will not fix; everything else, 4xx included, is a success for
    /// the target's health.
    ///
    /// ```
    /// use flotilla_resilience::pipeline::Verdict;
    /// assert_eq!(Verdict::of_status(http::StatusCode::SERVICE_UNAVAILABLE), Verdict::Failure { retryable: true });
    /// assert_eq!(Verdict::of_status(http::StatusCode::NOT_FOUND), Verdict::Success);
    /// ```
    pub fn of_status(status: http::StatusCode) -> Self {
        if crate::retry::is_retryable_status(status) {
            Verdict::Failure { retryable: true }
        } else if status.is_server_error() {
            Verdict::Failure { retryable: false }
        } else {
            Verdict::Success
        }
    }

    /// How the verdict counts for a circuit breaker.
    pub fn outcome(self) -> Outcome {
        match self {
            Verdict::Success => Outcome::Success,
            Verdict::Failure { .. } => Outcome::Failure,
            Verdict::Ignored => Outcome::Ignored,
        }
    }
}

/// A breaker and a retry policy, either optional.
///
/// ```
/// use flotilla_resilience::pipeline::{Pipeline, Verdict};
/// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pipeline = Pipeline::new(None, Some(RetryPolicy::new(RetryConfig::default()).unwrap()));
/// let judge = |status: &u16| Verdict::of_status(http::StatusCode::from_u16(*status).unwrap());
/// let answer = pipeline
///     .run(true, |attempt| async move { if attempt == 0 { 503 } else { 200 } }, judge)
///     .await;
/// assert_eq!(answer, Ok(200)); // the 503 was retried
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Pipeline {
    breaker: Option<CircuitBreaker>,
    retry: Option<RetryPolicy>,
}

impl Pipeline {
    /// A pipeline of the given parts.
    ///
    /// ```
    /// use flotilla_resilience::pipeline::{Pipeline, Verdict};
    /// let pipeline = Pipeline::new(None, None); // neither part: one attempt, never refused
    /// let mut call = pipeline.start(true);
    /// let permit = call.admit().unwrap();
    /// assert!(permit.is_none());
    /// assert_eq!(call.after(permit, Verdict::Failure { retryable: true }), None);
    /// ```
    pub fn new(breaker: Option<CircuitBreaker>, retry: Option<RetryPolicy>) -> Self {
        Self { breaker, retry }
    }

    /// The breaker, if any.
    ///
    /// ```
    /// use flotilla_resilience::pipeline::Pipeline;
    /// use flotilla_resilience::{BreakerConfig, CircuitBreaker};
    /// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
    /// assert_eq!(Pipeline::new(Some(breaker), None).breaker().unwrap().name(), "inventory");
    /// assert!(Pipeline::new(None, None).breaker().is_none());
    /// ```
    pub fn breaker(&self) -> Option<&CircuitBreaker> {
        self.breaker.as_ref()
    }

    /// The retry policy, if any (reconfigure it to change every later call).
    ///
    /// ```
    /// use flotilla_resilience::pipeline::{Pipeline, Verdict};
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let pipeline = Pipeline::new(None, Some(RetryPolicy::new(RetryConfig::default()).unwrap()));
    /// pipeline.retry().unwrap().reconfigure(RetryConfig { max_attempts: 1, ..RetryConfig::default() }).unwrap();
    /// let mut call = pipeline.start(true);
    /// let permit = call.admit().unwrap();
    /// assert_eq!(call.after(permit, Verdict::Failure { retryable: true }), None); // one attempt only now
    /// ```
    pub fn retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    /// Starts one call: admit each attempt with [`Call::admit`], report it with
    /// [`Call::after`], which says how long to wait before the next attempt, if any.
    /// `safe`: the call may be made twice.
    ///
    /// ```
    /// use flotilla_resilience::pipeline::{Pipeline, Verdict};
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let pipeline = Pipeline::new(None, Some(RetryPolicy::new(RetryConfig::default()).unwrap()));
    /// let mut post = pipeline.start(false); // not safe to make twice
    /// let permit = post.admit().unwrap();
    /// assert_eq!(post.after(permit, Verdict::Failure { retryable: true }), None);
    /// let mut get = pipeline.start(true);
    /// let permit = get.admit().unwrap();
    /// assert!(get.after(permit, Verdict::Failure { retryable: true }).is_some());
    /// ```
    pub fn start(&self, safe: bool) -> Call<'_> {
        Call {
            pipeline: self,
            retry: self.retry.clone(),
            safe,
        }
    }

    /// Runs `attempt` (given the attempt number, from 0) until `judge` finds its result good,
    /// or the result may not or need not be retried. `safe`: the call may be made twice.
    /// Returns the last result, or the breaker's rejection.
    ///
    /// ```
    /// use flotilla_resilience::pipeline::{Pipeline, Verdict};
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
    /// let pipeline = Pipeline::new(Some(breaker.clone()), None);
    /// let judge = |_: &u16| Verdict::Success;
    /// assert_eq!(pipeline.run(true, |_| async { 200u16 }, judge).await, Ok(200));
    /// breaker.force(Some(Forced::Open));
    /// let refused = pipeline.run(true, |_| async { 200u16 }, judge).await.unwrap_err();
    /// assert_eq!(&*refused.breaker, "inventory"); // no attempt was made
    /// # }
    /// ```
    pub async fn run<T, F, Fut>(
        &self,
        safe: bool,
        mut attempt: F,
        judge: impl Fn(&T) -> Verdict,
    ) -> Result<T, CircuitOpen>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut call = self.start(safe);
        let mut number = 0;
        loop {
            let permit = call.admit()?;
            let result = attempt(number).await;
            match call.after(permit, judge(&result)) {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    number += 1;
                }
                None => return Ok(result),
            }
        }
    }
}

/// One call through a [`Pipeline`], attempt by attempt.
///
/// ```
/// use flotilla_resilience::pipeline::{Pipeline, Verdict};
/// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
/// let pipeline = Pipeline::new(None, Some(RetryPolicy::new(RetryConfig::default()).unwrap()));
/// let mut call = pipeline.start(true);
/// let permit = call.admit().unwrap();
/// // A 503: another attempt may help, after a short wait.
/// assert!(call.after(permit, Verdict::Failure { retryable: true }).is_some());
/// let permit = call.admit().unwrap();
/// assert!(call.after(permit, Verdict::Success).is_none());
/// ```
#[derive(Debug)]
pub struct Call<'a> {
    pipeline: &'a Pipeline,
    retry: Option<RetryPolicy>,
    safe: bool,
}

impl Call<'_> {
    /// Asks the breaker to admit the next attempt.
    ///
    /// ```
    /// use flotilla_resilience::pipeline::Pipeline;
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced};
    /// let breaker = CircuitBreaker::new("inventory", BreakerConfig::default()).unwrap();
    /// let pipeline = Pipeline::new(Some(breaker.clone()), None);
    /// let call = pipeline.start(true);
    /// assert!(call.admit().unwrap().is_some()); // a breaker permit to report on
    /// breaker.force(Some(Forced::Open));
    /// assert!(call.admit().is_err());
    /// ```
    pub fn admit(&self) -> Result<Option<Permit>, CircuitOpen> {
        self.pipeline
            .breaker
            .as_ref()
            .map(CircuitBreaker::try_acquire)
            .transpose()
    }

    /// Reports an attempt; returns the wait before the next one, or `None` to stop.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::pipeline::{Pipeline, Verdict};
    /// use flotilla_resilience::retry::{RetryConfig, RetryPolicy};
    /// let retry = RetryPolicy::new(RetryConfig { max_attempts: 2, ..RetryConfig::default() }).unwrap();
    /// let pipeline = Pipeline::new(None, Some(retry));
    /// let mut call = pipeline.start(true);
    /// let wait = call.after(None, Verdict::Failure { retryable: true }).unwrap();
    /// assert!(wait <= Duration::from_millis(25)); // at most base_delay_ms before the second attempt
    /// assert_eq!(call.after(None, Verdict::Failure { retryable: true }), None); // two attempts made
    /// ```
    pub fn after(&mut self, permit: Option<Permit>, verdict: Verdict) -> Option<Duration> {
        if let Some(permit) = permit {
            permit.record(verdict.outcome());
        }
        self.next_wait(verdict)
    }

    /// [`Call::after`] for an attempt whose duration says nothing of the upstream's health: a
    /// long poll (`Prefer: wait=N`), which the upstream answers when what the client waits for
    /// happens. Its outcome counts; it never counts as a slow call.
    ///
    /// ```
    /// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, State, Window};
    /// use flotilla_resilience::pipeline::{Pipeline, Verdict};
    /// let config = BreakerConfig {
    ///     window: Window::Count { calls: 2 },
    ///     minimum_calls: 2,
    ///     slow_call_duration_ms: 1,
    ///     ..BreakerConfig::default()
    /// };
    /// let breaker = CircuitBreaker::new("order", config).unwrap();
    /// let pipeline = Pipeline::new(Some(breaker.clone()), None);
    /// for _ in 0..2 {
    ///     let mut call = pipeline.start(false);
    ///     let permit = call.admit().unwrap();
    ///     std::thread::sleep(std::time::Duration::from_millis(5)); // slower than 1 ms
    ///     call.after_untimed(permit, Verdict::Success);
    /// }
    /// assert_eq!(breaker.state(), State::Closed);
    /// ```
    pub fn after_untimed(&mut self, permit: Option<Permit>, verdict: Verdict) -> Option<Duration> {
        if let Some(permit) = permit {
            permit.record_with_duration(verdict.outcome(), Duration::ZERO);
        }
        self.next_wait(verdict)
    }

    fn next_wait(&mut self, verdict: Verdict) -> Option<Duration> {
        let retryable = matches!(verdict, Verdict::Failure { retryable: true });
        let safe = self.safe;
        self.retry
            .as_mut()
            .and_then(|retry| retry.next_wait(safe, retryable))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::breaker::{State, over_last_calls};
    use crate::retry::RetryConfig;

    fn judge(status: &u16) -> Verdict {
        match *status {
            503 => Verdict::Failure { retryable: true },
            _ => Verdict::Success,
        }
    }

    /// Runs a call through `pipeline` to an upstream that always answers 503: the result and the
    /// attempts made.
    async fn always_unavailable(
        pipeline: &Pipeline,
        safe: bool,
    ) -> (Result<u16, CircuitOpen>, u32) {
        let calls = AtomicU32::new(0);
        let attempt = |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { 503u16 }
        };
        let result = pipeline.run(safe, attempt, judge).await;
        (result, calls.into_inner())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_when_the_breaker_opens() {
        let breaker = over_last_calls("p", 2);
        let pipeline = Pipeline::new(
            Some(breaker.clone()),
            Some(
                RetryPolicy::new(RetryConfig {
                    max_attempts: 5,
                    ..RetryConfig::default()
                })
                .expect("valid"),
            ),
        );
        let (result, calls) = always_unavailable(&pipeline, true).await;
        assert!(result.is_err(), "the third attempt meets an open breaker");
        assert_eq!(calls, 2);
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsafe_call_is_made_once() {
        let pipeline = Pipeline::new(
            None,
            Some(RetryPolicy::new(RetryConfig::default()).expect("valid")),
        );
        let (result, calls) = always_unavailable(&pipeline, false).await;
        assert_eq!(result, Ok(503));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_to_success() {
        let pipeline = Pipeline::new(
            None,
            Some(RetryPolicy::new(RetryConfig::default()).expect("valid")),
        );
        let result = pipeline
            .run(
                true,
                |attempt| async move { if attempt == 0 { 503u16 } else { 200 } },
                judge,
            )
            .await;
        assert_eq!(result, Ok(200));
    }
}
