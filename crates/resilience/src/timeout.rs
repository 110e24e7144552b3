//! A deadline per call: tower's timeout, configured like the other layers.
//!
//! Under a retry it bounds one attempt, and its [`Elapsed`] is retried like a transport error;
//! a deadline of the whole call is tokio's `Elapsed`, which the retry does not retry (see
//! [`retry`](crate::retry)).
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
///
/// ```
/// use flotilla_resilience::timeout::TimeoutConfig;
/// let config: TimeoutConfig = serde_json::from_str("{}").unwrap();
/// assert_eq!(config, TimeoutConfig { timeout_ms: 2_000 }); // the default
/// ```
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
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::timeout::TimeoutConfig;
    /// assert_eq!(TimeoutConfig { timeout_ms: 250 }.duration(), Duration::from_millis(250));
    /// ```
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The layer enforcing it; an expired call fails with [`Elapsed`] (boxed).
    ///
    /// ```
    /// use std::time::Duration;
    /// use flotilla_resilience::timeout::{Elapsed, TimeoutConfig};
    /// use tower::ServiceExt;
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let service = tower::ServiceBuilder::new()
    ///     .layer(TimeoutConfig { timeout_ms: 100 }.layer())
    ///     .service_fn(|_: ()| async {
    ///         tokio::time::sleep(Duration::from_secs(1)).await;
    ///         Ok::<_, std::io::Error>(())
    ///     });
    /// assert!(service.oneshot(()).await.unwrap_err().is::<Elapsed>());
    /// # }
    /// ```
    pub fn layer(&self) -> TimeoutLayer {
        TimeoutLayer::new(self.duration())
    }
}
