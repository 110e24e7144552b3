//! The gateway's section of the settings (flat keys: `queue_for_later`, `admin_api`,
//! `routes_file`, `access_log`, `access_log_sample`, `workers`) and
//! [`Config`], everything [`crate::run`] reads. Loading the settings is the binary's job.

use flotilla_discovery::InstanceConfig;
use flotilla_kit::settings::{Invalid, Section};
use flotilla_resilience::settings::ResilienceSettings;
use serde::{Deserialize, Serialize};

/// Keys only the gateway reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// Services whose writes the gateway queues while their breaker is open (queue for later),
    /// e.g. `["order"]`; `FLOTILLA_QUEUE_FOR_LATER='["order"]'`.
    pub queue_for_later: Vec<String>,
    /// Serve the operator API (`/admin/breakers`: states, forcing, run-time configuration).
    /// Never enable it where untrusted clients can reach the port.
    pub admin_api: bool,
    /// The route file (see [`crate::routes`]); without one, the shipped routes
    /// (`config/gateway.toml`, built in). `FLOTILLA_ROUTES_FILE=config/gateway.toml`.
    pub routes_file: Option<std::path::PathBuf>,
    /// One structured line per request (see [`crate::access`]). `FLOTILLA_ACCESS_LOG=false`.
    pub access_log: bool,
    /// The share of requests the access log writes, 0 to 1. `FLOTILLA_ACCESS_LOG_SAMPLE=0.1`.
    pub access_log_sample: f64,
    /// The threads serving requests, each with its own runtime and connection pool; 0 (the
    /// default) is one per core, or `TOKIO_WORKER_THREADS` when it is set.
    /// `FLOTILLA_WORKERS=2`.
    pub workers: usize,
}

impl GatewaySettings {
    /// The number of workers `workers` asks for (see there).
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            queue_for_later: Vec::new(),
            admin_api: false,
            routes_file: None,
            access_log: true,
            access_log_sample: 1.0,
            workers: 0,
        }
    }
}

impl Section for GatewaySettings {
    /// Checks the section's rules: the sample is a share, 0 to 1 (any list of services is
    /// valid: a name that matches no route queues nothing).
    fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.access_log_sample) {
            return Err(Invalid::new(
                "access_log_sample",
                "a share of requests, from 0 to 1",
            ));
        }
        Ok(())
    }
}

/// What the gateway reads: how it serves (its registry is required; the identity provider
/// whose tokens the routes need, and the gateway's own client, are `instance.identity`), the
/// breaker and retry policy it puts in front of each upstream, and its own keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Server, discovery (the request deadline, `request_timeout_ms`) and lease.
    pub instance: InstanceConfig,
    /// The breaker and retry policy per upstream service.
    pub resilience: ResilienceSettings,
    /// Queue for later and the operator API.
    pub gateway: GatewaySettings,
}
