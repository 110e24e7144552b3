//! The circuit breaker's parameters, with their defaults in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which calls the failure and slow-call rates are computed over.
///
/// ```
/// use flotilla_resilience::breaker::Window;
/// let window: Window = serde_json::from_str(r#"{ "kind": "count", "calls": 50 }"#).unwrap();
/// assert_eq!(window, Window::Count { calls: 50 });
/// assert!(serde_json::from_str::<Window>(r#"{ "kind": "count", "millis": 50 }"#).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Window {
    /// The last `calls` calls.
    Count {
        /// Number of calls in the window, from 1 to [`MAX_WINDOW_CALLS`].
        calls: u32,
    },
    /// The calls of the last `millis` milliseconds (resolution: a tenth of the window).
    Time {
        /// Length of the window in milliseconds, from 1 to [`MAX_WINDOW_MILLIS`] (a day).
        millis: u64,
    },
}

/// The longest time window: a day. (Rates over longer spans say little about a target's health
/// now, and the window's arithmetic is in nanoseconds.)
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, MAX_WINDOW_MILLIS, Window};
/// let config = BreakerConfig { window: Window::Time { millis: MAX_WINDOW_MILLIS + 1 }, ..BreakerConfig::default() };
/// assert_eq!(config.validate().unwrap_err().field, "window.millis");
/// ```
pub const MAX_WINDOW_MILLIS: u64 = 24 * 60 * 60 * 1_000;

/// The longest count window: a million calls (the window keeps each call's outcome, so its
/// memory grows with it).
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, MAX_WINDOW_CALLS, Window};
/// let config = BreakerConfig { window: Window::Count { calls: MAX_WINDOW_CALLS + 1 }, ..BreakerConfig::default() };
/// assert_eq!(config.validate().unwrap_err().field, "window.calls");
/// ```
pub const MAX_WINDOW_CALLS: u32 = 1_000_000;

/// Circuit breaker parameters. Every field has a default ([`BreakerConfig::default`]); rates
/// are percentages.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, Window};
/// let config: BreakerConfig = serde_json::from_str(r#"{
///     "window": { "kind": "time", "millis": 10000 },
///     "failure_rate_threshold": 25.0,
///     "minimum_calls": 5
/// }"#).unwrap();
/// assert_eq!(config.window, Window::Time { millis: 10_000 });
/// assert_eq!(config.half_open_permits, 3); // the default
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// The sliding window the rates are computed over. Default: the last 20 calls.
    pub window: Window,
    /// Failure rate (percent of the calls in the window) at or above which the breaker opens.
    /// Default 50.
    pub failure_rate_threshold: f64,
    /// A call that takes at least this long is slow. Default 2 000 ms.
    pub slow_call_duration_ms: u64,
    /// Slow-call rate (percent) at or above which the breaker opens. Default 100 (only when
    /// every call in the window is slow).
    pub slow_call_rate_threshold: f64,
    /// Calls the window must hold before the rates are judged. Default 10.
    pub minimum_calls: u32,
    /// Time spent open before letting trial calls through. Default 5 000 ms.
    pub wait_in_open_ms: u64,
    /// Growth of the open wait each time a half-open trial fails again (1 = constant).
    /// Default 2.
    pub wait_multiplier: f64,
    /// Ceiling of the growing open wait. Default 60 000 ms.
    pub max_wait_in_open_ms: u64,
    /// Trial calls admitted in half-open (at most this many at once; a call that is cancelled or
    /// ignored gives its place back). Default 3.
    pub half_open_permits: u32,
    /// Successful trial calls that close the breaker; one failed or slow trial opens it again.
    /// At most `half_open_permits`. Default 3.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Count { calls: 20 },
            failure_rate_threshold: 50.0,
            slow_call_duration_ms: 2_000,
            slow_call_rate_threshold: 100.0,
            minimum_calls: 10,
            wait_in_open_ms: 5_000,
            wait_multiplier: 2.0,
            max_wait_in_open_ms: 60_000,
            half_open_permits: 3,
            success_threshold: 3,
        }
    }
}

