//! Projections: read models kept up to date from the global log.
//!
//! A [`Projection`] turns events into rows of its own tables. A [`Projector`] feeds it: in one
//! transaction it takes the projection's checkpoint (locked on PostgreSQL; SQLite's write
//! transactions exclude each other anyway), reads the events after it, applies them and moves
//! the checkpoint, so a crash never applies an event twice or skips one, and two projectors (two
//! instances of a service) or a projector and a rebuild never interleave. A rebuild
//! ([`Projector::rebuild`]) empties the tables and replays the whole log in one transaction; a
//! running projector then carries on from the rebuilt checkpoint.
//!
//! Metrics, labelled `projection`: `eventstore_projection_position` (the checkpoint) and
//! `eventstore_projection_lag_events` (events of its category not yet applied).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Error, EventStore, RecordedEvent, StoreTx, backend};

/// Events applied per transaction.
const BATCH: usize = 500;

/// How long a projector waits after a wake before catching up, so that a burst of appends is
/// applied in one round (a projection is behind by up to this much more).
const GATHER: Duration = Duration::from_millis(10);

/// A read model fed by the global log.
pub trait Projection: Send + Sync {
    /// A stable name: the checkpoint's key.
    fn name(&self) -> &str;

    /// The only category it reads (`None`: every event).
    fn category(&self) -> Option<&str> {
        None
    }

    /// Applies one event to the read model, within `tx`. By default (for a projection that
    /// only lives on SQLite) it runs [`Projection::apply_on`] on `tx`'s connection, and fails
    /// on PostgreSQL.
    fn apply(
        &self,
        tx: &mut StoreTx,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            match tx.sqlite() {
                Some(connection) => {
                    flotilla_sqlite::direct(connection, |db| self.apply_on(db, event)).await
                }
                None => Err(Error::Encode(format!(
                    "projection {} applies on SQLite only",
                    self.name()
                ))),
            }
        }
    }

    /// Empties the read model (before a rebuild), within `tx`.
    fn reset(&self, tx: &mut StoreTx) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether [`Projection::apply_on`] does the work on SQLite: then the projector applies a
    /// round's events on the SQLite connection in one go (on the process's own connection, or
    /// on its transaction's borrowed handle, [`flotilla_sqlite::direct`]), each statement
    /// prepared once for the round. False by default.
    const ON_CONNECTION: bool = false;

    /// Applies one event on an SQLite connection, inside the projector's transaction; used when
    /// [`Projection::ON_CONNECTION`] is true. By default it fails.
    fn apply_on(&self, db: &rusqlite::Connection, event: &RecordedEvent) -> Result<(), Error> {
        let _ = (db, event);
        Err(Error::Encode(format!(
            "projection {} does not apply on a connection",
            self.name()
        )))
    }
}

/// Runs a projection against a store.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flotilla_eventstore::{Error, EventStore, ExpectedVersion, NewEvent, Options, Projection, Projector, RecordedEvent, StoreTx};
///
/// /// Counts events per type, in a table of its own.
/// struct Counts;
/// impl Projection for Counts {
///     fn name(&self) -> &str { "counts" }
///     async fn apply(&self, tx: &mut StoreTx, event: &RecordedEvent) -> Result<(), Error> {
///         sqlx::query("INSERT INTO counts (event_type, n) VALUES ($1, 1)
///                      ON CONFLICT (event_type) DO UPDATE SET n = n + 1")
///             .bind(&event.event_type).execute(tx.sqlite().unwrap()).await?;
///         Ok(())
///     }
///     async fn reset(&self, tx: &mut StoreTx) -> Result<(), Error> {
///         sqlx::query("DELETE FROM counts").execute(tx.sqlite().unwrap()).await?;
///         Ok(())
///     }
/// }
///
/// let store = EventStore::connect("sqlite::memory:", Options::default()).await.unwrap();
/// let pool = store.sqlite_pool().unwrap().clone();
/// sqlx::query("CREATE TABLE counts (event_type TEXT PRIMARY KEY, n INTEGER)").execute(&pool).await.unwrap();
/// for _ in 0..3 {
///     store.append("light-1", ExpectedVersion::Any, vec![NewEvent::new("On", serde_json::json!({}))]).await.unwrap();
/// }
/// let projector = Projector::new(store.clone(), Counts);
/// assert_eq!(projector.catch_up().await.unwrap(), 3);
/// assert_eq!(projector.checkpoint().await.unwrap(), 3);
/// assert_eq!(projector.rebuild().await.unwrap(), 3); // same rows, from zero
/// let n: i64 = sqlx::query_scalar("SELECT n FROM counts").fetch_one(&pool).await.unwrap();
/// assert_eq!(n, 3);
/// # });
/// ```
#[derive(Debug)]
pub struct Projector<P> {
    store: EventStore,
    projection: P,
}

