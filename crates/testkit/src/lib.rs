//! What the workspace's tests share, so that no test file copies it: bounded waits for a
//! condition ([`eventually`], [`wait_until`], [`eventually_blocking`]) or for a condition to
//! stay true ([`holds_for`]); temporary data directories with their SQLite databases and
//! settings ([`TempData`]), or an in-memory database ([`memory_database`]); the servers some
//! tests need ([`POSTGRES`], [`NATS`], [`REDIS`]), with the one way a test skips, saying so, when a server
//! is missing ([`skip`]); a PostgreSQL schema of a test's own ([`postgres_schema`]); a registry
//! of a test's own ([`start_registry`], [`register_instance`]) and instances served on loopback
//! ([`serve_instance`], [`dead_address`]); dead letters made as the relay makes them
//! ([`bury`], over a [`DownTransport`]); a NATS stream of a test's own ([`nats_stream`]); one
//! test body run per variant of a backend or a style ([`for_each_variant!`]); a number or a
//! column read from a test database ([`number`], [`numbers`]); and the whole body of an HTTP
//! response ([`body_bytes`]). For the tests of a service's database: a test's own look at it
//! ([`row`], [`rows`], [`value`], [`by_hand`]), a step in a write transaction of its own
//! ([`in_transaction`]), a checker that must find nothing ([`assert_no_violations`]), and a saga
//! participant's commands handler fed messages as its transport would deliver them
//! ([`TestConsumer`], [`assert_reply`], [`assert_reason`]).
//!
//! For tests only: a dev-dependency of the crates, and a dependency of the system-test crate
//! (itself only tests); no library or binary that ships depends on it. It knows no service
//! and no service's wire format (the messaging envelope is `flotilla-messaging`'s); fakes of a
//! service belong to that service's tests.

mod body;
mod consumer;
mod data;
mod identity;
mod instance;
mod messaging;
mod postgres;
mod registry;
mod servers;
mod sql;
mod variants;
mod wait;

pub use body::body_bytes;
pub use consumer::{TestConsumer, assert_reason, assert_reply};
pub use data::{TempData, memory_database};
pub use identity::{PLATFORM_SECRET, TestIdp};
pub use instance::{dead_address, serve_instance};
pub use messaging::{DownTransport, bury, nats_stream};
pub use postgres::{PgSchema, postgres_schema};
pub use registry::{register_instance, register_instance_with, start_registry};
pub use servers::{NATS, POSTGRES, REDIS, Server, in_ci, skip};
pub use sql::{assert_no_violations, by_hand, in_transaction, number, numbers, row, rows, value};
pub use wait::{POLL, eventually, eventually_blocking, eventually_every, holds_for, wait_until};
