//! How often the token endpoint may be tried, so that passwords and client secrets cannot be
//! guessed at speed, and a flood of requests cannot keep the provider hashing (each check is an
//! Argon2 hash, tens of milliseconds on purpose).
//!
//! Two token buckets (the resilience crate's [`RateLimiter`]), both checked before any secret
//! is:
//!
//! * per source address: every token request takes a token (`token_requests_per_second`, a
//!   burst of five seconds' worth);
//! * per account: every request naming a user (password grant) or a client (client
//!   credentials) takes a token (`attempts_per_account_per_minute`, as a burst and refilled over
//!   a minute), right or wrong: a guesser gets that many tries a minute, whatever the password.
//!
//! Past either, the answer is 429 `/problems/too-many-attempts` with `Retry-After`, and no
//! secret is looked at.

use std::net::IpAddr;
use std::time::Duration;

use flotilla_resilience::ratelimit::{RateLimitConfig, RateLimited, RateLimiter};

use super::IdpSettings;

/// The token endpoint's two limits.
#[derive(Debug)]
pub(super) struct Attempts {
    per_address: RateLimiter<IpAddr>,
    per_account: RateLimiter<String>,
}

impl Attempts {
    /// The limits `settings` set (validated there: both at least 1).
    pub(super) fn new(settings: &IdpSettings) -> Option<Self> {
        let per_second = f64::from(settings.token_requests_per_second.max(1));
        let per_minute = settings.attempts_per_account_per_minute.max(1);
        Some(Self {
            per_address: RateLimiter::new(RateLimitConfig {
                per_second,
                burst: settings.token_requests_per_second.max(1).saturating_mul(5),
            })
            .ok()?,
            per_account: RateLimiter::new(RateLimitConfig {
                per_second: f64::from(per_minute) / 60.0,
                burst: per_minute,
            })
            .ok()?,
        })
    }

    /// One request from `address`.
    pub(super) fn address(&self, address: IpAddr) -> Result<(), Duration> {
        self.per_address
            .check(&address)
            .map_err(|RateLimited { retry_after }| retry_after)
    }

    /// One attempt on `account` (`user:NAME` or `client:ID`).
    pub(super) fn account(&self, account: String) -> Result<(), Duration> {
        self.per_account
            .check(&account)
            .map_err(|RateLimited { retry_after }| retry_after)
    }
}
