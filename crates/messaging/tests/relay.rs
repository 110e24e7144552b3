//! The running relay is pipelined: a key whose consumer is slow holds up only its own
//! messages; the others are published and marked meanwhile, and each key keeps its order.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flotilla_messaging::outbox::{self, Relay, RelayConfig};
use flotilla_messaging::{Deliveries, Message, Transport, TransportError};
use flotilla_testkit::{TempData, wait_until};
use sqlx::SqlitePool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Publishes at once, except the key `slow`, whose publishes wait for a permit.
struct Gate {
    slow: Semaphore,
    published: Mutex<Vec<(String, i64)>>,
}

impl Transport for Gate {
    async fn publish(&self, message: &Message) -> Result<(), TransportError> {
        if message.key == "slow" {
            let permit = self
                .slow
                .acquire()
                .await
                .map_err(|e| TransportError::Unavailable(e.to_string()))?;
            permit.forget();
        }
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((
                message.key.clone(),
                message.payload["n"].as_i64().unwrap_or(-1),
            ));
        Ok(())
    }

    async fn subscribe(&self, _: &str, _: &[&str]) -> Result<Deliveries, TransportError> {
        Err(TransportError::Unavailable("publish only".into()))
    }
}

/// How long each wait of the test may take.
const PATIENCE: Duration = Duration::from_secs(10);

async fn unpublished(pool: &SqlitePool, key: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM messaging_outbox WHERE published_at IS NULL AND key = $1",
    )
    .bind(key)
    .fetch_one(pool)
    .await
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_holds_up_only_its_own_messages() {
    let data = TempData::new();
    let pool = data.messaging_pool("producer").await;
    let gate = Arc::new(Gate {
        slow: Semaphore::new(0),
        published: Mutex::default(),
    });
    let relay = Relay::new(pool.clone(), gate.clone(), RelayConfig::default());
    let waker = relay.waker();
    let shutdown = CancellationToken::new();
    tokio::spawn(relay.run(shutdown.clone()));

    let enqueue = async |key: &str, n: i64| {
        let mut tx = pool.begin().await.expect("begin");
        let message = Message::new("order.events", "Tested", key, serde_json::json!({ "n": n }));
        flotilla_sqlite::direct(&mut tx, |db| outbox::enqueue(db, &message))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        waker.notify_one();
    };
    enqueue("slow", 1).await;
    enqueue("slow", 2).await;
    for n in 1..=5 {
        enqueue("fast", n).await;
        enqueue(&format!("other-{n}"), n).await;
    }
    wait_until(
        PATIENCE,
        "the other keys are published and marked",
        || async {
            unpublished(&pool, "fast").await == 0 && unpublished(&pool, "other-5").await == 0
        },
    )
    .await;
    assert_eq!(unpublished(&pool, "slow").await, 2, "the slow key waits");
    // A message enqueued now, behind the slow one, goes too.
    enqueue("late", 1).await;
    wait_until(
        PATIENCE,
        "a message enqueued later overtakes the slow key",
        || async { unpublished(&pool, "late").await == 0 },
    )
    .await;
    gate.slow.add_permits(2);
    wait_until(
        PATIENCE,
        "the slow key's messages are published",
        || async { unpublished(&pool, "slow").await == 0 },
    )
    .await;
    shutdown.cancel();
    let published = gate
        .published
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let order = |key: &str| -> Vec<i64> {
        published
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect()
    };
    assert_eq!(order("slow"), [1, 2], "each key in its order");
    assert_eq!(order("fast"), [1, 2, 3, 4, 5]);
}
