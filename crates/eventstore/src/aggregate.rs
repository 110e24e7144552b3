//! Aggregates: a state that is a fold of its stream's events.
//!
//! An [`Aggregate`] names its stream category, its event type (a serde enum tagged by `type`)
//! and how each event changes it. The store loads it from the latest snapshot plus the events
//! after it ([`EventStore::load`]), saves new events with the version it was loaded at
//! ([`StoreTx::save`]), writes a snapshot each time the stream passes a multiple of
//! [`Options::snapshot_every`](crate::Options::snapshot_every), and reads it as it was at a
//! version or an instant ([`EventStore::load_as_of`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use flotilla_eventstore::{Aggregate, EventContext, EventStore, Metadata, Options};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! struct Account { balance: i64 }
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! #[serde(tag = "type")]
//! enum AccountEvent { Deposited { cents: i64 }, Withdrawn { cents: i64 } }
//!
//! impl Aggregate for Account {
//!     type Event = AccountEvent;
//!     const CATEGORY: &'static str = "account";
//!     fn apply(&mut self, event: &AccountEvent, _: &EventContext) {
//!         match event {
//!             AccountEvent::Deposited { cents } => self.balance += cents,
//!             AccountEvent::Withdrawn { cents } => self.balance -= cents,
//!         }
//!     }
//! }
//!
//! let store = EventStore::connect("sqlite::memory:", Options::default()).await.unwrap();
//! // A command: load, decide, save; retried if another writer got there first.
//! let account = store.execute::<Account, String>("7", 3, &Metadata::default(), |account| {
//!     if account.balance < 0 { return Err("overdrawn".into()); }
//!     Ok(vec![AccountEvent::Deposited { cents: 500 }, AccountEvent::Withdrawn { cents: 200 }])
//! }).await.unwrap();
//! assert_eq!((account.state.balance, account.version), (300, 2));
//! assert_eq!(store.load::<Account>("7").await.unwrap().state.balance, 300);
//! # });
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::backend;
use crate::event::micros;
use crate::{
    Error, EventContext, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StoreTx,
};

/// A state folded from the events of one stream, `<CATEGORY>-<id>`.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync {
    /// The aggregate's events: serialised as a JSON object whose `type` field names the event
    /// (`#[serde(tag = "type")]`).
    type Event: Serialize + DeserializeOwned + Send + Sync;

    /// The stream category (`order` makes streams `order-<id>`).
    const CATEGORY: &'static str;

    /// The version of the state's serialised form: snapshots of another version are ignored
    /// (and replaced), so changing the state's fields only needs this bumped.
    const STATE_VERSION: u32 = 1;

    /// Changes the state by one event.
    fn apply(&mut self, event: &Self::Event, context: &EventContext);

    /// The current schema version of an event type (what new events are written with).
    fn schema_version(_event_type: &str) -> u32 {
        1
    }
}

/// An aggregate as loaded: its state and the stream version it includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The aggregate's id (the stream is `<CATEGORY>-<id>`).
    pub id: String,
    /// The folded state.
    pub state: A,
    /// The number of events folded (0: the stream does not exist).
    pub version: u64,
}

/// A past moment of a stream, for time-travel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After the event of this version.
    Version(u64),
    /// After every event appended at or before this instant.
    Time(OffsetDateTime),
}

/// The stream of aggregate `A` with id `id`.
///
/// ```
/// # use flotilla_eventstore::{Aggregate, EventContext};
/// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Cart;
/// # impl Aggregate for Cart { type Event = serde_json::Value; const CATEGORY: &'static str = "cart";
/// #     fn apply(&mut self, _: &serde_json::Value, _: &EventContext) {} }
/// assert_eq!(flotilla_eventstore::aggregate::stream_of::<Cart>("42"), "cart-42");
/// ```
pub fn stream_of<A: Aggregate>(id: &str) -> String {
    format!("{}-{id}", A::CATEGORY)
}

/// The typed event of a recorded one.
pub fn decode<A: Aggregate>(event: &RecordedEvent) -> Result<A::Event, Error> {
    A::Event::deserialize(&event.data).map_err(|e| Error::Decode {
        position: event.position,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        reason: e.to_string(),
    })
}

/// The envelope of a typed event: its type from the `type` field, its current schema version.
pub fn encode<A: Aggregate>(event: &A::Event, metadata: &Metadata) -> Result<NewEvent, Error> {
    let data = serde_json::to_value(event).map_err(|e| Error::Encode(e.to_string()))?;
    let event_type = match data.get("type") {
        Some(Value::String(name)) => name.clone(),
        _ => {
            return Err(Error::Encode(format!(
                "events of `{}` must serialise as objects with a string `type` field",
                A::CATEGORY
            )));
        }
    };
    let schema_version = A::schema_version(&event_type);
    Ok(NewEvent::new(event_type, data)
        .schema(schema_version)
        .with_metadata(metadata.clone()))
}

