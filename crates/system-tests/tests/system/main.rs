//! The whole-system tests, one module per area, in one test executable: one link instead of
//! seven, and every area's tests run in parallel, as a user's `cargo test` runs them.
//!
//! Run them with `cargo test -p flotilla-system-tests` (the NATS ones need
//! `FLOTILLA_TEST_NATS_URL` or a server on `nats://127.0.0.1:4222`; without one they skip,
//! saying so, outside CI).

mod access;
mod breaker;
mod live_check;
mod messaging;
mod metrics;
mod nats;
mod orders;
mod probes;
mod processes;
mod sagas;
