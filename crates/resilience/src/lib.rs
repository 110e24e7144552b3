//! Resilience for tower services: a complete circuit breaker, retry, timeout, bulkhead and rate
//! limiter, each usable on its own by any tower-based Rust service, each with a plain serde
//! configuration struct.
//!
//! The order to stack them in, outermost first, and why:
//!
//! 1. **rate limiter** — refuse excess load before spending anything on it; above the retry, it
//!    counts a call once, not its retries (`max_attempts` and the retry budget bound those);
//! 2. **retry** — each attempt goes through everything below, so a retry is judged by the
//!    breaker and bulkheaded like any call;
//! 3. **circuit breaker** — fail fast while the target is down: the retry never retries its
//!    refusal, so the retries stop at once when it opens, even in the middle of a call;
//! 4. **bulkhead** — bound the calls in flight to the target; a call it refuses is not retried
//!    either;
//! 5. **timeout** — innermost, so that it bounds one attempt: a timed-out attempt counts as a
//!    failure for the breaker and may be retried like a transport error.
//!
//! Which errors the retry treats as refusals, and how it finds them in typed or boxed errors:
//! see [`retry`] ([`retry::Refusal`], [`retry::MaybeRefusal`]).
//!
//! | module | what |
//! | --- | --- |
//! | [`breaker`] | the circuit breaker state machine: count or time windows, failure and slow-call rates, growing open waits, exact half-open permits, forced states, events and metrics |
//! | [`retry`] | a tower retry policy for HTTP: full-jitter backoff, attempts, a retry budget, only safe requests and retryable failures |
//! | [`bulkhead`] | a concurrency limit with a bounded waiting line and wait |
//! | [`ratelimit`] | a token bucket per key |
//! | [`timeout`] | a deadline per call, configured like the rest |
//! | [`settings`] | the `breaker` and `retry` section of a process's settings, validated |
//! | [`pipeline`] | a breaker and a retry policy around any async call (for non-tower callers) |
//! | [`fallback`] | default value, last good answer (with a maximum age), alternative service |
//! | [`clock`] | the monotonic clock the primitives read (manual in tests) |

pub mod breaker;
pub mod bulkhead;
pub mod clock;
pub mod fallback;
pub mod pipeline;
pub mod ratelimit;
pub mod retry;
pub mod settings;
pub mod timeout;

pub use breaker::{BreakerConfig, CircuitBreaker, CircuitOpen, Outcome, State};
pub use clock::Clock;
