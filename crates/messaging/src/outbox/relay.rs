//! The relay: publishes the outbox's pending rows through a transport, pipelined per key, marks
//! them once acknowledged, retries with backoff and buries what it gives up on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_kit::clock::Clock;
use sqlx::SqlitePool;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::transport::{Transport, TransportError};
use crate::{Error, Message};

/// How the relay works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Rows read per pass. Default 256.
    pub batch: u32,
    /// Attempts before a message is dead-lettered. Default 20.
    pub max_attempts: u32,
    /// First wait after a failed attempt; doubles each time. Default 100 ms.
    pub base_backoff: Duration,
    /// Longest wait between attempts. Default 30 s.
    pub max_backoff: Duration,
    /// How often to look for rows when nobody said there are some. Default 200 ms.
    pub poll_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 256,
            max_attempts: 20,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// What one pass of the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Messages published.
    pub published: u32,
    /// Messages that failed and will be tried again.
    pub failed: u32,
    /// Messages moved to the dead letters.
    pub dead: u32,
}

/// A finished lane: its key, and what it published (or why it stopped).
type LaneDone = (String, Result<(Pass, Vec<i64>), Error>);

/// What the pipelined relay has in flight.
#[derive(Debug, Default)]
struct Flight {
    /// Keys whose lane runs, each with what the lane took.
    keys: HashMap<String, Taken>,
    /// Rows published and not marked yet.
    unmarked: Vec<i64>,
}

impl Flight {
    /// Rows taken by the running lanes.
    fn rows(&self) -> usize {
        self.keys.values().map(|taken| taken.rows).sum()
    }
}

/// The rows a lane took.
#[derive(Debug, Clone, Copy)]
struct Taken {
    /// The last one's sequence number.
    last: i64,
    /// How many.
    rows: usize,
}

/// What a read of the pending rows left behind.
#[derive(Debug, Default)]
struct Read {
    /// Rows it could not take: its limit or the room for lanes ran out.
    full: bool,
    /// Keys in flight with rows after their lane's.
    waiting: HashSet<String>,
}

/// The first `limit` pending rows, in order: how many there were, the rows of keys not in
/// flight, and the keys in flight with rows after their lane's (which wait for it to finish).
/// A row in flight is stepped over without copying it: under a backlog most pending rows are in
/// flight, and copying their envelopes at every read was most of the read's cost (`perf`).
fn read_pending(
    db: &rusqlite::Connection,
    limit: usize,
    in_flight: &HashMap<String, Taken>,
) -> rusqlite::Result<(usize, Vec<Pending>, HashSet<String>)> {
    // No `LIMIT` (a bound one would make SQLite prepare the statement again each time): the
    // pending index gives the order, and the read stops stepping at `limit` rows.
    const PENDING: &str = "SELECT seq, key, envelope, attempts, next_attempt_at \
         FROM messaging_outbox WHERE published_at IS NULL ORDER BY seq";
    let mut statement = db.prepare_cached(PENDING)?;
    let mut found = statement.raw_query();
    let (mut seen, mut rows, mut waiting) = (0, Vec::new(), HashSet::new());
    while seen < limit
        && let Some(row) = found.next()?
    {
        seen += 1;
        let seq: i64 = row.get(0)?;
        let key = row.get_ref(1)?.as_str()?;
        if let Some(taken) = in_flight.get(key) {
            if seq > taken.last && !waiting.contains(key) {
                waiting.insert(key.to_owned());
            }
            continue;
        }
        rows.push(Pending {
            seq,
            key: key.to_owned(),
            envelope: row.get(2)?,
            attempts: row.get(3)?,
            next_attempt_at: row.get(4)?,
        });
    }
    Ok((seen, rows, waiting))
}

/// Publishes the outbox through a transport.
#[derive(Debug)]
pub struct Relay<T> {
    pool: SqlitePool,
    transport: Arc<T>,
    config: RelayConfig,
    wake: Arc<Notify>,
    /// The time backoffs are set by and compared with.
    clock: Clock,
}

#[derive(sqlx::FromRow)]
struct Pending {
    seq: i64,
    key: String,
    envelope: String,
    attempts: i64,
    next_attempt_at: i64,
}

