//! What the limits say of a call.

use std::time::Duration;

/// Which of a route's limits refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The token bucket (`rate_limit`).
    Rate,
    /// The quota (`quota`).
    Quota,
}

impl Policy {
    /// Its name in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Policy::Rate => "rate",
            Policy::Quota => "quota",
        }
    }
}

/// What is left of one limit for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Calls left (`r`).
    pub remaining: u64,
    /// Until more calls are allowed (`t`): the next token, or the next quota window.
    pub reset: Duration,
}

/// What is left of each of a route's limits, as far as known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// The bucket's.
    pub rate: Option<Left>,
    /// The quota's.
    pub quota: Option<Left>,
}

/// The verdict on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits; it was counted.
    Admitted(Usage),
    /// Over `policy`'s limit; nothing was counted.
    Refused {
        /// The limit that refused it.
        policy: Policy,
        /// When a call may succeed again.
        retry_after: Duration,
        /// What is left of the limits.
        usage: Usage,
    },
    /// Let through uncounted: the shared store is down and says `allow`.
    Uncounted,
    /// Refused uncounted: the shared store is down and says `deny`.
    Unavailable {
        /// When the store is checked again.
        retry_after: Duration,
    },
}
