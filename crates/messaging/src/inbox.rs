//! The idempotent inbox and the consumer loop.
//!
//! Every delivery is processed in one local transaction that (1) records the message id in the
//! inbox, (2) applies the handler's effect, and (3) writes the messages the handler answers with
//! to the outbox. A redelivered message finds its id already recorded and is acknowledged
//! without running the handler again: at-least-once delivery, exactly-once effect.
//!
//! Under load the consumer commits deliveries in groups ([`Consumer::process_batch`]): the
//! deliveries already waiting (at most [`BATCH`]) are processed one after the other, in order,
//! in one transaction, and settled once it commits. One commit then carries many messages'
//! inbox rows, effects and outgoing messages, and pages they share are written once. If any
//! handler asks for a retry or the database fails, the whole group is rolled back and each
//! message is processed alone, so one message's failure never costs another its effect.

use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::transport::{Delivery, Transport};
use crate::{Error, Message, outbox};

/// Claims every message id of `message_ids` for `consumer` in one statement, within the caller's
/// transaction; returns the ids claimed now (not processed before). An id listed twice is
/// claimed once.
pub fn claim_all(
    db: &rusqlite::Connection,
    consumer: &str,
    message_ids: &[String],
) -> Result<std::collections::HashSet<String>, Error> {
    let now = flotilla_kit::clock::now_micros();
    let ids = serde_json::to_string(message_ids).map_err(Error::Encode)?;
    // `WHERE true` tells SQLite's parser that `ON CONFLICT` is the upsert clause.
    let claimed = flotilla_sqlite::query(
        db,
        "INSERT INTO messaging_inbox (consumer, message_id, processed_at)
         SELECT DISTINCT $1, value, $2 FROM json_each($3) WHERE true
         ON CONFLICT (consumer, message_id) DO NOTHING RETURNING message_id",
        &[&consumer, &now, &ids],
        |row| row.get::<_, String>(0),
    )
    .map_err(flotilla_sqlite::sqlx_error)?;
    Ok(claimed.into_iter().collect())
}

/// Why a handler did not process a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (a dependency is down): the message is delivered again.
    #[error("retry later: {0}")]
    Retry(String),
    /// The message can never be processed (unreadable, unknown type): it is acknowledged and
    /// logged, and its effect is nothing.
    #[error("rejected: {0}")]
    Reject(String),
    /// The database failed: retried.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What [`Handler::handle`] returns: the messages to publish because of the one handled, or
/// why it was not handled.
pub type HandlerResult = Result<Vec<Message>, HandlerError>;

/// What a consumer does with a message.
pub trait Handler: Send + Sync + 'static {
    /// Applies `message`'s effect on `db`, inside the consumer's transaction, and returns the
    /// messages to publish because of it (events, replies); they are written to the outbox in
    /// the same transaction. The consumer runs a whole group of messages (claims, effects,
    /// outgoing messages) on the process's connection in one transaction
    /// ([`flotilla_sqlite::transaction`]), each statement prepared once for the group.
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult;

    /// Called once `message`'s effect has committed (not for duplicates or rejections): wake
    /// whoever waits for it, such as a request waiting for an order's final state. Nothing by
    /// default.
    fn committed(&self, message: &Message) {
        let _ = message;
    }
}

/// Two handlers behind one consumer: messages on `topic` go to the first, all others to the
/// second — a saga participant's commands and its reactions to other services' events, say.
///
/// ```
/// use flotilla_messaging::inbox::{ByTopic, Handler, HandlerResult};
/// use flotilla_messaging::Message;
///
/// struct Named(&'static str);
/// impl Handler for Named {
///     fn handle(&self, _db: &rusqlite::Connection, message: &Message) -> HandlerResult {
///         Ok(vec![Message::new("seen", self.0, message.key.clone(), serde_json::json!({}))])
///     }
/// }
/// let participant = ByTopic::new("payment.commands", Named("command"), Named("reaction"));
/// assert_eq!(participant.topic(), "payment.commands");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ByTopic<A, B> {
    topic: &'static str,
    on_topic: A,
    otherwise: B,
}

impl<A, B> ByTopic<A, B> {
    /// `on_topic` handles the messages on `topic`, `otherwise` every other.
    pub const fn new(topic: &'static str, on_topic: A, otherwise: B) -> Self {
        Self {
            topic,
            on_topic,
            otherwise,
        }
    }

    /// The topic that goes to the first handler.
    pub fn topic(&self) -> &'static str {
        self.topic
    }
}

