//! The policy keys of the route file: what a route does when its upstream cannot answer
//! (`fallback`), and the policies in front of each upstream service (`[upstreams.NAME]`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use flotilla_discovery::balance::{BalanceConfig, EjectionConfig, Strategy};
use flotilla_discovery::outbound::UpstreamConfig;
use flotilla_resilience::breaker::BreakerConfig;
use flotilla_resilience::bulkhead::BulkheadConfig;
use flotilla_resilience::retry::RetryConfig;
use http::{HeaderValue, StatusCode};
use serde::Deserialize;

/// What a route answers when its upstream fails (no instance, unreachable, timed out, broken,
/// answering 502/503/504) or its breaker is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// The failure's problem (503 with `Retry-After` for an open breaker): the default.
    Error,
    /// For `GET`: the last good (2xx) answer to the same path and query, if younger than
    /// `max_age`, marked `x-fallback: stale` with its `Age`.
    Cached {
        /// Oldest answer still worth giving.
        max_age: Duration,
    },
    /// A fixed answer from the route file, marked `x-fallback: default`.
    Default {
        /// Its status.
        status: StatusCode,
        /// Its `Content-Type`.
        content_type: HeaderValue,
        /// Its body.
        body: Bytes,
    },
    /// The answer of another service, called with the same request, marked
    /// `x-fallback: service`.
    Service(String),
    /// Queue for later: a write with an `Idempotency-Key` that never reached the service is
    /// stored, answered 202, and replayed in order when the service takes calls again.
    Queue,
}

/// The `fallback` key as written.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum FallbackSpec {
    Error,
    Cached {
        max_age_ms: u64,
    },
    Default {
        #[serde(default = "ok")]
        status: u16,
        #[serde(default)]
        body: String,
        #[serde(default = "json")]
        content_type: String,
    },
    Service {
        service: String,
    },
    Queue,
}

fn ok() -> u16 {
    200
}

fn json() -> String {
    "application/json".to_owned()
}

impl FallbackSpec {
    /// The checked fallback, or the reason it is not one.
    pub(super) fn check(self) -> Result<Fallback, String> {
        Ok(match self {
            FallbackSpec::Error => Fallback::Error,
            FallbackSpec::Queue => Fallback::Queue,
            FallbackSpec::Cached { max_age_ms: 0 } => {
                return Err("`max_age_ms` must be above 0".to_owned());
            }
            FallbackSpec::Cached { max_age_ms } => Fallback::Cached {
                max_age: Duration::from_millis(max_age_ms),
            },
            FallbackSpec::Default {
                status,
                body,
                content_type,
            } => Fallback::Default {
                status: StatusCode::from_u16(status)
                    .ok()
                    .filter(|status| !status.is_informational())
                    .ok_or_else(|| format!("`{status}` is no final status"))?,
                content_type: HeaderValue::from_str(&content_type)
                    .map_err(|_| format!("`{content_type}` is no content type"))?,
                body: Bytes::from(body),
            },
            FallbackSpec::Service { service } => Fallback::Service(service),
        })
    }
}

/// `[upstreams.NAME]`: the policies in front of one service. A key left out takes the
/// process's setting (`breaker`, `retry`) or the default.
///
/// ```toml
/// [upstreams.order]
/// breaker = { failure_rate_threshold = 50.0, wait_in_open_ms = 5000 }
/// retry = { max_attempts = 2 }
/// bulkhead = { max_concurrent = 256, max_waiting = 256, max_wait_ms = 1000 }
/// balance = "p2c"                 # or "round_robin"
/// weights = { v1 = 90, v2 = 10 }  # by the instances' `version` metadata
/// canary = "v2"                   # what `X-Canary: always|never` pins to or away from
/// ejection = { consecutive_failures = 5, base_ms = 5000, max_ms = 60000, max_percent = 50 }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// The circuit breaker; the `breaker` setting if left out.
    pub breaker: Option<BreakerConfig>,
    /// The retry policy; the `retry` setting if left out.
    pub retry: Option<RetryConfig>,
    /// The bulkhead; [`DEFAULT_BULKHEAD`] if left out.
    pub bulkhead: Option<BulkheadConfig>,
    /// Power of two choices (the default) or round robin.
    pub balance: Option<Strategy>,
    /// Weights by `version` metadata.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    /// The canary version.
    pub canary: Option<String>,
    /// Passive outlier ejection.
    pub ejection: Option<EjectionConfig>,
}

/// The bulkhead of an upstream whose section names none: wide enough not to limit a healthy
/// service, narrow enough that a stuck one cannot hold every connection of the gateway.
pub const DEFAULT_BULKHEAD: BulkheadConfig = BulkheadConfig {
    max_concurrent: 512,
    max_waiting: 512,
    max_wait_ms: 1_000,
};

impl UpstreamSpec {
    /// The balancing part.
    pub fn balance(&self) -> BalanceConfig {
        BalanceConfig {
            balance: self.balance.unwrap_or_default(),
            weights: self.weights.clone(),
            canary: self.canary.clone(),
            ejection: self.ejection.unwrap_or_default(),
        }
    }

    /// The key that breaks a rule, and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(breaker) = &self.breaker {
            breaker
                .validate()
                .map_err(|error| ("breaker", error.to_string()))?;
        }
        if let Some(retry) = &self.retry {
            retry
                .validate()
                .map_err(|error| ("retry", error.to_string()))?;
        }
        if let Some(bulkhead) = &self.bulkhead
            && bulkhead.max_concurrent == 0
        {
            return Err(("bulkhead", "`max_concurrent` must be above 0".to_owned()));
        }
        self.balance()
            .validate()
            .map_err(|reason| ("balance", reason))
    }

    /// The policies of the upstream, with the process's `breaker` and `retry` settings where
    /// the section names none.
    pub fn config(&self, breaker: &BreakerConfig, retry: &RetryConfig) -> UpstreamConfig {
        UpstreamConfig {
            breaker: Some(self.breaker.clone().unwrap_or_else(|| breaker.clone())),
            retry: Some(self.retry.clone().unwrap_or_else(|| retry.clone())),
            bulkhead: Some(self.bulkhead.unwrap_or(DEFAULT_BULKHEAD)),
            balance: self.balance(),
        }
    }
}