impl<P: Projection> Projector<P> {
    /// A projector of `projection` over `store`.
    pub fn new(store: EventStore, projection: P) -> Self {
        Self { store, projection }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The position up to which the projection has applied the log.
    pub async fn checkpoint(&self) -> Result<u64, Error> {
        backend::checkpoint(&self.store.inner.pool, self.projection.name()).await
    }

    /// Events of the projection's category not applied yet.
    pub async fn lag(&self) -> Result<u64, Error> {
        let head = self.store.head(self.projection.category()).await?;
        Ok(head.saturating_sub(self.checkpoint().await?))
    }

    /// Applies everything stored after the checkpoint; returns the number of events applied.
    pub async fn catch_up(&self) -> Result<u64, Error> {
        if P::ON_CONNECTION
            && let backend::Pool::Sqlite(pool) = &self.store.inner.pool
        {
            return self.catch_up_on(pool).await;
        }
        let name = self.projection.name();
        // Nothing new: no write transaction at all (the common case when idle), and one read.
        let (from, head) =
            backend::checkpoint_and_head(&self.store.inner.pool, name, self.projection.category())
                .await?;
        if self.up_to_date(from, head) {
            return Ok(0);
        }
        let mut applied = 0;
        loop {
            let mut tx = self.store.begin().await?;
            let from = backend::lock_checkpoint(&mut tx.tx, name).await?;
            let events = tx.read_all(from, BATCH, self.projection.category()).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                self.report(from, 0);
                return Ok(applied);
            };
            self.apply_all(&mut tx, &events).await?;
            backend::set_checkpoint(&mut tx.tx, name, last).await?;
            tx.commit().await?;
            applied += events.len() as u64;
            if self.committed_page(last, events.len(), head) {
                return Ok(applied);
            }
        }
    }

    /// [`Projector::catch_up`] on SQLite, on the process's connection: one call to see whether
    /// anything is new, then one write transaction per page (checkpoint, events, read model and
    /// new checkpoint with no round trip, where the sqlx path takes six).
    async fn catch_up_on(&self, pool: &sqlx::SqlitePool) -> Result<u64, Error> {
        use flotilla_sqlite::{call, transaction};
        let name = self.projection.name();
        let category = self.projection.category();
        let (from, head) = call(pool, |db| {
            backend::sqlite::checkpoint_and_head(db, name, category)
        })
        .await?;
        if self.up_to_date(from, head) {
            return Ok(0);
        }
        let mut applied = 0;
        loop {
            let (last, count) = transaction(pool, |db| {
                let from = backend::sqlite::lock_checkpoint(db, name)?;
                let rows = backend::sqlite::read_all(db, from, BATCH, category)?;
                let events = self.store.decode(rows)?;
                let Some(last) = events.last().map(|e| e.position) else {
                    return Ok((from, 0));
                };
                for event in &events {
                    self.projection.apply_on(db, event)?;
                }
                backend::sqlite::set_checkpoint(db, name, last)?;
                Ok::<_, Error>((last, events.len()))
            })
            .await?;
            if count == 0 {
                self.report(last, 0);
                return Ok(applied);
            }
            applied += count as u64;
            if self.committed_page(last, count, head) {
                return Ok(applied);
            }
        }
    }

    /// Empties the read model and replays the whole log into it, in one transaction; returns
    /// the number of events applied. Readers see the old rows until it commits; a projector
    /// running meanwhile waits for it and carries on from its checkpoint.
    pub async fn rebuild(&self) -> Result<u64, Error> {
        let name = self.projection.name();
        let mut tx = self.store.begin().await?;
        backend::lock_checkpoint(&mut tx.tx, name).await?;
        self.projection.reset(&mut tx).await?;
        let mut position = 0;
        let mut applied = 0;
        loop {
            let events = tx
                .read_all(position, BATCH, self.projection.category())
                .await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            self.apply_all(&mut tx, &events).await?;
            applied += events.len() as u64;
            position = last;
        }
        backend::set_checkpoint(&mut tx.tx, name, position).await?;
        tx.commit().await?;
        tracing::info!(projection = name, events = applied, "rebuilt");
        self.report(position, self.lag().await.unwrap_or(0));
        Ok(applied)
    }

    /// Keeps the projection up to date until `shutdown`: catches up, then applies new events
    /// as they are committed. Errors are logged and retried after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut head = self.store.watch_head();
        let poll = self.store.options().poll_interval;
        loop {
            head.borrow_and_update();
            let pause = match self.catch_up().await {
                Ok(_) => poll,
                Err(error) => {
                    tracing::warn!(projection = self.projection.name(), %error, "projection failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = head.changed() => {
                    // Let the appends of the next moments join this round: one transaction
                    // for many events instead of one each.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(GATHER) => {}
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Applies `events` in order within `tx`: on its connection in one round trip when the
    /// projection applies there and the store is SQLite, else one by one.
    async fn apply_all(&self, tx: &mut StoreTx, events: &[RecordedEvent]) -> Result<(), Error> {
        if P::ON_CONNECTION
            && let Some(connection) = tx.sqlite()
        {
            return flotilla_sqlite::direct(connection, |db| {
                events
                    .iter()
                    .try_for_each(|event| self.projection.apply_on(db, event))
            })
            .await;
        }
        for event in events {
            self.projection.apply(tx, event).await?;
        }
        Ok(())
    }

    /// Whether the log's head (of the projection's category), `head`, is not past its checkpoint
    /// `from`: then there is nothing to apply, and the projection is reported at `from`.
    fn up_to_date(&self, from: u64, head: u64) -> bool {
        let idle = head <= from;
        if idle {
            self.report(from, 0);
        }
        idle
    }

    /// Counts a committed page of `count` events that ends at position `last`; whether it was
    /// the last page to catch up on (a short page was the whole of what was there when it was
    /// read), reported then against `head`.
    fn committed_page(&self, last: u64, count: usize, head: u64) -> bool {
        let name = self.projection.name().to_owned();
        metrics::counter!("eventstore_projection_commits_total", "projection" => name).increment(1);
        let whole = count < BATCH;
        if whole {
            self.report(last, head.saturating_sub(last));
        }
        whole
    }

    fn report(&self, position: u64, lag: u64) {
        let name = self.projection.name().to_owned();
        metrics::gauge!("eventstore_projection_position", "projection" => name.clone())
            .set(position as f64);
        metrics::gauge!("eventstore_projection_lag_events", "projection" => name).set(lag as f64);
    }
}