impl EventStore {
    /// Loads aggregate `id`: the latest usable snapshot, then the events after it.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, Error> {
        let stream = stream_of::<A>(id);
        let (state, from) = match backend::snapshot(&self.inner.pool, &stream).await? {
            Some((version, state_version, state)) if state_version == A::STATE_VERSION => {
                match serde_json::from_str::<A>(&state) {
                    Ok(state) => (state, version),
                    Err(error) => {
                        tracing::warn!(%stream, %error, "snapshot unreadable; replaying the stream");
                        (A::default(), 0)
                    }
                }
            }
            _ => (A::default(), 0),
        };
        let tail = backend::read_stream(&self.inner.pool, &stream, from + 1, u64::MAX).await?;
        self.folded(id, state, from, tail)
    }

    /// Loads aggregate `id` by replaying its whole stream, ignoring snapshots (for checks and
    /// benchmarks: it must equal [`EventStore::load`]).
    pub async fn replay<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, Error> {
        let rows = backend::read_stream(&self.inner.pool, &stream_of::<A>(id), 1, u64::MAX).await?;
        self.folded(id, A::default(), 0, rows)
    }

    /// Aggregate `id` as it was at `as_of`; `None` if it did not exist yet.
    pub async fn load_as_of<A: Aggregate>(
        &self,
        id: &str,
        as_of: AsOf,
    ) -> Result<Option<Loaded<A>>, Error> {
        let stream = stream_of::<A>(id);
        let pool = &self.inner.pool;
        let rows = match as_of {
            AsOf::Version(0) => Vec::new(),
            AsOf::Version(version) => backend::read_stream(pool, &stream, 1, version).await?,
            AsOf::Time(at) => backend::read_stream_until(pool, &stream, micros(at)).await?,
        };
        if rows.is_empty() {
            return Ok(None);
        }
        self.folded(id, A::default(), 0, rows).map(Some)
    }

    /// Saves `events` on `loaded` in a transaction of its own (see [`StoreTx::save`]).
    pub async fn save<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
        events: &[A::Event],
        metadata: &Metadata,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let mut tx = self.begin().await?;
        let recorded = tx.save(loaded, events, metadata).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Runs a command on aggregate `id`: loads it, asks `decide` for the events, saves them
    /// expecting the loaded version; on a conflict loads again and asks again, at most
    /// `attempts` times. Returns the aggregate after the command, or the command's refusal.
    pub async fn execute<A, E>(
        &self,
        id: &str,
        attempts: u32,
        metadata: &Metadata,
        mut decide: impl FnMut(&A) -> Result<Vec<A::Event>, E> + Send,
    ) -> Result<Loaded<A>, Execute<E>>
    where
        A: Aggregate,
        E: Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut loaded = self.load::<A>(id).await.map_err(Execute::Store)?;
            let events = decide(&loaded.state).map_err(Execute::Refused)?;
            match self.save(&mut loaded, &events, metadata).await {
                Ok(_) => return Ok(loaded),
                Err(Error::Conflict { .. }) if attempt < attempts => {
                    tracing::debug!(aggregate = A::CATEGORY, %id, attempt, "conflict; retrying");
                }
                Err(error) => return Err(Execute::Store(error)),
            }
        }
    }
}

/// Why [`EventStore::execute`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Execute<E> {
    /// The command was refused by the aggregate (an invariant).
    #[error("refused")]
    Refused(E),
    /// The store failed, or the conflicts outlasted the attempts ([`Error::Conflict`]).
    #[error(transparent)]
    Store(Error),
}

impl StoreTx {
    /// Appends `events` to `loaded`'s stream expecting `loaded.version`, applies them to
    /// `loaded`, and writes a snapshot in the same transaction when the stream passes a
    /// multiple of [`Options::snapshot_every`](crate::Options::snapshot_every).
    pub async fn save<A: Aggregate>(
        &mut self,
        loaded: &mut Loaded<A>,
        events: &[A::Event],
        metadata: &Metadata,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let store = self.store.clone();
        save_in(&store, &mut self.tx.conn(), loaded, events, metadata).await
    }
}

