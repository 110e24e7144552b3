//! The transport conformance suite: every scenario runs on the embedded HTTP transport (a real
//! registry, real HTTP servers) and on NATS JetStream (the machine's server), end to end from a
//! producer's outbox to consumers' inboxes, with real SQLite databases.
//!
//! NATS is `FLOTILLA_TEST_NATS_URL` (default `nats://127.0.0.1:4222`); under CI an unreachable
//! server fails, elsewhere the NATS half skips, saying so in a `skipped:` line.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_discovery::{Discovery, Registration, Spec};
use flotilla_kit::health::Health;
use flotilla_messaging::embedded::{Embedded, Subscriptions};
use flotilla_messaging::inbox::{Consumer, Handler, HandlerError, HandlerResult};
use flotilla_messaging::nats::Nats;
use flotilla_messaging::outbox::{self, Relay, RelayConfig};
use flotilla_messaging::{Message, Transport};
use flotilla_testkit::{
    NATS, TempData, eventually_every, holds_for, nats_stream, serve_instance, start_registry,
};
use serde_json::json;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

/// The embedded world's push token.
const TOKEN: &str = "conformance-token";
const TOPIC: &str = "order.events";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Embedded,
    Nats,
}

/// A transport set up for one test, and what it needs around it.
struct World {
    kind: Kind,
    shutdown: CancellationToken,
    nats: Option<Arc<Nats>>,
    registry: String,
    publisher: Option<Arc<Embedded>>,
    _registrations: Mutex<Vec<Registration>>,
}

impl World {
    /// A world where `groups` subscribe to the topic (the embedded transport's wiring).
    async fn open(kind: Kind, groups: &[&str]) -> Option<World> {
        let shutdown = CancellationToken::new();
        match kind {
            Kind::Nats => {
                let (nats, _) = nats_stream(&NATS.url(), "CONF", Duration::from_secs(2)).await?;
                Some(World {
                    kind,
                    shutdown,
                    nats: Some(Arc::new(nats)),
                    registry: String::new(),
                    publisher: None,
                    _registrations: Mutex::default(),
                })
            }
            Kind::Embedded => {
                let registry = start_registry(200, &shutdown).await;
                let discovery = Discovery::new(&registry, Duration::from_secs(5), shutdown.clone());
                let wiring = Subscriptions::default().topic(TOPIC, groups.iter().copied());
                Some(World {
                    kind,
                    shutdown,
                    nats: None,
                    registry,
                    // Pushes carry the system's token, and every receiver requires it.
                    publisher: Some(Arc::new(
                        Embedded::new(discovery, wiring).with_token(Some(TOKEN.into())),
                    )),
                    _registrations: Mutex::default(),
                })
            }
        }
    }

    /// Starts one member of consumer group `group` on database `pool`.
    async fn member(&self, group: &str, pool: &SqlitePool, handler: Recorder) {
        let consumer = Consumer::new(group, pool.clone(), handler);
        let shutdown = self.shutdown.clone();
        match self.kind {
            Kind::Nats => {
                let nats = self.nats.clone().expect("nats");
                tokio::spawn(async move { consumer.run(nats.as_ref(), &[TOPIC], shutdown).await });
            }
            Kind::Embedded => {
                // A receiving process: its own transport value, serving the push route.
                let discovery = Discovery::fixed(HashMap::new(), Duration::from_secs(1));
                let receiver = Embedded::new(discovery, Subscriptions::default())
                    .with_token(Some(TOKEN.into()));
                let address = serve_instance(receiver.routes()).await;
                let deliveries_from = receiver.clone();
                tokio::spawn(
                    async move { consumer.run(&deliveries_from, &[TOPIC], shutdown).await },
                );
                let health = Health::new();
                let registration = Registration::start(
                    Spec {
                        registry: &self.registry,
                        service: group,
                        address: &address,
                        metadata: BTreeMap::from([("topics".to_owned(), TOPIC.to_owned())]),
                        heartbeat: Duration::from_millis(300),
                        ttl: Duration::from_secs(2),
                        token: None,
                    },
                    &health,
                    &self.shutdown,
                )
                .await
                .expect("registered");
                self._registrations.lock().expect("lock").push(registration);
            }
        }
    }

    /// Relays `pool`'s outbox until it is empty (at most 20 s); returns the passes' totals.
    async fn drain(&self, pool: &SqlitePool, config: RelayConfig) -> outbox::Pass {
        match self.kind {
            Kind::Nats => {
                drain(
                    Relay::new(pool.clone(), self.nats.clone().expect("nats"), config),
                    pool,
                )
                .await
            }
            Kind::Embedded => {
                drain(
                    Relay::new(
                        pool.clone(),
                        self.publisher.clone().expect("publisher"),
                        config,
                    ),
                    pool,
                )
                .await
            }
        }
    }

