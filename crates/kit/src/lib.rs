//! The service kit: the runtime every Flotilla process is built on.
//!
//! It owns what every component needs and none should write twice:
//!
//! | module | what it gives |
//! | --- | --- |
//! | [`settings`] | the server section of the settings (every process reads it) and the error of every section's validation; the binary assembles and loads the sections |
//! | [`telemetry`] | structured logs with `tracing` (JSON when not on a terminal) |
//! | [`problem`] | RFC 9457 `application/problem+json` errors, the one error shape on the wire |
//! | [`json`] | JSON body and query string extractors whose rejections are problems |
//! | [`faults`] | fault injection for demos and tests (`/admin/faults`, off unless enabled) |
//! | [`health`] | `/livez`, `/readyz`, `/startupz` backed by a cheap shared [`health::Health`] handle |
//! | [`metrics`] | the Prometheus recorder and `/metrics`, with per-route request counts and latencies |
//! | [`client`] | the pooled HTTP client for internal calls, with JSON helpers |
//! | [`clock`] | the wall clock as the databases store it: microseconds since the epoch, RFC 3339 |
//! | [`app`] | the HTTP stack every process serves, assembled in one function, and graceful serving |
//! | [`shutdown`] | one cancellation token fired by Ctrl-C, SIGTERM or the death of the supervisor |
//!
//! It does not know about the registry: registering and deregistering around [`server::serve`]
//! is the discovery crate's job. Nor does it hold a database: a service's embedded SQLite
//! database is the `flotilla-sqlite` crate's (kit forbids `unsafe` code; that crate holds the
//! workspace's one audited `unsafe` module).

pub mod app;
pub mod client;
pub mod clock;
pub mod faults;
pub mod health;
pub mod json;
pub mod metrics;
pub mod problem;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use app::App;
pub use health::Health;
pub use json::{Json, Query};
pub use problem::Problem;
pub use server::{
    ConnectionLimits, Routers, Starting, bind_shared, serve, serve_starting, serve_workers,
};
pub use settings::ServerSettings;
