//! The wall clock as Flotilla's databases store it.
//!
//! Two encodings, one place each:
//!
//! * **microseconds since the Unix epoch** (`i64`), for the columns that are compared and
//!   ordered: the outbox's `published_at` and `next_attempt_at`, the inbox's `processed_at`, the
//!   saga engine's deadlines and transitions, the event store's `recorded_at`;
//! * **RFC 3339 in UTC** (text), for the columns people read: the participants' `created_at` and
//!   `updated_at`, the gateway's deferred replies.
//!
//! ```
//! use std::time::Duration;
//! use flotilla_kit::clock;
//!
//! let now = clock::now_micros();
//! let later = clock::micros_after(Duration::from_secs(30));
//! assert!(later - now >= 30_000_000);
//! assert!(clock::now_rfc3339().ends_with('Z'));
//! ```
//!
//! Components that act on time stored in a database (the saga engine's step timeouts, the outbox
//! relay's retry backoff) read it through a [`Clock`], the system's by default; their tests
//! give them a [`Clock::manual`] one and move it past a timeout instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `at` in microseconds since the Unix epoch (saturating at `i64`'s bounds, some 292,000 years
/// away).
pub fn micros(at: OffsetDateTime) -> i64 {
    let micros = at.unix_timestamp_nanos() / 1_000;
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    micros(OffsetDateTime::now_utc())
}

/// The time `after` from now, in microseconds since the Unix epoch (a deadline; saturating).
pub fn micros_after(after: Duration) -> i64 {
    now_micros().saturating_add(i64::try_from(after.as_micros()).unwrap_or(i64::MAX))
}

/// Now, RFC 3339 in UTC (`2026-11-26T23:35:06.123456789Z`).
pub fn now_rfc3339() -> String {
    // Formatting fails only for a year beyond 9999, which the system clock does not give.
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| String::from("9999-12-31T23:59:59Z"))
}

/// The wall clock of a component, as microseconds since the Unix epoch: the system's, or a
/// manual one that moves only when told (tests). Cheap to clone; clones of a manual clock share
/// its time.
///
/// ```
/// use std::time::Duration;
/// use flotilla_kit::clock::Clock;
///
/// let clock = Clock::manual(1_000_000);
/// let shared = clock.clone();
/// shared.advance(Duration::from_secs(5));
/// assert_eq!(clock.now_micros(), 6_000_000);
/// assert_eq!(clock.micros_after(Duration::from_millis(1)), 6_001_000);
/// assert!(Clock::system().now_micros() > 1_700_000_000_000_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's wall clock ([`now_micros`]).
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock standing at `micros` since the epoch until [`Clock::advance`] moves it.
    pub fn manual(micros: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(micros))),
        }
    }

    /// A manual clock standing at the system's time now.
    pub fn manual_from_now() -> Self {
        Self::manual(now_micros())
    }

    /// Moves a manual clock forward by `by` (saturating); the system's clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(manual) = &self.manual {
            let by = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
            let _ = manual.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_add(by))
            });
        }
    }

    /// Now, in microseconds since the Unix epoch.
    pub fn now_micros(&self) -> i64 {
        match &self.manual {
            None => now_micros(),
            Some(manual) => manual.load(Ordering::Acquire),
        }
    }

    /// The time `after` from now, in microseconds since the epoch (a deadline; saturating).
    pub fn micros_after(&self, after: Duration) -> i64 {
        self.now_micros()
            .saturating_add(i64::try_from(after.as_micros()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_keep_the_sub_second_part_and_saturate() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .expect("a valid instant");
        assert_eq!(micros(at), 1_700_000_000_123_456);
        let before_epoch =
            OffsetDateTime::from_unix_timestamp_nanos(-1_500).expect("a valid instant");
        assert_eq!(micros(before_epoch), -1);
        assert_eq!(
            micros_after(Duration::MAX),
            i64::MAX,
            "a deadline past the end of time saturates"
        );
    }

    #[test]
    fn a_manual_clock_moves_only_when_told_and_saturates() {
        let clock = Clock::manual(i64::MAX - 10);
        assert_eq!(clock.now_micros(), i64::MAX - 10);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.now_micros(), i64::MAX);
        let system = Clock::system();
        system.advance(Duration::from_secs(3600));
        let drift = (system.now_micros() - now_micros()).abs();
        assert!(
            drift < 5_000_000,
            "the system clock is not moved by advance: {drift}"
        );
    }

    #[test]
    fn rfc3339_parses_back_to_about_now() {
        let text = now_rfc3339();
        let parsed = OffsetDateTime::parse(&text, &Rfc3339).expect("RFC 3339");
        let drift = (OffsetDateTime::now_utc() - parsed).whole_seconds().abs();
        assert!(drift < 5, "{text} is {drift} s from now");
    }
}
