//! What a breaker is in and says: its [`State`], the state an operator may force, a call's
//! [`Outcome`], the refusal [`CircuitOpen`] and the [`Transition`] events.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// The state of a breaker.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, State};
/// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
/// assert_eq!(breaker.state(), State::Closed);
/// assert_eq!(serde_json::to_string(&State::HalfOpen).unwrap(), r#""half_open""#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls flow; outcomes are recorded in the window.
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A few trial calls are let through to probe the target.
    HalfOpen,
    /// Forced open by an operator: every call is rejected.
    ForcedOpen,
    /// Disabled by an operator: every call flows, nothing is recorded.
    Disabled,
}

impl State {
    /// The state's name, as in metrics and events.
    ///
    /// ```
    /// use flotilla_resilience::State;
    /// assert_eq!(State::HalfOpen.as_str(), "half_open");
    /// assert_eq!(State::ForcedOpen.as_str(), "forced_open");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

/// A state an operator can force.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced, State};
/// let forced: Forced = serde_json::from_str(r#""disabled""#).unwrap(); // as an admin API receives it
/// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
/// breaker.force(Some(forced));
/// assert_eq!(breaker.state(), State::Disabled);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forced {
    /// Reject every call.
    Open,
    /// Let every call through and record nothing.
    Disabled,
}

/// How a call went, as the breaker counts it.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
/// let config = BreakerConfig { window: Window::Count { calls: 2 }, minimum_calls: 2, ..BreakerConfig::default() };
/// let breaker = CircuitBreaker::new("payment", config).unwrap();
/// for _ in 0..5 {
///     breaker.try_acquire().unwrap().record(Outcome::Ignored); // not counted
/// }
/// assert_eq!(breaker.state(), State::Closed);
/// breaker.try_acquire().unwrap().record(Outcome::Success);
/// breaker.try_acquire().unwrap().record(Outcome::Failure); // 50 % of 2 calls
/// assert_eq!(breaker.state(), State::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call succeeded (it may still be slow).
    Success,
    /// The call failed: it counts towards the failure rate.
    Failure,
    /// The call says nothing about the target's health (a client error, a cancellation).
    Ignored,
}

/// The breaker refused the call.
///
/// ```
/// use std::time::Duration;
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Forced};
/// let breaker = CircuitBreaker::new("payment", BreakerConfig::default()).unwrap();
/// breaker.force(Some(Forced::Open));
/// let open = breaker.try_acquire().unwrap_err();
/// assert_eq!(&*open.breaker, "payment");
/// assert_eq!(open.retry_after, Duration::from_secs(5)); // forced open: the open wait
/// assert_eq!(open.to_string(), "circuit breaker `payment` is open; retry after 5s");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{breaker}` is open; retry after {retry_after:?}")]
pub struct CircuitOpen {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// When a call may be let through again (a hint: zero when half-open places are taken,
    /// the rest of the wait when open, the open wait when forced open).
    pub retry_after: Duration,
}

/// A change of state, sent to every subscriber ([`CircuitBreaker::subscribe`](super::CircuitBreaker::subscribe)).
///
/// ```
/// use std::time::Duration;
/// use flotilla_resilience::breaker::{BreakerConfig, CircuitBreaker, Outcome, State, Window};
/// let clock = flotilla_resilience::Clock::manual();
/// let config = BreakerConfig { window: Window::Count { calls: 1 }, minimum_calls: 1, ..BreakerConfig::default() };
/// let breaker = CircuitBreaker::with_clock("payment", config, clock.clone()).unwrap();
/// let mut transitions = breaker.subscribe();
/// clock.advance(Duration::from_secs(1));
/// breaker.try_acquire().unwrap().record(Outcome::Failure);
/// let transition = transitions.try_recv().unwrap();
/// assert_eq!((transition.from, transition.to), (State::Closed, State::Open));
/// assert_eq!((&*transition.breaker, transition.at), ("payment", 1_000_000_000));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// When, in nanoseconds of the breaker's clock.
    pub at: u64,
}
