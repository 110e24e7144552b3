//! The discovery client: how a Flotilla process joins the registry and finds its peers.
//!
//! * [`Registration`]: self-registration on start, heartbeats at `heartbeat_ms`, registering
//!   again if the registry forgot the instance (it restarted, or the lease ran out during a
//!   pause), and deregistration on shutdown.
//! * [`Discovery`]: a local cache of each service's instances, kept current by a blocking-query
//!   watch on the registry (changes arrive in milliseconds, with no polling);
//!   [`Discovery::send`] calls a service through the [`outbound`] stack (balanced, failing over
//!   to the next instance on a connection error), and an instance that refused a connection is
//!   set aside locally, tried last, until the registry says something new about it.
//! * [`balance`]: one service's load balancer: power of two choices or round robin, traffic split
//!   by version weights with `X-Canary` pins, outlier ejection of instances that keep failing.
//! * [`outbound`]: the client side of every call as one tower stack: timeout, retry, circuit
//!   breaker, bulkhead, balancer, endpoint with failover; the gateway and [`Discovery::send`]
//!   share it.
//! * [`serve`]: the life of a registered process, in order: serve, register, become ready;
//!   on shutdown become not ready, deregister, then drain in-flight requests.
//! * [`DiscoverySettings`]: its section of the settings (the registry's URL, the deadline of a
//!   call), and [`InstanceConfig`], what a registered process reads to serve.

pub mod balance;
mod cache;
mod client;
mod lifecycle;
pub mod outbound;
pub mod pool;
mod registration;
pub mod settings;

pub use cache::{Cache, Endpoint};
pub use client::{Discovery, DiscoveryError};
pub use lifecycle::{Listeners, app, serve, serve_routes, starting};
pub use registration::{Registration, Spec};
pub use settings::{DiscoverySettings, InstanceConfig, Lease};
