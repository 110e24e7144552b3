//! The breaker's metric names, with their units, and the handles a breaker records through.

use std::sync::Arc;

use metrics::{Counter, Gauge, Unit};

use super::State;

/// Every state, in the order of [`Metrics::states`].
const STATES: [State; 5] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::Disabled,
];

/// Registers the HELP text and unit of every breaker metric (once a recorder exists).
pub fn describe() {
    metrics::describe_gauge!(
        STATE,
        Unit::Count,
        "Whether the circuit breaker is in this state (1) or not (0), by breaker and state"
    );
    metrics::describe_counter!(
        TRANSITIONS,
        Unit::Count,
        "Circuit breaker state transitions, by breaker, from and to"
    );
    metrics::describe_counter!(
        CALLS,
        Unit::Count,
        "Calls through a circuit breaker, by breaker and outcome (success, failure, ignored, rejected)"
    );
    metrics::describe_counter!(
        SLOW_CALLS,
        Unit::Count,
        "Calls through a circuit breaker slower than its slow_call_duration_ms, by breaker"
    );
}

/// Gauge: 1 for the breaker's current state and 0 for the others, by `breaker` and `state`
/// (`closed`, `open`, `half_open`, `forced_open`, `disabled`): an alert matches
/// `resilience_breaker_state{state="open"} == 1` instead of decoding a number.
///
/// ```
/// use flotilla_resilience::breaker::metric;
/// assert_eq!(metric::STATE, "resilience_breaker_state");
/// ```
pub const STATE: &str = "resilience_breaker_state";
/// Counter: transitions, by `breaker`, `from` and `to`.
///
/// ```
/// use flotilla_resilience::breaker::metric;
/// assert_eq!(metric::TRANSITIONS, "resilience_breaker_transitions_total");
/// ```
pub const TRANSITIONS: &str = "resilience_breaker_transitions_total";
/// Counter: calls, by `breaker` and `outcome` (`success`, `failure`, `ignored`, `rejected`).
///
/// ```
/// use flotilla_resilience::breaker::metric;
/// assert_eq!(metric::CALLS, "resilience_breaker_calls_total");
/// ```
pub const CALLS: &str = "resilience_breaker_calls_total";
/// Counter: calls at least `slow_call_duration_ms` long, by `breaker`.
///
/// ```
/// use flotilla_resilience::breaker::metric;
/// assert_eq!(metric::SLOW_CALLS, "resilience_breaker_slow_calls_total");
/// ```
pub const SLOW_CALLS: &str = "resilience_breaker_slow_calls_total";

/// A breaker's metric handles, taken once when it is made.
#[derive(Debug)]
pub(super) struct Metrics {
    /// One gauge per state, in the order of [`STATES`].
    states: [Gauge; 5],
    pub(super) success: Counter,
    pub(super) failure: Counter,
    pub(super) ignored: Counter,
    pub(super) rejected: Counter,
    pub(super) slow: Counter,
}

impl Metrics {
    pub(super) fn new(name: &Arc<str>) -> Self {
        describe();
        let name = name.to_string();
        let calls = |outcome: &'static str| metrics::counter!(CALLS, "breaker" => name.clone(), "outcome" => outcome);
        let state = |state: State| metrics::gauge!(STATE, "breaker" => name.clone(), "state" => state.as_str());
        Self {
            states: STATES.map(state),
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            rejected: calls("rejected"),
            slow: metrics::counter!(SLOW_CALLS, "breaker" => name.clone()),
        }
    }
}

impl Metrics {
    /// Sets the gauge of `current` to 1 and the others to 0.
    pub(super) fn set_state(&self, current: State) {
        for (state, gauge) in STATES.iter().zip(&self.states) {
            gauge.set(if *state == current { 1.0 } else { 0.0 });
        }
    }
}
