//! The service registry: where instances say they exist and clients learn where to go.
//!
//! * [`Registry`] is the state: instances by service, each with a TTL lease renewed by heartbeats,
//!   a health status set by active probes, and a change index that watchers block on.
//! * [`server`] puts it on HTTP (`/v1/registry/...`) and runs the two loops that keep it true:
//!   the sweeper, which evicts instances whose lease ran out, and the prober, which checks every
//!   instance's `/readyz` and takes a failing one out of rotation at once.
//! * [`settings`] is its section of the settings: the lease (heartbeat and TTL) and the probes.
//!
//! How fast a dead instance leaves rotation is the registry's headline figure: a process that
//! dies refuses connections, so the next probe (every `probe_interval_ms`, 500 ms by default)
//! marks it critical; a process that hangs stops heart-beating and is evicted after `ttl_ms`
//! (1.5 s by default). Eureka's defaults take 90 s and more.

mod model;
pub mod server;
pub mod settings;

pub use model::{Instance, Registration, Registry, ServiceSnapshot, Status};
pub use settings::RegistrySettings;