    async fn close(self) {
        self.shutdown.cancel();
        if let Some(nats) = &self.nats {
            nats.delete_stream().await.expect("cleanup");
        }
    }
}

async fn drain<T: Transport>(relay: Relay<T>, pool: &SqlitePool) -> outbox::Pass {
    let total = Mutex::new(outbox::Pass::default());
    eventually_every(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the outbox drained",
        || async {
            let pass = relay.relay_once().await.expect("relay pass");
            let (pending,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM messaging_outbox WHERE published_at IS NULL")
                    .fetch_one(pool)
                    .await
                    .expect("pending");
            let mut total = total.lock().expect("total");
            total.published += pass.published;
            total.failed += pass.failed;
            total.dead += pass.dead;
            match pending {
                0 => Ok(()),
                left => Err(format!("{left} left, {:?}", *total)),
            }
        },
    )
    .await;
    total.into_inner().expect("total")
}

async fn database() -> (SqlitePool, TempData) {
    let data = TempData::new();
    let pool = data.messaging_pool("service").await;
    sqlx::query(
        "CREATE TABLE applied (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .expect("table");
    (pool, data)
}

/// Records every message it applies; asks to retry the messages named in `fail_first` that
/// many times first.
#[derive(Clone, Default)]
struct Recorder {
    fail_first: Arc<Mutex<HashMap<i64, u32>>>,
}

impl Handler for Recorder {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        let n = message.payload["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::Reject("no n".into()))?;
        {
            let mut fail = self.fail_first.lock().expect("lock");
            if let Some(left) = fail.get_mut(&n)
                && *left > 0
            {
                *left -= 1;
                return Err(HandlerError::Retry(format!("{n} fails {left} more times")));
            }
        }
        flotilla_sqlite::execute(
            db,
            "INSERT INTO applied (message_id, key, n) VALUES ($1, $2, $3)",
            &[&message.id.to_string(), &message.key, &n],
        )
        .map_err(flotilla_sqlite::sqlx_error)?;
        Ok(vec![])
    }
}

/// Writes `count` messages over `keys` keys to the outbox, one transaction each; returns the
/// `n`s per key in commit order.
async fn produce(pool: &SqlitePool, count: i64, keys: i64) -> BTreeMap<String, Vec<i64>> {
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for n in 0..count {
        let key = format!("order-{}", n % keys);
        let mut tx = pool.begin().await.expect("begin");
        flotilla_sqlite::direct(&mut tx, |db| {
            outbox::enqueue(
                db,
                &Message::new(TOPIC, "Numbered", key.clone(), json!({ "n": n })),
            )
        })
        .await
        .expect("enqueued");
        tx.commit().await.expect("commit");
        expected.entry(key).or_default().push(n);
    }
    expected
}

/// Waits until `pool` has `count` applied rows (at most 20 s); returns them per key in order.
async fn applied(pool: &SqlitePool, count: usize) -> BTreeMap<String, Vec<i64>> {
    let rows: Vec<(String, i64)> = eventually_every(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "every effect applied",
        || async {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT key, n FROM applied ORDER BY seq")
                    .fetch_all(pool)
                    .await
                    .expect("rows");
            if rows.len() >= count {
                Ok(rows)
            } else {
                Err(format!("{} of {count} applied", rows.len()))
            }
        },
    )
    .await;
    // A little longer: nothing more may arrive.
    holds_for(
        Duration::from_millis(300),
        "no effect applied twice",
        || async {
            let (again,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM applied")
                .fetch_one(pool)
                .await
                .expect("count");
            if again as usize == count {
                Ok(())
            } else {
                Err(format!("{again} applied, not {count}"))
            }
        },
    )
    .await;
    let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, n) in rows {
        by_key.entry(key).or_default().push(n);
    }
    by_key
}

fn sorted(by_key: &BTreeMap<String, Vec<i64>>) -> Vec<i64> {
    let mut all: Vec<i64> = by_key.values().flatten().copied().collect();
    all.sort_unstable();
    all
}

flotilla_testkit::for_each_variant!(
    worker_threads = 4,
    Kind { embedded => Embedded, nats => Nats },
    [
        every_group_applies_every_message_once_in_key_order,
        members_of_a_group_share_its_messages,
        a_message_published_again_takes_effect_once,
        a_consumer_asking_to_retry_gets_the_message_again,
        a_subscriber_that_starts_late_loses_nothing,
    ],
);

async fn every_group_applies_every_message_once_in_key_order(kind: Kind) {
    let Some(world) = World::open(kind, &["inventory", "payment"]).await else {
        return;
    };
    let (producer, _p) = database().await;
    let (inventory, _i) = database().await;
    let (payment, _y) = database().await;
    world
        .member("inventory", &inventory, Recorder::default())
        .await;
    world.member("payment", &payment, Recorder::default()).await;
    let expected = produce(&producer, 45, 3).await;
    let pass = world.drain(&producer, RelayConfig::default()).await;
    assert_eq!(pass.dead, 0);
    assert_eq!(
        applied(&inventory, 45).await,
        expected,
        "inventory: once each, per key in order"
    );
    assert_eq!(
        applied(&payment, 45).await,
        expected,
        "payment: once each, per key in order"
    );
    world.close().await;
}

async fn members_of_a_group_share_its_messages(kind: Kind) {
    let Some(world) = World::open(kind, &["inventory"]).await else {
        return;
    };
    let (producer, _p) = database().await;
    // Two instances of one service share its database.
    let (inventory, _i) = database().await;
    world
        .member("inventory", &inventory, Recorder::default())
        .await;
    world
        .member("inventory", &inventory, Recorder::default())
        .await;
    let expected = produce(&producer, 40, 8).await;
    world.drain(&producer, RelayConfig::default()).await;
    let got = applied(&inventory, 40).await;
    assert_eq!(
        sorted(&got),
        sorted(&expected),
        "each message applied by one member, once"
    );
    world.close().await;
}

async fn a_message_published_again_takes_effect_once(kind: Kind) {
    let Some(world) = World::open(kind, &["payment"]).await else {
        return;
    };
    let (producer, _p) = database().await;
    let (payment, _y) = database().await;
    world.member("payment", &payment, Recorder::default()).await;
    let expected = produce(&producer, 20, 2).await;
    world.drain(&producer, RelayConfig::default()).await;
    assert_eq!(applied(&payment, 20).await, expected);
    // The relay crashed after publishing, before marking: everything goes out again.
    sqlx::query("UPDATE messaging_outbox SET published_at = NULL")
        .execute(&producer)
        .await
        .expect("forget");
    let pass = world.drain(&producer, RelayConfig::default()).await;
    assert_eq!(pass.published, 20);
    assert_eq!(
        applied(&payment, 20).await,
        expected,
        "the repeats changed nothing"
    );
    let (inbox,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messaging_inbox")
        .fetch_one(&payment)
        .await
        .expect("inbox");
    assert_eq!(inbox, 20);
    world.close().await;
}

async fn a_consumer_asking_to_retry_gets_the_message_again(kind: Kind) {
    let Some(world) = World::open(kind, &["payment"]).await else {
        return;
    };
    let (producer, _p) = database().await;
    let (payment, _y) = database().await;
    let recorder = Recorder::default();
    recorder.fail_first.lock().expect("lock").insert(3, 2);
    world.member("payment", &payment, recorder).await;
    let expected = produce(&producer, 8, 1).await;
    let fast = RelayConfig {
        base_backoff: Duration::from_millis(20),
        ..RelayConfig::default()
    };
    world.drain(&producer, fast).await;
    let got = applied(&payment, 8).await;
    assert_eq!(
        sorted(&got),
        sorted(&expected),
        "message 3 applied once, after two refusals"
    );
    if let Kind::Embedded = kind {
        // The relay waits for each acknowledgement before the key's next message.
        assert_eq!(got, expected, "and the key's order held");
    }
    world.close().await;
}

async fn a_subscriber_that_starts_late_loses_nothing(kind: Kind) {
    let Some(world) = World::open(kind, &["inventory", "payment"]).await else {
        return;
    };
    let (producer, _p) = database().await;
    let (inventory, _i) = database().await;
    let (payment, _y) = database().await;
    world.member("payment", &payment, Recorder::default()).await;
    // NATS: the stream keeps every message and a durable consumer created later starts from
    // the stream's beginning. Embedded: the relay retries until the subscriber answers.
    let expected = produce(&producer, 12, 2).await;
    let quick = RelayConfig {
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..RelayConfig::default()
    };
    let relay = {
        let producer = producer.clone();
        let kind = world.kind;
        let nats = world.nats.clone();
        let publisher = world.publisher.clone();
        tokio::spawn(async move {
            match kind {
                Kind::Nats => {
                    drain(
                        Relay::new(producer.clone(), nats.expect("nats"), quick),
                        &producer,
                    )
                    .await
                }
                Kind::Embedded => {
                    drain(
                        Relay::new(producer.clone(), publisher.expect("publisher"), quick),
                        &producer,
                    )
                    .await
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    world
        .member("inventory", &inventory, Recorder::default())
        .await;
    let pass = relay.await.expect("relay task");
    assert_eq!(pass.dead, 0, "nothing given up");
    assert_eq!(
        applied(&inventory, 12).await,
        expected,
        "the late subscriber got everything"
    );
    assert_eq!(
        applied(&payment, 12).await,
        expected,
        "the early one too, once"
    );
    world.close().await;
}
