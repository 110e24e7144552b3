//! The gateway's section of the settings (flat keys: `queue_for_later`, `admin_api`,
//! `routes_file`, `access_log`, `access_log_sample`, `workers`; the `rate_limit` table) and
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
    /// Where the routes' rate limits and quotas are kept (the `rate_limit` table).
    pub rate_limit: RateLimitSettings,
}

/// The `rate_limit` table: where the routes' limits ([`crate::ratelimit`]) are kept. Without
/// `redis_url` each gateway keeps its own; with it, every gateway with the same URL and
/// prefix enforces one limit.
///
/// ```toml
/// [rate_limit]
/// redis_url = "redis://127.0.0.1:6379"   # FLOTILLA_RATE_LIMIT__REDIS_URL
/// on_redis_down = "local"                # or "allow", "deny"
/// redis_timeout_ms = 5
/// redis_retry_ms = 1000
/// key_prefix = "flotilla:ratelimit"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// The Redis server (`redis://[:password@]host:port[/db]` or `unix:///path`); none: the
    /// limits are kept in this process. TLS (`rediss://`) is not built in.
    pub redis_url: Option<String>,
    /// What the limits do while Redis does not answer.
    pub on_redis_down: OnRedisDown,
    /// The longest a call waits for Redis before it counts as down, in milliseconds: a hung
    /// Redis never holds a request longer than this.
    pub redis_timeout_ms: u64,
    /// How often, while Redis is down, the gateway checks whether it is back, in milliseconds.
    pub redis_retry_ms: u64,
    /// The start of every key the limits write: gateways that share a limit share it.
    pub key_prefix: String,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            on_redis_down: OnRedisDown::Local,
            redis_timeout_ms: 5,
            redis_retry_ms: 1_000,
            key_prefix: "flotilla:ratelimit".to_owned(),
        }
    }
}

/// What the limits do while Redis does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisDown {
    /// Each gateway keeps the limits on its own (the default): a client may get the limit
    /// once from each gateway until Redis is back.
    #[default]
    Local,
    /// Every call is let through, uncounted.
    Allow,
    /// Every call of a limited route is refused with 503 `rate-limit-unavailable`.
    Deny,
}

impl OnRedisDown {
    /// Its name in the settings, the log and the metrics.
    pub fn label(self) -> &'static str {
        match self {
            OnRedisDown::Local => "local",
            OnRedisDown::Allow => "allow",
            OnRedisDown::Deny => "deny",
        }
    }
}

impl RateLimitSettings {
    /// The per-call timeout.
    pub fn redis_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.redis_timeout_ms)
    }

    /// The time between checks of a Redis that is down.
    pub fn redis_retry(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.redis_retry_ms)
    }

    /// Checks the table's rules.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(url) = &self.redis_url {
            if url.starts_with("rediss:") {
                return Err(Invalid::new(
                    "rate_limit.redis_url",
                    "TLS (rediss://) is not built in; reach Redis over loopback, a private \
                     network or a TLS tunnel",
                ));
            }
            redis::Client::open(url.as_str()).map_err(|error| {
                Invalid::new(
                    "rate_limit.redis_url",
                    format!("not a Redis URL (redis://host:port or unix:///path): {error}"),
                )
            })?;
        }
        if !(1..=10_000).contains(&self.redis_timeout_ms) {
            return Err(Invalid::new(
                "rate_limit.redis_timeout_ms",
                "from 1 to 10000 milliseconds",
            ));
        }
        if !(10..=600_000).contains(&self.redis_retry_ms) {
            return Err(Invalid::new(
                "rate_limit.redis_retry_ms",
                "from 10 to 600000 milliseconds",
            ));
        }
        let fit = |c: char| c.is_ascii_graphic() && !matches!(c, '{' | '}');
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || !self.key_prefix.chars().all(fit)
        {
            return Err(Invalid::new(
                "rate_limit.key_prefix",
                "1 to 64 printable characters, no space and no brace",
            ));
        }
        Ok(())
    }
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
            rate_limit: RateLimitSettings::default(),
        }
    }
}

impl Section for GatewaySettings {
    /// Checks the section's rules: the sample is a share, 0 to 1 (any list of services is
    /// valid: a name that matches no route queues nothing); the `rate_limit` table's.
    fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.access_log_sample) {
            return Err(Invalid::new(
                "access_log_sample",
                "a share of requests, from 0 to 1",
            ));
        }
        self.rate_limit.validate()
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
