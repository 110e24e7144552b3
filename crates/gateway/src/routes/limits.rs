//! The limit keys of the route file: `rate_limit` (a token bucket per client) and `quota`
//! (so many calls per client in each period), checked as the rest of a route is.
//!
//! ```toml
//! rate_limit = { per_second = 10, burst = 20 }   # 20 at once, then 10 a second
//! quota = { limit = 1000, period = "1d" }         # 1,000 calls a day (UTC)
//! ```

use std::time::Duration;

use flotilla_resilience::ratelimit::RateLimitConfig;
use serde::Deserialize;

/// The longest quota period: a leap year.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);

/// A route's limits per client; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// The token bucket (`rate_limit`).
    pub rate: Option<Rate>,
    /// The calls allowed in each period (`quota`).
    pub quota: Option<Quota>,
}

impl Limits {
    /// Whether the route limits anything.
    pub fn any(&self) -> bool {
        self.rate.is_some() || self.quota.is_some()
    }
}

/// A token bucket: `burst` calls at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(RateLimitConfig);

// Checked on construction: the rate is a number, never NaN, so equality is reflexive.
impl Eq for Rate {}

impl Rate {
    /// The bucket as the resilience crate's limiter takes it.
    pub fn config(&self) -> RateLimitConfig {
        self.0
    }

    /// The time a drained bucket takes to fill up again, in whole seconds (at least 1): the
    /// window (`w`) the `RateLimit-Policy` header gives the bucket's quota (`q`, its burst).
    pub fn window_seconds(&self) -> u64 {
        let seconds = f64::from(self.0.burst) / self.0.per_second;
        // Saturating: a rate of 1e-6 with a large burst is longer than anyone waits.
        (seconds.ceil() as u64).max(1)
    }
}

/// So many calls per client in each period: fixed windows aligned on the Unix epoch (UTC), so
/// that a daily quota starts afresh at midnight UTC for every client at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Calls allowed in a period.
    pub limit: u64,
    /// The period, whole seconds from 1 s to [`MAX_PERIOD`].
    pub period: Duration,
}

/// The `rate_limit` key as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RateSpec {
    per_second: f64,
    burst: Option<u32>,
}

impl RateSpec {
    /// The checked bucket: the burst defaults to a second's worth of calls (at least 1).
    pub(super) fn check(self) -> Result<Rate, String> {
        let burst = match self.burst {
            Some(burst) => burst,
            // Saturating; a rate out of range is refused below.
            None => (self.per_second.ceil() as u32).max(1),
        };
        let config = RateLimitConfig {
            per_second: self.per_second,
            burst,
        };
        config
            .validate()
            .map_err(|error| format!("`{}` {}", error.field, error.reason))?;
        Ok(Rate(config))
    }
}

/// The `quota` key as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct QuotaSpec {
    limit: u64,
    period: String,
}

impl QuotaSpec {
    /// The checked quota.
    pub(super) fn check(self) -> Result<Quota, String> {
        if self.limit == 0 {
            return Err(
                "`limit` must be at least 1 (a route nobody may call needs no quota)".into(),
            );
        }
        let period = parse_period(&self.period).ok_or_else(|| {
            format!(
                "`period` `{}`: use second, minute, hour, day, or a number and s, m, h or d \
                 (`15m`), at most 366d",
                self.period
            )
        })?;
        Ok(Quota {
            limit: self.limit,
            period,
        })
    }
}

/// `second`, `minute`, `hour`, `day`, or `N` followed by `s`, `m`, `h` or `d`; from 1 s to
/// [`MAX_PERIOD`].
fn parse_period(text: &str) -> Option<Duration> {
    let unit = |suffix: &str| match suffix {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3_600),
        "d" => Some(86_400),
        _ => None,
    };
    let text = text.trim();
    let named = match text {
        "second" => Some(1),
        "minute" => Some(60),
        "hour" => Some(3_600),
        "day" => Some(86_400),
        _ => None,
    };
    let seconds = match named {
        Some(seconds) => seconds,
        None => {
            let split = text.find(|c: char| !c.is_ascii_digit())?;
            let (number, suffix) = text.split_at(split);
            let number: u64 = number.parse().ok()?;
            number.checked_mul(unit(suffix)?)?
        }
    };
    let period = Duration::from_secs(seconds);
    (seconds > 0 && period <= MAX_PERIOD).then_some(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_names_or_a_number_and_a_unit() {
        let cases = [
            ("second", Some(1)),
            ("minute", Some(60)),
            ("hour", Some(3_600)),
            ("day", Some(86_400)),
            ("15m", Some(900)),
            ("1d", Some(86_400)),
            ("30s", Some(30)),
            ("366d", Some(366 * 86_400)),
            ("367d", None),
            ("0s", None),
            ("d", None),
            ("10", None),
            ("1w", None),
            ("-1d", None),
            ("99999999999999999999d", None),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_period(text),
                seconds.map(Duration::from_secs),
                "{text}"
            );
        }
    }

    #[test]
    fn the_burst_defaults_to_a_seconds_worth_and_the_window_is_the_refill_time() {
        let rate = RateSpec {
            per_second: 2.5,
            burst: None,
        }
        .check()
        .expect("valid");
        assert_eq!(rate.config().burst, 3);
        assert_eq!(
            rate.window_seconds(),
            2,
            "3 tokens at 2.5/s: 1.2 s, rounded up"
        );
        let slow = RateSpec {
            per_second: 0.001,
            burst: None,
        }
        .check()
        .expect("valid");
        assert_eq!(slow.config().burst, 1);
        assert_eq!(slow.window_seconds(), 1_000);
    }
}
