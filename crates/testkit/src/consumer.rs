//! A consumer under test on a database of its own ([`TestConsumer`]): a service's handler fed
//! messages as its transport would deliver them, and what it wrote to its outbox (replies,
//! facts) read back; and what a participant's reply to a command must be ([`assert_reply`]).

use std::fmt::Debug;

use flotilla_kit::ServerSettings;
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Handler, Processed};
use sqlx::SqlitePool;

use crate::TempData;

/// A consumer running a handler on a service's database, in a temporary directory.
#[derive(Debug)]
pub struct TestConsumer<H> {
    /// The service's database.
    pub pool: SqlitePool,
    consumer: Consumer<H>,
    _data: TempData,
}

impl<H: Handler> TestConsumer<H> {
    /// Consumer `name` running `handler` on the database the service's `open` opens in a new
    /// directory ([`TempData::with_database`]).
    pub async fn open<E: Debug>(
        name: &str,
        open: impl AsyncFnOnce(&ServerSettings) -> Result<SqlitePool, E>,
        handler: H,
    ) -> Self {
        let (pool, data) = TempData::with_database(open).await;
        Self {
            consumer: Consumer::new(name, pool.clone(), handler),
            pool,
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
