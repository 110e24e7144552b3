//! The circuit breaker.
//!
//! ```text
//!            failure or slow-call rate ≥ threshold
//!            (over ≥ minimum_calls in the window)
//!   ┌────────┐ ───────────────────────────────▶ ┌──────┐
//!   │ CLOSED │                                  │ OPEN │ ◀──┐ a trial fails or is slow
//!   └────────┘ ◀─────────┐                      └──────┘    │ (the wait grows by
//!                        │ success_threshold       │        │  wait_multiplier)
//!                        │ trials succeed          │ wait_in_open elapsed,
//!                        │                         ▼ next call
//!                        └──────────────────── ┌───────────┐
//!                                              │ HALF-OPEN │ ──┘
//!                                              └───────────┘
//!                                     at most half_open_permits trials at once
//! ```
//!
//! Operators can also force a breaker open or disable it ([`CircuitBreaker::force`]).
//!
//! A call asks for a [`Permit`] ([`CircuitBreaker::try_acquire`]) and reports its [`Outcome`]
//! on it; a permit dropped without a report (the call was cancelled) counts as ignored, so
//! half-open places are never lost. Reports from a permit issued before the last transition are
//! not held against the new state.
//!
//! ```
//! use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
//! let breaker = CircuitBreaker::new("inventory", BreakerConfig {
//!     window: Window::Count { calls: 4 },
//!     minimum_calls: 4,
//!     ..BreakerConfig::default()
//! }).unwrap();
//! for _ in 0..4 {
//!     breaker.try_acquire().unwrap().record(Outcome::Failure);
//! }
//! assert_eq!(breaker.state(), State::Open);
//! let open = breaker.try_acquire().unwrap_err();
//! assert!(open.retry_after.as_secs() <= 5);
//! ```

mod circuit;
mod config;
mod layer;
pub mod metric;
mod state;
mod window;

pub use circuit::{CircuitBreaker, Permit};
pub use config::{BreakerConfig, ConfigError, MAX_WINDOW_CALLS, MAX_WINDOW_MILLIS, Window};
pub use layer::{
    BreakerError, CircuitBreakerLayer, CircuitBreakerService, Classify, HttpClassifier,
    ResponseFuture,
};
pub use state::{CircuitOpen, Forced, Outcome, State, Transition};

/// A breaker judging a window of the last `calls` calls as soon as it holds that many (for
/// tests).
#[cfg(test)]
pub(crate) fn over_last_calls(name: &str, calls: u32) -> CircuitBreaker {
    let config = BreakerConfig {
        window: Window::Count { calls },
        minimum_calls: calls,
        ..BreakerConfig::default()
    };
    CircuitBreaker::new(name, config).expect("valid")
}
