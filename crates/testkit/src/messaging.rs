//! What the messaging tests share: a database with the messaging tables, a NATS stream of a
//! test's own, a transport that is down, and dead letters made the way the relay makes them.

use std::sync::Arc;
use std::time::Duration;

use flotilla_messaging::nats::{Nats, NatsConfig};
use flotilla_messaging::outbox::{self, Relay, RelayConfig};
use flotilla_messaging::{Deliveries, Message, Transport, TransportError};
use sqlx::SqlitePool;

use crate::{NATS, TempData};

impl TempData {
    /// Opens (creating it) the database `NAME.db` as [`TempData::pool`] does, with the
    /// messaging tables (outbox, inbox, dead letters) migrated.
    pub async fn messaging_pool(&self, name: &str) -> SqlitePool {
        let pool = self.pool(name).await;
        flotilla_messaging::migrate(&pool)
            .await
            .expect("messaging migrations");
        pool
    }
}

/// A JetStream transport for the server at `url` on a stream of the test's own
/// (`PREFIX_<unique>`, its subjects under a prefix of their own, so tests never see each
/// other's messages), redelivering after `ack_wait`; and the stream's name. `None` when no
/// server answers, having said so (see [`NATS`]; under CI it panics instead).
pub async fn nats_stream(url: &str, prefix: &str, ack_wait: Duration) -> Option<(Nats, String)> {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let stream = format!("{prefix}_{unique}");
    let config = NatsConfig {
        url: url.to_owned(),
        stream: stream.clone(),
        subject_prefix: format!("{}{unique}", prefix.to_lowercase()),
        ack_wait,
        ..NatsConfig::default()
    };
    match Nats::connect(config).await {
        Ok(nats) => Some((nats, stream)),
        Err(error) => NATS.unreachable(url, error),
    }
}

/// A transport that is always down: every publish and every subscription fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownTransport;

impl Transport for DownTransport {
    async fn publish(&self, _message: &Message) -> Result<(), TransportError> {
        Err(TransportError::Unavailable("the broker is down".into()))
    }

    async fn subscribe(
        &self,
        _group: &str,
        _topics: &[&str],
    ) -> Result<Deliveries, TransportError> {
        Err(TransportError::Unavailable("the broker is down".into()))
    }
}

/// Enqueues `messages` in `pool`'s outbox (migrated already) in one transaction, then lets one
/// relay pass over a transport that is down bury them all after one attempt. Panics unless
/// every one of them became a dead letter.
pub async fn bury(pool: &SqlitePool, messages: &[Message]) {
    let mut tx = pool.begin().await.expect("begin");
    flotilla_sqlite::direct(&mut tx, |db| {
        messages
            .iter()
            .try_for_each(|message| outbox::enqueue(db, message))
    })
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    let config = RelayConfig {
        max_attempts: 1,
        ..RelayConfig::default()
    };
    let pass = Relay::new(pool.clone(), Arc::new(DownTransport), config)
        .relay_once()
        .await
        .expect("relay pass");
    assert_eq!(
        usize::try_from(pass.dead).expect("count"),
        messages.len(),
        "{pass:?}"
    );
}
