//! A deadline per call: tower's timeout, configured like the other layers.
//!
//! ```
//! use flotilla_resilience::timeout::TimeoutConfig;
//! let layer = TimeoutConfig { timeout_ms: 250 }.layer();
//! let service = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|request: u32| async move { Ok::<_, std::convert::Infallible>(request) });
//! # drop(service);
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use tower::timeout::error::Elapsed;
pub use tower::timeout::{Timeout, TimeoutLayer};

/// Timeout parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Deadline of one call (one attempt, under a retry). Default 2 000 ms.
    pub timeout_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self { timeout_ms: 2_000 }
    }
}

impl TimeoutConfig {
    /// The deadline.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The layer enforcing it; an expired call fails with [`Elapsed`] (boxed).
    pub fn layer(&self) -> TimeoutLayer {
        TimeoutLayer::new(self.duration())
    }
}
