//! An event store with one API over two databases, SQLite (the embedded default) and PostgreSQL.
//!
//! * **Streams** ([`EventStore::append`]): an append carries an [`ExpectedVersion`] checked in
//!   its transaction; a batch is appended atomically; a stale expectation is an
//!   [`Error::Conflict`].
//! * **The global log** ([`EventStore::read_all`], [`EventStore::subscribe`]): every event has a
//!   position, gap-free and in commit order, so a reader never finds an event behind one it has
//!   already seen. A [`Subscription`] catches up and then follows live appends with the same
//!   query, so there is no switch-over where events could be missed or repeated.
//! * **Aggregates** ([`aggregate`]): a state folded from its stream, loaded from the latest
//!   snapshot plus the tail ([`Options::snapshot_every`]), saved with optimistic concurrency,
//!   commands retried on conflict ([`EventStore::execute`]), and read as they were at a version
//!   or an instant ([`AsOf`]).
//! * **Upcasting** ([`Upcasters`]): old schema versions of an event are turned into the current
//!   one on every read, so stored events never need rewriting.
//! * **Projections** ([`projection`]): read models kept from the global log, with their
//!   position stored in the same transaction as their rows, rebuildable from zero.
//! * **Outbox hook** ([`EventStore::begin`]): a [`StoreTx`] appends events and lets the caller
//!   write its own rows (an outbox, an idempotency key) in the same transaction.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flotilla_eventstore::{EventStore, ExpectedVersion, NewEvent, Options};
//! use serde_json::json;
//!
//! let store = EventStore::connect("sqlite::memory:", Options::default()).await.unwrap();
//! store.append("account-1", ExpectedVersion::NoStream, vec![
//!     NewEvent::new("Opened", json!({ "owner": "alice" })),
//!     NewEvent::new("Deposited", json!({ "cents": 500 })),
//! ]).await.unwrap();
//! let events = store.read_stream("account-1", 1).await.unwrap();
//! assert_eq!(events.len(), 2);
//! assert_eq!((events[1].version, events[1].position), (2, 2));
//!
//! // A writer that read version 1 loses to the one that wrote version 2.
//! let stale = store.append("account-1", ExpectedVersion::Exact(1), vec![
//!     NewEvent::new("Withdrawn", json!({ "cents": 100 })),
//! ]).await;
//! assert!(matches!(stale, Err(flotilla_eventstore::Error::Conflict { actual: 2, .. })));
//! # });
//! ```

//!
//! Layout: [`store`] (the store and its transaction), `error`, `event` (the event types),
//! [`aggregate`], [`projection`], `subscription`, `upcast`, `backend` (one file per database,
//! the statements both run stated once). A PostgreSQL schema of a test's own is
//! `flotilla_testkit::postgres_schema`.

pub mod aggregate;
mod backend;
mod error;
mod event;
pub mod projection;
pub mod store;
mod subscription;
mod upcast;

pub use crate::aggregate::{Aggregate, AsOf, Loaded};
pub use crate::error::Error;
pub use crate::event::{
    EventContext, ExpectedVersion, Metadata, NewEvent, RecordedEvent, category,
};
pub use crate::projection::{Projection, Projector};
pub use crate::store::{EventStore, Options, StoreTx};
pub use crate::subscription::Subscription;
pub use crate::upcast::Upcasters;

/// Registers the HELP text and unit of every event store metric (call it once the process's
/// recorder exists).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "eventstore_projection_commits_total",
        Unit::Count,
        "Commits of a projection's read model with its checkpoint, by projection"
    );
    describe_gauge!(
        "eventstore_projection_position",
        Unit::Count,
        "The global position a projection has applied, by projection"
    );
    describe_gauge!(
        "eventstore_projection_lag_events",
        Unit::Count,
        "Events recorded but not yet applied by a projection, by projection"
    );
}