async fn save_in<A: Aggregate>(
    store: &EventStore,
    conn: &mut backend::Conn<'_>,
    loaded: &mut Loaded<A>,
    events: &[A::Event],
    metadata: &Metadata,
) -> Result<Vec<RecordedEvent>, Error> {
    let (stream, expected, new) = to_append(loaded, events, metadata)?;
    let recorded = backend::append(conn, &stream, expected, new).await?;
    if let Some(snapshot) = store.apply_recorded(loaded, &recorded, events)? {
        backend::save_snapshot(conn, &snapshot).await?;
    }
    Ok(recorded)
}

/// Loading and saving aggregates inside a caller's own SQLite transaction on this store's
/// database (a message handler's, say), on its connection ([`flotilla_sqlite::transaction`],
/// [`flotilla_sqlite::grouped`], or [`flotilla_sqlite::direct`] within an sqlx transaction):
/// no round trip per statement.
impl EventStore {
    /// Appends `events` after `expected` on `stream`, inside the caller's transaction on `db`.
    pub fn append_on(
        &self,
        db: &rusqlite::Connection,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<crate::NewEvent>,
    ) -> Result<Vec<RecordedEvent>, Error> {
        backend::sqlite::append(db, stream, expected, events)
    }

    /// Loads aggregate `id` inside the caller's transaction on `db`, seeing what that
    /// transaction appended; replays the whole stream (no snapshot), so keep it for short
    /// streams.
    pub fn load_on<A: Aggregate>(
        &self,
        db: &rusqlite::Connection,
        id: &str,
    ) -> Result<Loaded<A>, Error> {
        let rows = backend::sqlite::read_stream(db, &stream_of::<A>(id), 1)?;
        self.folded(id, A::default(), 0, rows)
    }

    /// Appends `events` after `loaded.version` inside the caller's transaction on `db`, applies
    /// them to `loaded`, and writes a snapshot when the stream passes a multiple of
    /// [`Options::snapshot_every`](crate::Options::snapshot_every). Subscriptions of this
    /// process learn of the events at their next poll.
    pub fn save_on<A: Aggregate>(
        &self,
        db: &rusqlite::Connection,
        loaded: &mut Loaded<A>,
        events: &[A::Event],
        metadata: &Metadata,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let (stream, expected, new) = to_append(loaded, events, metadata)?;
        let recorded = backend::sqlite::append(db, &stream, expected, new)?;
        if let Some(snapshot) = self.apply_recorded(loaded, &recorded, events)? {
            backend::sqlite::save_snapshot(db, &snapshot)?;
        }
        Ok(recorded)
    }
}

impl EventStore {
    /// Aggregate `id`: `state` as of version `from`, with the stored `rows` after it folded in
    /// (its version: the last row's, or `from` if none).
    fn folded<A: Aggregate>(
        &self,
        id: &str,
        mut state: A,
        from: u64,
        rows: Vec<backend::StoredEvent>,
    ) -> Result<Loaded<A>, Error> {
        let mut version = from;
        for row in rows {
            let (event, context) = row.into_typed::<A::Event>(&self.inner.options.upcasters)?;
            state.apply(&event, &context);
            version = context.version;
        }
        Ok(Loaded {
            id: id.to_owned(),
            state,
            version,
        })
    }

    /// Applies the `recorded` appends of `events` to `loaded`; returns the snapshot to write
    /// with them when its stream just passed a multiple of
    /// [`Options::snapshot_every`](crate::Options::snapshot_every).
    fn apply_recorded<A: Aggregate>(
        &self,
        loaded: &mut Loaded<A>,
        recorded: &[RecordedEvent],
        events: &[A::Event],
    ) -> Result<Option<backend::Snapshot>, Error> {
        let before = loaded.version;
        for (event, typed) in recorded.iter().zip(events) {
            loaded.state.apply(
                typed,
                &EventContext {
                    version: event.version,
                    recorded_at: event.recorded_at,
                },
            );
            loaded.version = event.version;
        }
        let every = self.options().snapshot_every;
        if every == 0 || loaded.version / every <= before / every {
            return Ok(None);
        }
        let state =
            serde_json::to_string(&loaded.state).map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Some(backend::Snapshot::new(
            stream_of::<A>(&loaded.id),
            loaded.version,
            A::STATE_VERSION,
            state,
        )))
    }
}

/// What saving `events` on `loaded` appends: to its stream, after its version, the events
/// encoded with `metadata`.
fn to_append<A: Aggregate>(
    loaded: &Loaded<A>,
    events: &[A::Event],
    metadata: &Metadata,
) -> Result<(String, ExpectedVersion, Vec<NewEvent>), Error> {
    let new = events
        .iter()
        .map(|event| encode::<A>(event, metadata))
        .collect::<Result<_, _>>()?;
    Ok((
        stream_of::<A>(&loaded.id),
        ExpectedVersion::Exact(loaded.version),
        new,
    ))
}