impl<A: Handler, B: Handler> Handler for ByTopic<A, B> {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        if message.topic == self.topic {
            self.on_topic.handle(db, message)
        } else {
            self.otherwise.handle(db, message)
        }
    }

    fn committed(&self, message: &Message) {
        if message.topic == self.topic {
            self.on_topic.committed(message);
        } else {
            self.otherwise.committed(message);
        }
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// The handler ran and its effect committed.
    Applied,
    /// The message had been processed before: nothing ran.
    Duplicate,
    /// The handler rejected it for good.
    Rejected,
    /// It will be delivered again.
    Retried,
}

/// What became of a group.
#[derive(Debug)]
enum Group {
    /// Committed: one outcome per message.
    Done(Vec<Processed>),
    /// A handler asked for a retry: rolled back.
    Retry(String),
    /// A handler failed on the database: rolled back.
    Failed(sqlx::Error),
}

impl From<sqlx::Error> for Group {
    fn from(error: sqlx::Error) -> Self {
        Group::Failed(error)
    }
}

/// Most deliveries committed in one transaction.
pub const BATCH: usize = 64;

/// Runs a handler over a transport's deliveries, with the inbox and the outbox.
#[derive(Debug)]
pub struct Consumer<H> {
    name: String,
    pool: SqlitePool,
    handler: Arc<H>,
    outbox_waker: Option<Arc<Notify>>,
    retry_delay: Duration,
}

impl<H: Handler> Consumer<H> {
    /// Consumer `name` (its group on the transport and its key in the inbox) running `handler`
    /// on the database `pool`.
    pub fn new(name: impl Into<String>, pool: SqlitePool, handler: H) -> Self {
        Self {
            name: name.into(),
            pool,
            handler: Arc::new(handler),
            outbox_waker: None,
            retry_delay: Duration::from_millis(500),
        }
    }

    /// Wakes this relay after each applied message (the handler may have written to the
    /// outbox).
    #[must_use]
    pub fn waking(mut self, relay: Arc<Notify>) -> Self {
        self.outbox_waker = Some(relay);
        self
    }

    /// Processes one delivered message in one transaction: inbox, effect, outbox.
    pub async fn process(&self, message: &Message) -> Result<Processed, Error> {
        match self.group(&[message]).await? {
            Group::Done(outcomes) => Ok(outcomes.into_iter().next().unwrap_or(Processed::Retried)),
            Group::Retry(reason) => {
                tracing::warn!(consumer = %self.name, message_id = %message.id, %reason, "message will be retried");
                Ok(Processed::Retried)
            }
            Group::Failed(error) => Err(error.into()),
        }
    }

