//! Following the global log: catch-up, then live, through the same query.

use std::collections::VecDeque;

use tokio::sync::watch;

use crate::{Error, EventStore, RecordedEvent};

/// Events to read from the database at a time.
const BATCH: usize = 500;

/// A reader of the global log (or of one category) that never misses or repeats an event.
///
/// It reads what is stored after its position, in order; when nothing is left it waits for this
/// process's next commit, or at most [`Options::poll_interval`](crate::Options::poll_interval)
/// for other processes' appends, and reads again. Positions are gap-free and in commit order,
/// so "after my position" is always exactly what is new.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use flotilla_eventstore::{EventStore, ExpectedVersion, NewEvent, Options};
/// let store = EventStore::connect("sqlite::memory:", Options::default()).await.unwrap();
/// let mut subscription = store.subscribe(0, Some("order"));
/// store.append("order-1", ExpectedVersion::Any, vec![NewEvent::new("Placed", serde_json::json!({}))]).await.unwrap();
/// store.append("audit-1", ExpectedVersion::Any, vec![NewEvent::new("Seen", serde_json::json!({}))]).await.unwrap();
/// store.append("order-2", ExpectedVersion::Any, vec![NewEvent::new("Placed", serde_json::json!({}))]).await.unwrap();
/// assert_eq!(subscription.next().await.unwrap().stream_id, "order-1");
/// assert_eq!(subscription.next().await.unwrap().stream_id, "order-2");
/// assert_eq!(subscription.position(), 3);
/// # });
/// ```
#[derive(Debug)]
pub struct Subscription {
    store: EventStore,
    /// The last position read from the database.
    after: u64,
    /// The last position handed out.
    handed: u64,
    category: Option<String>,
    buffer: VecDeque<RecordedEvent>,
    head: watch::Receiver<u64>,
}

impl Subscription {
    pub(crate) fn new(store: EventStore, after: u64, category: Option<String>) -> Self {
        let head = store.watch_head();
        Self {
            store,
            after,
            handed: after,
            category,
            buffer: VecDeque::new(),
            head,
        }
    }

    /// The position of the last event handed out (or the starting position).
    pub fn position(&self) -> u64 {
        self.handed
    }

    /// The next event, waiting for one if the log has none yet.
    pub async fn next(&mut self) -> Result<RecordedEvent, Error> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.handed = event.position;
                return Ok(event);
            }
            let batch = self.next_batch().await?;
            self.buffer.extend(batch);
        }
    }

    /// Every event available now (at most a few hundred), waiting until there is at least one.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, Error> {
        if !self.buffer.is_empty() {
            self.handed = self.after;
            return Ok(self.buffer.drain(..).collect());
        }
        loop {
            // Marked seen before reading: a commit after the read wakes the wait below.
            self.head.borrow_and_update();
            let batch = self
                .store
                .read_all(self.after, BATCH, self.category.as_deref())
                .await?;
            if let Some(last) = batch.last() {
                self.after = last.position;
                self.handed = last.position;
                return Ok(batch);
            }
            let poll = self.store.options().poll_interval;
            tokio::select! {
                _ = self.head.changed() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

impl EventStore {
    /// Follows the global log (of `category` if given) from just after `after`: every event
    /// already stored, then every event appended later, each once and in order.
    pub fn subscribe(&self, after: u64, category: Option<&str>) -> Subscription {
        Subscription::new(self.clone(), after, category.map(str::to_owned))
    }
}