/// A configuration that cannot work; names the field.
///
/// ```
/// use flotilla_resilience::breaker::{BreakerConfig, Window};
/// let config = BreakerConfig { window: Window::Count { calls: 5 }, ..BreakerConfig::default() };
/// let error = config.validate().unwrap_err(); // minimum_calls is 10 by default
/// assert_eq!(error.field, "minimum_calls");
/// assert_eq!(
///     error.to_string(),
///     "invalid circuit breaker setting `minimum_calls`: cannot exceed the calls of a count window"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {component} setting `{field}`: {reason}")]
pub struct ConfigError {
    /// What the setting configures: `circuit breaker` or `retry`.
    pub component: &'static str,
    /// The offending field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

impl BreakerConfig {
    /// Checks every rule between fields.
    ///
    /// ```
    /// use flotilla_resilience::breaker::BreakerConfig;
    /// assert!(BreakerConfig::default().validate().is_ok());
    /// let config = BreakerConfig { success_threshold: 4, ..BreakerConfig::default() };
    /// assert_eq!(config.validate().unwrap_err().field, "success_threshold"); // above half_open_permits
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, reason| {
            Err(ConfigError {
                component: "circuit breaker",
                field,
                reason,
            })
        };
        match self.window {
            Window::Count { calls: 0 } => return fail("window.calls", "must be at least 1"),
            Window::Count { calls } if calls > MAX_WINDOW_CALLS => {
                return fail("window.calls", "cannot exceed 1 000 000");
            }
            Window::Time { millis: 0 } => return fail("window.millis", "must be at least 1"),
            Window::Time { millis } if millis > MAX_WINDOW_MILLIS => {
                return fail("window.millis", "cannot exceed a day (86 400 000)");
            }
            _ => {}
        }
        let rate = |r: f64| r > 0.0 && r <= 100.0;
        if !rate(self.failure_rate_threshold) {
            return fail("failure_rate_threshold", "must be in (0, 100]");
        }
        if !rate(self.slow_call_rate_threshold) {
            return fail("slow_call_rate_threshold", "must be in (0, 100]");
        }
        if self.minimum_calls == 0 {
            return fail("minimum_calls", "must be at least 1");
        }
        if let Window::Count { calls } = self.window
            && self.minimum_calls > calls
        {
            return fail("minimum_calls", "cannot exceed the calls of a count window");
        }
        if self.wait_in_open_ms == 0 {
            return fail("wait_in_open_ms", "must be positive");
        }
        if !(self.wait_multiplier >= 1.0 && self.wait_multiplier.is_finite()) {
            return fail("wait_multiplier", "must be at least 1");
        }
        if self.max_wait_in_open_ms < self.wait_in_open_ms {
            return fail("max_wait_in_open_ms", "cannot be below wait_in_open_ms");
        }
        if self.half_open_permits == 0 {
            return fail("half_open_permits", "must be at least 1");
        }
        if self.success_threshold == 0 || self.success_threshold > self.half_open_permits {
            return fail(
                "success_threshold",
                "must be between 1 and half_open_permits",
            );
        }
        Ok(())
    }

    /// How long to stay open after the `opens_in_a_row`-th consecutive opening (0 for the first).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::breaker::BreakerConfig;
    /// let config = BreakerConfig::default(); // 5 s, doubling, at most 60 s
    /// assert_eq!(config.wait_in_open(0), Duration::from_secs(5));
    /// assert_eq!(config.wait_in_open(2), Duration::from_secs(20));
    /// assert_eq!(config.wait_in_open(4), Duration::from_secs(60)); // 80 s, capped
    /// ```
    pub fn wait_in_open(&self, opens_in_a_row: u32) -> Duration {
        let factor = self
            .wait_multiplier
            .powi(i32::try_from(opens_in_a_row).unwrap_or(i32::MAX));
        let millis = (self.wait_in_open_ms as f64 * factor).min(self.max_wait_in_open_ms as f64);
        Duration::from_millis(millis as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_window(window: Window) -> BreakerConfig {
        BreakerConfig {
            window,
            minimum_calls: 1,
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn windows_beyond_the_bounds_are_refused() {
        for millis in [MAX_WINDOW_MILLIS + 1, u64::MAX / 1_000_000 + 1, u64::MAX] {
            let error = with_window(Window::Time { millis })
                .validate()
                .expect_err("too long");
            assert_eq!(error.field, "window.millis", "{millis}");
        }
        let error = with_window(Window::Count { calls: u32::MAX })
            .validate()
            .expect_err("too many");
        assert_eq!(error.field, "window.calls");
        assert!(
            with_window(Window::Time {
                millis: MAX_WINDOW_MILLIS
            })
            .validate()
            .is_ok()
        );
        assert!(
            with_window(Window::Count {
                calls: MAX_WINDOW_CALLS
            })
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn a_huge_window_from_json_is_refused_by_the_breaker() {
        let config: BreakerConfig = serde_json::from_str(
            r#"{ "window": { "kind": "time", "millis": 18446744073709551615 }, "minimum_calls": 1 }"#,
        )
        .expect("well-formed");
        let error = crate::CircuitBreaker::new("huge", config).expect_err("refused");
        assert_eq!(error.field, "window.millis");
    }
}