    /// Processes `messages` in order in one transaction (group commit); one outcome per
    /// message. If a handler asks for a retry or the database fails, the group is rolled back
    /// and every message is processed alone ([`Consumer::process`]).
    pub async fn process_batch(&self, messages: &[&Message]) -> Result<Vec<Processed>, Error> {
        if let [message] = messages {
            return Ok(vec![self.process(message).await?]);
        }
        match self.try_batch(messages).await {
            Ok(Some(outcomes)) => return Ok(outcomes),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(consumer = %self.name, %error, "group commit failed; processing one by one");
            }
        }
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            outcomes.push(self.process(message).await?);
        }
        Ok(outcomes)
    }

    /// The group commit; `None` when a handler asked for a retry or failed on the database
    /// (everything rolled back).
    async fn try_batch(&self, messages: &[&Message]) -> Result<Option<Vec<Processed>>, Error> {
        match self.group(messages).await? {
            Group::Done(outcomes) => Ok(Some(outcomes)),
            Group::Retry(_) | Group::Failed(_) => Ok(None),
        }
    }

    /// After a group's commit: counts it, logs its rejections, tells the handler of every
    /// applied message and wakes the relay if any was.
    fn committed(
        &self,
        messages: &[&Message],
        outcomes: &[Processed],
        rejections: Vec<(&Message, String)>,
    ) {
        metrics::counter!("messaging_inbox_commits_total", "consumer" => self.name.clone())
            .increment(1);
        for (message, reason) in rejections {
            tracing::error!(consumer = %self.name, message_id = %message.id, message_type = %message.message_type, %reason, "message rejected");
        }
        let mut applied = false;
        for (message, outcome) in messages.iter().zip(outcomes) {
            if *outcome == Processed::Applied {
                self.handler.committed(message);
                applied = true;
            }
        }
        if applied && let Some(waker) = &self.outbox_waker {
            waker.notify_one();
        }
    }

    /// The group commit: one transaction on the process's connection for its claims, effects
    /// and outgoing messages. Rolled back, with the reason, when a handler asks for a retry or
    /// fails on the database.
    async fn group(&self, messages: &[&Message]) -> Result<Group, Error> {
        let ids: Vec<String> = messages.iter().map(|m| m.id.to_string()).collect();
        let handler = &self.handler;
        // `BEGIN IMMEDIATE` to `COMMIT` in one borrow of the handle; an `Err` rolls back.
        let ran = flotilla_sqlite::transaction(&self.pool, |db| {
            let failed = |error: Error| match error {
                Error::Database(error) => Group::Failed(error),
                other => Group::Failed(sqlx::Error::Protocol(other.to_string())),
            };
            let mut claimed = claim_all(db, &self.name, &ids).map_err(failed)?;
            let mut outcomes = Vec::with_capacity(messages.len());
            let mut rejections = Vec::new();
            for (message, id) in messages.iter().zip(&ids) {
                // Removed once taken: the same message twice in a group is applied once.
                if !claimed.remove(id) {
                    outcomes.push(Processed::Duplicate);
                    continue;
                }
                match handler.handle(db, message) {
                    Ok(outgoing) => {
                        for out in &outgoing {
                            outbox::enqueue(db, out).map_err(failed)?;
                        }
                        outcomes.push(Processed::Applied);
                    }
                    // The inbox row stays: a redelivery is a duplicate, not a second rejection.
                    Err(HandlerError::Reject(reason)) => {
                        rejections.push((*message, reason));
                        outcomes.push(Processed::Rejected);
                    }
                    Err(HandlerError::Retry(reason)) => return Err(Group::Retry(reason)),
                    Err(HandlerError::Database(error)) => return Err(Group::Failed(error)),
                }
            }
            Ok((outcomes, rejections))
        })
        .await;
        let (outcomes, rejections) = match ran {
            Ok(done) => done,
            // Rolled back.
            Err(stopped) => return Ok(stopped),
        };
        self.committed(messages, &outcomes, rejections);
        Ok(Group::Done(outcomes))
    }

    /// Settles one delivery after processing it.
    pub async fn deliver(&self, delivery: Delivery) -> Result<Processed, Error> {
        let outcomes = self.deliver_all(vec![delivery]).await?;
        Ok(outcomes.into_iter().next().unwrap_or(Processed::Retried))
    }

    /// Processes `deliveries` as one group ([`Consumer::process_batch`]), then settles each.
    pub async fn deliver_all(&self, deliveries: Vec<Delivery>) -> Result<Vec<Processed>, Error> {
        let messages: Vec<&Message> = deliveries.iter().map(|d| &d.message).collect();
        let outcomes = match self.process_batch(&messages).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                tracing::warn!(consumer = %self.name, %error, "processing failed; will retry");
                vec![Processed::Retried; deliveries.len()]
            }
        };
        let settling =
            deliveries
                .into_iter()
                .zip(&outcomes)
                .map(|(delivery, processed)| async move {
                    match processed {
                        Processed::Retried => delivery.retry(self.retry_delay).await,
                        _ => delivery.ack().await,
                    }
                });
        for settled in futures_util::future::join_all(settling).await {
            if let Err(error) = settled {
                // Unsettled: the transport delivers it again, and the inbox absorbs it.
                tracing::warn!(consumer = %self.name, %error, "could not settle a delivery");
            }
        }
        for processed in &outcomes {
            metrics::counter!("messaging_consumed_total", "consumer" => self.name.clone(), "outcome" => match processed {
                Processed::Applied => "applied",
                Processed::Duplicate => "duplicate",
                Processed::Rejected => "rejected",
                Processed::Retried => "retried",
            })
            .increment(1);
        }
        Ok(outcomes)
    }

    /// Subscribes to `topics` on `transport` as group `name` and processes deliveries in order,
    /// those already waiting in one commit, until `shutdown`.
    pub async fn run<T: Transport>(
        self,
        transport: &T,
        topics: &[&str],
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        self.serve(transport, topics, shutdown).await
    }

    /// [`Consumer::run`] without giving the consumer up (to subscribe again after a failure).
    pub async fn serve<T: Transport>(
        &self,
        transport: &T,
        topics: &[&str],
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let deliveries = transport.subscribe(&self.name, topics).await?;
        self.serve_subscribed(deliveries, shutdown).await
    }

    /// [`Consumer::serve`] on a subscription already made (its first one, made while the
    /// service starts, so that start-up ends only once it is subscribed).
    pub async fn serve_subscribed(
        &self,
        mut deliveries: crate::transport::Deliveries,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = deliveries.next() => next,
            };
            match next {
                None => return Ok(()),
                Some(Ok(delivery)) => {
                    // Whatever else is already waiting goes in the same commit.
                    let mut batch = vec![delivery];
                    while batch.len() < BATCH {
                        match deliveries.try_next() {
                            Some(Ok(delivery)) => batch.push(delivery),
                            Some(Err(error)) => {
                                tracing::warn!(consumer = %self.name, %error, "delivery failed");
                            }
                            None => break,
                        }
                    }
                    self.deliver_all(batch).await?;
                }
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.name, %error, "delivery failed");
                }
            }
        }
    }
}
