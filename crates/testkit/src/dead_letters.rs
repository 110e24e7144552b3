//! Dead letters made the way the relay makes them: a transport that is down and a
//! dead-letter limit of one attempt.

use std::sync::Arc;

use flotilla_messaging::outbox::{self, Relay, RelayConfig};
use flotilla_messaging::{Deliveries, Message, Transport, TransportError};
use sqlx::SqlitePool;

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