/// `rows` grouped by key, each key's rows in their order; the keys in the order of their first
/// row.
fn by_key(rows: Vec<Pending>) -> (Vec<String>, HashMap<String, Vec<Pending>>) {
    let mut keys: Vec<String> = Vec::new();
    let mut by_key: HashMap<String, Vec<Pending>> = HashMap::new();
    for row in rows {
        if !by_key.contains_key(&row.key) {
            keys.push(row.key.clone());
        }
        by_key.entry(row.key.clone()).or_default().push(row);
    }
    (keys, by_key)
}

impl<T: Transport> Relay<T> {
    /// A relay of the outbox in `pool` through `transport`.
    pub fn new(pool: SqlitePool, transport: Arc<T>, config: RelayConfig) -> Self {
        Self {
            pool,
            transport,
            config,
            wake: Arc::new(Notify::new()),
            clock: Clock::system(),
        }
    }

    /// The relay on `clock` instead of the system's: the retry backoff and the marks are read
    /// from it (tests move a manual clock past a backoff instead of waiting it out).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Notify it after committing an outbox row, so that it does not wait for its next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Publishes until `shutdown`, pipelined: each key's pending messages go out in a lane of
    /// their own, and as soon as a lane is done its key may go again, without waiting for the
    /// other lanes (a slow consumer holds up only its own keys). At most `batch` keys are in
    /// flight at once.
    ///
    /// Published rows are marked by the relay's next read, in the same statement (one round
    /// trip to the database instead of two), or on their own before the relay goes idle; a
    /// crash in between publishes them again, which the consumers' inboxes absorb.
    pub async fn run(self, shutdown: CancellationToken)
    where
        T: Send + Sync + 'static,
    {
        let relay = Arc::new(self);
        let mut lanes: JoinSet<LaneDone> = JoinSet::new();
        let mut flight = Flight::default();
        // Whether a read may find a row to start: a wake, a poll, a lane finishing whose key
        // had rows waiting behind it, or after a read that could not take all it saw.
        let mut look = true;
        let mut read = Read::default();
        let mut looked = tokio::time::Instant::now();
        loop {
            if look {
                looked = tokio::time::Instant::now();
                read = relay
                    .start_lanes(&mut lanes, &mut flight)
                    .await
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, "outbox relay could not read its pending rows");
                        Read {
                            full: true,
                            ..Read::default()
                        }
                    });
            }
            if lanes.is_empty() {
                // No read is coming soon: mark what was published before going idle.
                relay.mark_unmarked(&mut flight).await;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = relay.wake.notified() => {}
                    () = tokio::time::sleep(relay.config.poll_interval) => {}
                }
                look = true;
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    // Rows left unmarked are published again at the next start; consumers
                    // absorb it.
                    lanes.abort_all();
                    relay.mark_unmarked(&mut flight).await;
                    return;
                }
                Some(done) = lanes.join_next() => {
                    let mut finished = vec![done];
                    while let Some(done) = lanes.try_join_next() {
                        finished.push(done);
                    }
                    let keys = relay.finish(finished, &mut flight);
                    // Keys backing off become due even while lanes keep finishing.
                    look = read.full
                        || keys.iter().any(|key| read.waiting.contains(key))
                        || looked.elapsed() >= relay.config.poll_interval
                        || flight.unmarked.len() >= usize::try_from(relay.config.batch).unwrap_or(usize::MAX);
                }
                () = relay.wake.notified() => look = true,
                // Keys backing off become due.
                () = tokio::time::sleep(relay.config.poll_interval) => look = true,
            }
        }
    }

    /// Marks the published rows not marked yet; on failure they stay for the next try.
    async fn mark_unmarked(&self, flight: &mut Flight) {
        if flight.unmarked.is_empty() {
            return;
        }
        match self.mark(&flight.unmarked).await {
            Ok(()) => flight.unmarked.clear(),
            // Published again later, which the consumers' inboxes absorb.
            Err(error) => tracing::warn!(%error, "outbox relay could not mark published rows"),
        }
    }

    /// Marks the rows published since the last read, reads the pending rows and starts a lane
    /// for every key with a due row that is not in flight, up to the room left.
    async fn start_lanes(
        self: &Arc<Self>,
        lanes: &mut JoinSet<LaneDone>,
        flight: &mut Flight,
    ) -> Result<Read, Error> {
        let batch = usize::try_from(self.config.batch).unwrap_or(usize::MAX);
        let room = batch.saturating_sub(flight.keys.len());
        if room == 0 {
            return Ok(Read {
                full: true,
                ..Read::default()
            });
        }
        // The rows in flight are still pending: read past them.
        let limit = batch.saturating_add(flight.rows());
        // The marks and the read in one turn on the process's connection: direct calls, the
        // rows copied straight from SQLite (through sqlx, every row is a message from its
        // worker thread).
        let marks = if flight.unmarked.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&flight.unmarked).map_err(Error::Encode)?)
        };
        let read = |db: &rusqlite::Connection| {
            if let Some(seqs) = &marks {
                flotilla_sqlite::execute(
                    db,
                    "UPDATE messaging_outbox SET published_at = $1 \
                     WHERE seq IN (SELECT value FROM json_each($2))",
                    &[&self.clock.now_micros(), seqs],
                )
                .map_err(flotilla_sqlite::sqlx_error)?;
            }
            read_pending(db, limit, &flight.keys)
                .map_err(|e| Error::from(flotilla_sqlite::sqlx_error(e)))
        };
        // With marks to write it is a write transaction (whose `BEGIN` waits for the lock);
        // otherwise a read.
        let (seen, rows, waiting) = if marks.is_some() {
            flotilla_sqlite::transaction(&self.pool, read).await?
        } else {
            flotilla_sqlite::call(&self.pool, read).await?
        };
        if marks.is_some() {
            flight.unmarked.clear();
            metrics::counter!("messaging_outbox_mark_commits_total").increment(1);
        }
        let mut read = Read {
            full: seen >= limit,
            waiting,
        };
        let (keys, mut by_key) = by_key(rows);
        let now = self.clock.now_micros();
        if keys.len() > room {
            read.full = true;
        }
        for key in keys.into_iter().take(room) {
            let Some(rows) = by_key.remove(&key) else {
                continue;
            };
            // A key backing off waits for the poll that finds it due.
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                continue;
            };
            if first.next_attempt_at > now {
                continue;
            }
            flight.keys.insert(
                key.clone(),
                Taken {
                    last: last.seq,
                    rows: rows.len(),
                },
            );
            let relay = Arc::clone(self);
            lanes.spawn(async move {
                let lane = relay.relay_key(rows, now).await;
                (key, lane)
            });
        }
        Ok(read)
    }

    /// Takes in the finished lanes: their published rows wait to be marked, their keys may go
    /// again. Returns those keys.
    fn finish(
        &self,
        finished: Vec<Result<LaneDone, tokio::task::JoinError>>,
        flight: &mut Flight,
    ) -> Vec<String> {
        let mut pass = Pass::default();
        let mut done = Vec::new();
        for lane in finished {
            match lane {
                Ok((key, Ok((lane, seqs)))) => {
                    pass.published += lane.published;
                    pass.failed += lane.failed;
                    pass.dead += lane.dead;
                    flight.unmarked.extend(seqs);
                    done.push(key);
                }
                Ok((key, Err(error))) => {
                    tracing::warn!(%error, %key, "outbox relay lane failed");
                    done.push(key);
                }
                Err(error) => tracing::error!(%error, "outbox relay lane panicked"),
            }
        }
        for key in &done {
            flight.keys.remove(key);
        }
        self.count(&pass);
        done
    }

    async fn mark(&self, published: &[i64]) -> Result<(), Error> {
        if published.is_empty() {
            return Ok(());
        }
        let seqs = serde_json::to_string(published).map_err(Error::Encode)?;
        flotilla_sqlite::transaction(&self.pool, |db| {
            flotilla_sqlite::execute(
                db,
                "UPDATE messaging_outbox SET published_at = $1 \
                 WHERE seq IN (SELECT value FROM json_each($2))",
                &[&self.clock.now_micros(), &seqs],
            )
            .map_err(flotilla_sqlite::sqlx_error)
        })
        .await?;
        metrics::counter!("messaging_outbox_mark_commits_total").increment(1);
        Ok(())
    }

    fn count(&self, pass: &Pass) {
        if pass.published > 0 {
            metrics::counter!("messaging_outbox_published_total")
                .increment(u64::from(pass.published));
        }
        if pass.dead > 0 {
            metrics::counter!("messaging_outbox_dead_lettered_total")
                .increment(u64::from(pass.dead));
        }
    }

    /// One pass over the pending rows, every key's lane finished before it returns (tests and
    /// tools; [`Relay::run`] pipelines them).
    pub async fn relay_once(&self) -> Result<Pass, Error> {
        let rows: Vec<Pending> = sqlx::query_as(
            "SELECT seq, key, envelope, attempts, next_attempt_at FROM messaging_outbox
             WHERE published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(i64::from(self.config.batch))
        .fetch_all(&self.pool)
        .await?;
        let (keys, mut by_key) = by_key(rows);
        let now = self.clock.now_micros();
        let lanes = keys
            .into_iter()
            .filter_map(|key| by_key.remove(&key))
            .map(|rows| self.relay_key(rows, now));
        let mut pass = Pass::default();
        let mut published = Vec::new();
        for lane in futures_util::future::join_all(lanes).await {
            let (lane, seqs) = lane?;
            pass.published += lane.published;
            pass.failed += lane.failed;
            pass.dead += lane.dead;
            published.extend(seqs);
        }
        // One write for the whole pass: a crash before it publishes these again, which the
        // transport's deduplication and the consumers' inboxes absorb.
        self.mark(&published).await?;
        self.count(&pass);
        Ok(pass)
    }

    /// Publishes one key's rows in order, stopping at the first that must wait; returns the
    /// pass's counts and the rows published (marked by the caller, all at once).
    async fn relay_key(&self, rows: Vec<Pending>, now: i64) -> Result<(Pass, Vec<i64>), Error> {
        let mut pass = Pass::default();
        let mut published = Vec::new();
        for row in rows {
            if row.next_attempt_at > now {
                break; // backing off: later messages of this key wait too
            }
            let outcome = match serde_json::from_str::<Message>(&row.envelope) {
                Ok(message) => self.transport.publish(&message).await,
                Err(error) => Err(TransportError::Refused(format!("unreadable row: {error}"))),
            };
            match outcome {
                Ok(()) => {
                    published.push(row.seq);
                    pass.published += 1;
                }
                Err(error) => {
                    let attempts = row.attempts + 1;
                    let refused = matches!(error, TransportError::Refused(_));
                    if refused || attempts >= i64::from(self.config.max_attempts) {
                        self.bury(row.seq, attempts, &error.to_string()).await?;
                        pass.dead += 1;
                        tracing::error!(seq = row.seq, %error, attempts, "outbox message dead-lettered");
                        continue; // the key's next message may go
                    }
                    let wait = self.backoff(attempts);
                    sqlx::query(
                        "UPDATE messaging_outbox SET attempts = $1, next_attempt_at = $2, last_error = $3 WHERE seq = $4",
                    )
                    .bind(attempts)
                    .bind(self.clock.micros_after(wait))
                    .bind(error.to_string())
                    .bind(row.seq)
                    .execute(&self.pool)
                    .await?;
                    pass.failed += 1;
                    tracing::warn!(seq = row.seq, %error, attempts, ?wait, "outbox publish failed; will retry");
                    break;
                }
            }
        }
        Ok((pass, published))
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.config
            .base_backoff
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.config.max_backoff)
    }

    async fn bury(&self, seq: i64, attempts: i64, error: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO messaging_dead_letters (seq, message_id, topic, key, envelope, attempts, last_error, dead_at)
             SELECT seq, message_id, topic, key, envelope, $1, $2, $3 FROM messaging_outbox WHERE seq = $4",
        )
        .bind(attempts)
        .bind(error)
        .bind(self.clock.now_micros())
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM messaging_outbox WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
