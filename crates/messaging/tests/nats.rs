//! The NATS JetStream transport against the machine's real server, and the outbox, relay,
//! inbox and consumer around it with a real SQLite database.
//!
//! The server is `FLOTILLA_TEST_NATS_URL` (default `nats://127.0.0.1:4222`); each test uses a
//! stream of its own. Under CI (`CI` set) an unreachable server fails the tests; elsewhere they
//! skip, saying so in a `skipped:` line (`flotilla_testkit::NATS`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_messaging::inbox::{Consumer, Handler, HandlerError, HandlerResult, Processed};
use flotilla_messaging::nats::Nats;
use flotilla_messaging::outbox::{self, Relay, RelayConfig};
use flotilla_messaging::{Message, Transport};
use flotilla_testkit::{NATS, TempData, nats_stream};
use serde_json::json;
use sqlx::SqlitePool;

/// The transport on a stream of this test's own.
async fn connect_nats() -> Option<Nats> {
    nats_stream(&NATS.url(), "TEST", Duration::from_secs(2))
        .await
        .map(|(nats, _)| nats)
}

async fn database() -> (SqlitePool, TempData) {
    let data = TempData::new();
    let pool = data.messaging_pool("service").await;
    (pool, data)
}

fn message(n: i64, key: &str) -> Message {
    Message::new("order.events", "Numbered", key, json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_gets_every_message_and_members_share_a_group() {
    let Some(nats) = connect_nats().await else {
        return;
    };
    let shared_a = nats
        .subscribe("billing", &["order.events"])
        .await
        .expect("a");
    let shared_b = nats
        .subscribe("billing", &["order.events"])
        .await
        .expect("b");
    let audit = nats
        .subscribe("audit", &["order.events"])
        .await
        .expect("audit");
    const COUNT: i64 = 40;
    for n in 0..COUNT {
        nats.publish(&message(n, &format!("k{}", n % 4)))
            .await
            .expect("published");
    }
    let collect = |mut deliveries: flotilla_messaging::Deliveries| async move {
        let mut seen = Vec::new();
        while let Ok(Some(next)) =
            tokio::time::timeout(Duration::from_millis(1500), deliveries.next()).await
        {
            let delivery = next.expect("a delivery");
            seen.push(delivery.message.payload["n"].as_i64().expect("n"));
            delivery.ack().await.expect("acked");
        }
        seen
    };
    let (a, b, all) = tokio::join!(collect(shared_a), collect(shared_b), collect(audit));
    let mut billing: Vec<i64> = a.iter().chain(&b).copied().collect();
    billing.sort_unstable();
    assert_eq!(
        billing,
        (0..COUNT).collect::<Vec<_>>(),
        "each message once in the group"
    );
    let mut all = all;
    all.sort_unstable();
    assert_eq!(
        all,
        (0..COUNT).collect::<Vec<_>>(),
        "another group sees them all"
    );
    nats.delete_stream().await.expect("cleanup");
}

#[tokio::test]
async fn a_message_published_twice_is_delivered_once_and_a_retried_one_comes_back() {
    let Some(nats) = connect_nats().await else {
        return;
    };
    let mut deliveries = nats
        .subscribe("shipping", &["order.events"])
        .await
        .expect("sub");
    let once = message(1, "k");
    nats.publish(&once).await.expect("first");
    nats.publish(&once)
        .await
        .expect("again, deduplicated by id");
    let first = deliveries.next().await.expect("open").expect("delivery");
    assert_eq!(first.message, once);
    assert_eq!(first.attempt, 1);
    first
        .retry(Duration::from_millis(100))
        .await
        .expect("negative ack");
    let again = tokio::time::timeout(Duration::from_secs(5), deliveries.next())
        .await
        .expect("redelivered")
        .expect("open")
        .expect("delivery");
    assert_eq!(again.message.id, once.id);
    assert_eq!(again.attempt, 2);
    again.ack().await.expect("acked");
    // Nothing more: the duplicate publish was dropped, the ack stuck.
    let nothing = tokio::time::timeout(Duration::from_millis(2500), deliveries.next()).await;
    assert!(nothing.is_err(), "no third delivery: {nothing:?}");
    // A message of a topic transports cannot carry is refused, not sent.
    let bad = Message::new("Order Events", "X", "k", json!({}));
    assert!(matches!(
        nats.publish(&bad).await,
        Err(flotilla_messaging::TransportError::Refused(_))
    ));
    nats.delete_stream().await.expect("cleanup");
}

/// Adds each message's `n` to a per-key total, and answers with an event.
struct Totals;

impl Handler for Totals {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        let n = message.payload["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::Reject("no n".into()))?;
        flotilla_sqlite::execute(
            db,
            "INSERT INTO totals (key, total, seen) VALUES ($1, $2, 1)
             ON CONFLICT (key) DO UPDATE SET total = total + excluded.total, seen = seen + 1",
            &[&message.key, &n],
        )
        .and_then(|_| {
            flotilla_sqlite::execute(
                db,
                "INSERT INTO arrivals (key, n) VALUES ($1, $2)",
                &[&message.key, &n],
            )
        })
        .map_err(flotilla_sqlite::sqlx_error)?;
        Ok(vec![
            Message::new(
                "billing.events",
                "Counted",
                message.key.clone(),
                json!({ "n": n }),
            )
            .caused_by(message),
        ])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_inbox_publishes_committed_messages_in_key_order_and_applies_each_once() {
    let Some(nats) = connect_nats().await else {
        return;
    };
    let nats = Arc::new(nats);
    let (producer, _p) = database().await;
    let (consumer_db, _c) = database().await;
    sqlx::query(
        "CREATE TABLE totals (key TEXT PRIMARY KEY, total INTEGER NOT NULL, seen INTEGER NOT NULL)",
    )
    .execute(&consumer_db)
    .await
    .expect("table");
    sqlx::query(
        "CREATE TABLE arrivals (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, n INTEGER)",
    )
    .execute(&consumer_db)
    .await
    .expect("table");

    // 60 messages over 3 keys, each in its own transaction; every 5th transaction rolls back.
    let mut committed: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for n in 0..60i64 {
        let key = format!("order-{}", n % 3);
        let mut tx = producer.begin().await.expect("begin");
        flotilla_sqlite::direct(&mut tx, |db| outbox::enqueue(db, &message(n, &key)))
            .await
            .expect("enqueued");
        if n % 5 == 4 {
            tx.rollback().await.expect("rolled back");
        } else {
            tx.commit().await.expect("committed");
            committed.entry(key).or_default().push(n);
        }
    }
    let relay = Relay::new(producer.clone(), nats.clone(), RelayConfig::default());
    let pass = relay.relay_once().await.expect("relayed");
    assert_eq!(pass.published, 48);
    // A crash after publishing but before marking: every message goes out a second time.
    sqlx::query("UPDATE messaging_outbox SET published_at = NULL")
        .execute(&producer)
        .await
        .expect("forget");
    // The relay publishes them again; the stream drops the repeats by message id.
    let again = relay.relay_once().await.expect("relayed again");
    assert_eq!(again.published, 48);
    let consumer = Consumer::new("billing", consumer_db.clone(), Totals);
    let mut deliveries = nats
        .subscribe("billing", &["order.events"])
        .await
        .expect("sub");
    let mut applied = 0;
    while let Ok(Some(next)) =
        tokio::time::timeout(Duration::from_millis(1500), deliveries.next()).await
    {
        let delivery = next.expect("delivery");
        let copy = delivery.message.clone();
        match consumer.deliver(delivery).await.expect("processed") {
            Processed::Applied => applied += 1,
            other => panic!("unexpected {other:?}"),
        }
        // Redelivery of the same message: the inbox absorbs it.
        assert_eq!(
            consumer.process(&copy).await.expect("again"),
            Processed::Duplicate
        );
    }
    assert_eq!(
        applied, 48,
        "each committed message applied once, none rolled back"
    );
    let arrivals: Vec<(String, i64)> = sqlx::query_as("SELECT key, n FROM arrivals ORDER BY seq")
        .fetch_all(&consumer_db)
        .await
        .expect("arrivals");
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, n) in arrivals {
        by_key.entry(key).or_default().push(n);
    }
    assert_eq!(by_key, committed, "per key, in commit order");
    // The consumer's answers wait in its own outbox, one per applied message.
    let answers: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messaging_outbox")
        .fetch_one(&consumer_db)
        .await
        .expect("count");
    assert_eq!(answers.0, 48);
    nats.delete_stream().await.expect("cleanup");
    let seen: HashSet<i64> = committed.values().flatten().copied().collect();
    assert_eq!(seen.len(), 48);
}

#[tokio::test]
async fn a_publish_that_keeps_failing_backs_off_then_goes_to_the_dead_letters_and_can_be_replayed()
{
    let Some(nats) = connect_nats().await else {
        return;
    };
    let nats = Arc::new(nats);
    let (pool, _dir) = database().await;
    let mut tx = pool.begin().await.expect("begin");
    flotilla_sqlite::direct(&mut tx, |db| {
        outbox::enqueue(db, &message(1, "k1"))?;
        outbox::enqueue(db, &message(2, "k1"))
    })
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    // The broker loses the stream: publishing fails (no stream answers).
    nats.delete_stream().await.expect("stream gone");
    let config = RelayConfig {
        max_attempts: 3,
        base_backoff: Duration::ZERO,
        ..RelayConfig::default()
    };
    let relay = Relay::new(pool.clone(), nats.clone(), config);
    let first = relay.relay_once().await.expect("pass");
    assert_eq!(
        (first.published, first.failed, first.dead),
        (0, 1, 0),
        "the key waits behind its first message"
    );
    relay.relay_once().await.expect("pass");
    let third = relay.relay_once().await.expect("pass");
    assert_eq!(
        third.dead, 1,
        "buried after 3 attempts; the key's next message goes on trying"
    );
    let dead = outbox::dead_letters(&pool).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    // The stream is back: the next message goes, and the dead letter can be replayed after it.
    let nats_again = Arc::new(connect_nats().await.expect("reconnect"));
    let relay = Relay::new(pool.clone(), nats_again.clone(), RelayConfig::default());
    let _ = relay.relay_once().await.expect("pass");
    assert!(
        outbox::replay_dead_letter(&pool, dead[0].seq)
            .await
            .expect("replay")
    );
    assert!(
        !outbox::replay_dead_letter(&pool, dead[0].seq)
            .await
            .expect("gone")
    );
    assert!(outbox::dead_letters(&pool).await.expect("list").is_empty());
    let pending: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM messaging_outbox WHERE published_at IS NULL")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(pending.0, 1, "the replayed message waits for the relay");
    let pass = relay.relay_once().await.expect("pass");
    assert_eq!(pass.published, 1);
    nats_again.delete_stream().await.expect("cleanup");
}
