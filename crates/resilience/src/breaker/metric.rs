//! The breaker's metric names, with their units, and the handles a breaker records through.

use std::sync::Arc;

use metrics::{Counter, Gauge};

/// Gauge: current state (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled), by `breaker`.
///
/// ```
/// use flotilla_resilience::{State, breaker::metric};
/// assert_eq!(metric::STATE, "resilience_breaker_state");
/// assert_eq!(State::Open.gauge(), 1.0); // the value it takes while open
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
    pub(super) state: Gauge,
    pub(super) success: Counter,
    pub(super) failure: Counter,
    pub(super) ignored: Counter,
    pub(super) rejected: Counter,
    pub(super) slow: Counter,
}

impl Metrics {
    pub(super) fn new(name: &Arc<str>) -> Self {
        let name = name.to_string();
        let calls = |outcome: &'static str| metrics::counter!(CALLS, "breaker" => name.clone(), "outcome" => outcome);
        Self {
            state: metrics::gauge!(STATE, "breaker" => name.clone()),
            success: calls("success"),
            failure: calls("failure"),
            ignored: calls("ignored"),
            rejected: calls("rejected"),
            slow: metrics::counter!(SLOW_CALLS, "breaker" => name.clone()),
        }
    }
}
