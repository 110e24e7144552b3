//! A saga participant's commands handler under test, on a database of its own
//! ([`TestConsumer`]): fed messages as its transport would deliver them, what it wrote to its
//! outbox (replies, facts) read back; and what a participant's reply to a command must be
//! ([`assert_reply`], [`assert_reason`]).

use flotilla_kit::ServerSettings;
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Handler, Processed};
use flotilla_messaging::participant::Participant;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::SqlitePool;

use crate::TempData;

/// A participant's commands handler, as its consumer, on its database in a temporary directory.
#[derive(Debug)]
pub struct TestConsumer<H> {
    /// The participant's database.
    pub pool: SqlitePool,
    consumer: Consumer<H>,
    topic: &'static str,
    _data: TempData,
}

impl<H: Handler + Clone> TestConsumer<H> {
    /// The commands handler of `participant`, as its consumer (by its name), on its database
    /// opened in a new directory: what an orchestrator's commands reach.
    pub async fn commands<R, T>(participant: &Participant<H, R, T>) -> Self
    where
        R: Handler + Clone,
        T: DeserializeOwned,
    {
        let open = async |settings: &ServerSettings| participant.open(settings).await;
        let (pool, data) = TempData::with_database(open).await;
        let handler = participant.commands.clone();
        Self {
            consumer: Consumer::new(participant.name, pool.clone(), handler),
            pool,
            topic: participant.commands_topic,
            _data: data,
        }
    }

    /// Processes one delivery of `message` (inbox, effect and outbox in one transaction) and
    /// says what became of it.
    pub async fn process(&self, message: &Message) -> Processed {
        self.consumer.process(message).await.expect("processed")
    }

    /// Asserts that `message` is applied, and that a redelivery of it is a duplicate.
    pub async fn assert_applied_once(&self, message: &Message) {
        assert_eq!(
            self.process(message).await,
            Processed::Applied,
            "{message:?}"
        );
        assert_eq!(self.process(message).await, Processed::Duplicate, "again");
    }

    /// Asserts that `message` is rejected, and that nothing is written to the outbox for it (no
    /// reply, no fact).
    pub async fn assert_rejected(&self, message: &Message) {
        let before = self.outbox().await.len();
        assert_eq!(
            self.process(message).await,
            Processed::Rejected,
            "{message:?}"
        );
        assert_eq!(
            self.outbox().await.len(),
            before,
            "no reply to what was rejected"
        );
    }

    /// Asserts that the outbox holds `count` messages (replies, facts), and returns them in the
    /// order written.
    pub async fn assert_outbox(&self, count: usize) -> Vec<Message> {
        let messages = self.outbox().await;
        assert_eq!(messages.len(), count, "{messages:#?}");
        messages
    }

    /// Asserts that each of `requests` on the participant's commands topic, a message type and
    /// its payload (a type it does not handle, a payload it cannot read), is rejected, with no
    /// reply even when it asks for one on `reply_to`.
    pub async fn assert_rejects(&self, reply_to: Option<&str>, requests: &[(&str, Value)]) {
        for (message_type, payload) in requests {
            let mut request = Message::new(self.topic, *message_type, "k", payload.clone());
            request.reply_to = reply_to.map(str::to_owned);
            self.assert_rejected(&request).await;
        }
    }

    /// Every message in the outbox, in the order written.
    pub async fn outbox(&self) -> Vec<Message> {
        let envelopes: Vec<(String,)> = crate::rows(
            &self.pool,
            "SELECT envelope FROM messaging_outbox ORDER BY seq",
            &[],
        )
        .await;
        envelopes
            .into_iter()
            .map(|(e,)| serde_json::from_str(&e).expect("message"))
            .collect()
    }
}

/// Asserts that `reply` is the answer `message_type` to `command`: on the command's `reply_to`
/// topic, caused by the command, its payload's `ok` as `ok` says.
pub fn assert_reply(reply: &Message, command: &Message, message_type: &str, ok: bool) {
    assert_eq!(reply.message_type, message_type, "{reply:?}");
    assert_eq!(Some(reply.topic.as_str()), command.reply_to.as_deref());
    assert_eq!(reply.causation_id, Some(command.id.to_string()));
    assert_eq!(reply.payload["ok"], ok, "{}", reply.payload);
}

/// Asserts that `reply` gives a reason (its payload's `reason`, as a refusal does) that `holds`
/// for.
pub fn assert_reason(reply: &Message, holds: impl FnOnce(&str) -> bool) {
    assert!(
        reply.payload["reason"].as_str().is_some_and(holds),
        "{}",
        reply.payload
    );
}
