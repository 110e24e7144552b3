//! The gateway in front of real upstreams on loopback, found through a real registry.

mod auth;
mod balancing;
mod fallbacks;
mod hardening;
mod harness;
mod ratelimit;
mod ratelimit_redis;
mod transforms;
