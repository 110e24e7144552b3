//! The transactional outbox and its relay.
//!
//! A service writes a message with [`enqueue`] **in the same local transaction** as the state
//! change the message announces: both commit or neither does. The [`Relay`] then publishes the
//! pending rows through a [`Transport`](crate::Transport) and marks each published only after the transport's
//! acknowledgement: a crash between the two publishes the message again, which the broker's
//! deduplication and the consumers' inbox absorb.
//!
//! Order: rows are read in `seq` order; the messages of one key are published one after the
//! other, and a key whose message failed waits (with backoff) before its next message goes;
//! different keys go concurrently. After `max_attempts` a message is moved to the dead letters,
//! so that one poisoned message does not block its key forever.

//!
//! Layout: this module ([`enqueue`], [`Staged`]), `relay` ([`Relay`] and its settings) and
//! `dead_letters` (listing and replaying what the relay gave up on).

mod dead_letters;
mod relay;

pub use dead_letters::{DeadLetter, Replay, dead_letters, replay_dead_letter, replay_dead_letters};
pub use relay::{Pass, Relay, RelayConfig};

use flotilla_kit::clock;

use crate::{Error, Message, valid_topic};

/// Writes `message` to the outbox within the caller's transaction.
pub fn enqueue(db: &rusqlite::Connection, message: &Message) -> Result<(), Error> {
    Staged::new(message)?.insert(db)
}

/// A message checked and encoded for the outbox, to be written later within a transaction
/// ([`Staged::insert`]).
#[derive(Debug, Clone)]
pub struct Staged {
    message_id: String,
    topic: String,
    key: String,
    envelope: String,
    created_at: i64,
}

impl Staged {
    /// Checks `message`'s topic and encodes it.
    pub fn new(message: &Message) -> Result<Self, Error> {
        if !valid_topic(&message.topic) {
            return Err(Error::InvalidTopic(message.topic.clone()));
        }
        Ok(Self {
            message_id: message.id.to_string(),
            topic: message.topic.clone(),
            key: message.key.clone(),
            envelope: serde_json::to_string(message).map_err(Error::Encode)?,
            created_at: clock::now_micros(),
        })
    }

    /// Writes the row, inside the caller's transaction.
    pub fn insert(&self, db: &rusqlite::Connection) -> Result<(), Error> {
        flotilla_sqlite::execute(
            db,
            "INSERT INTO messaging_outbox (message_id, topic, key, envelope, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &self.message_id,
                &self.topic,
                &self.key,
                &self.envelope,
                &self.created_at,
            ],
        )
        .map_err(flotilla_sqlite::sqlx_error)?;
        Ok(())
    }
}
