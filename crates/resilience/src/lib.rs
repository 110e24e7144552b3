//! Resilience for tower services: a complete circuit breaker, and (as they land) retry, timeout,
//! bulkhead and rate limiter, each usable on its own by any tower-based Rust service.
//!
//! | module | what |
//! | --- | --- |
//! | [`breaker`] | the circuit breaker state machine: count or time windows, failure and slow-call rates, growing open waits, exact half-open permits, forced states, events and metrics |
//! | [`clock`] | the monotonic clock the primitives read (manual in tests) |

pub mod breaker;
pub mod clock;

pub use breaker::{BreakerConfig, CircuitBreaker, CircuitOpen, Outcome, State};
pub use clock::Clock;
