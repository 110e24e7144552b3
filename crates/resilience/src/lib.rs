//! Resilience for tower services: a complete circuit breaker, retry, timeout, bulkhead and rate
//! limiter, each usable on its own by any tower-based Rust service, each with a plain serde
//! configuration struct.
//!
//! The order to stack them in, outermost first, and why:
//!
//! 1. **rate limiter** — refuse excess load before spending anything on it;
//! 2. **retry** — each attempt goes through everything below, so a retry is limited, bulkheaded
//!    and judged by the breaker like any call;
//! 3. **circuit breaker** — fail fast while the target is down (retries then stop at once);
//! 4. **bulkhead** — bound the calls in flight to the target;
//! 5. **timeout** — innermost, so that it bounds one attempt, and a timed-out attempt counts as a
//!    failure for the breaker.
//!
//! | module | what |
//! | --- | --- |
//! | [`breaker`] | the circuit breaker state machine: count or time windows, failure and slow-call rates, growing open waits, exact half-open permits, forced states, events and metrics |
//! | [`retry`] | a tower retry policy for HTTP: full-jitter backoff, attempts, a retry budget, only safe requests and retryable failures |
//! | [`bulkhead`] | a concurrency limit with a bounded waiting line and wait |
//! | [`ratelimit`] | a token bucket per key |
//! | [`timeout`] | a deadline per call, configured like the rest |
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
pub mod timeout;

pub use breaker::{BreakerConfig, CircuitBreaker, CircuitOpen, Outcome, State};
pub use clock::Clock;
