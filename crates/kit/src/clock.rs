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
    fn rfc3339_parses_back_to_about_now() {
        let text = now_rfc3339();
        let parsed = OffsetDateTime::parse(&text, &Rfc3339).expect("RFC 3339");
        let drift = (OffsetDateTime::now_utc() - parsed).whole_seconds().abs();
        assert!(drift < 5, "{text} is {drift} s from now");
    }
}
