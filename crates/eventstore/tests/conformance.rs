//! The conformance suite: every test runs on SQLite and on PostgreSQL (`sqlite::*`, `postgres::*`).
//!
//! PostgreSQL tests use a fresh schema on `FLOTILLA_TEST_POSTGRES_URL`; under CI they fail if
//! the server is unreachable, elsewhere they skip with a message.
// A failed unwrap in a test fails the test with its line; messages would only repeat the call.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_eventstore::{
    Aggregate, AsOf, Error, EventContext, EventStore, ExpectedVersion, Metadata, NewEvent, Options,
    Projection, Projector, RecordedEvent, StoreTx, Upcasters,
};
use flotilla_sqlite::direct;
use flotilla_testkit::{PgSchema, eventually, postgres_schema};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tempfile::TempDir;

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A store and what keeps its database alive.
struct Db {
    store: EventStore,
    _dir: Option<TempDir>,
    schema: Option<PgSchema>,
}

impl Db {
    async fn open(backend: Backend, options: Options) -> Option<Db> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite:{}", dir.path().join("events.db").display());
                let store = EventStore::connect(&url, options)
                    .await
                    .expect("sqlite store");
                Some(Db {
                    store,
                    _dir: Some(dir),
                    schema: None,
                })
            }
            Backend::Postgres => {
                let schema = postgres_schema().await?;
                let store = EventStore::postgres(schema.pool.clone(), options)
                    .await
                    .expect("postgres store");
                Some(Db {
                    store,
                    _dir: None,
                    schema: Some(schema),
                })
            }
        }
    }

    async fn close(self) {
        if let Some(schema) = self.schema {
            schema.drop_schema().await;
        }
    }

    /// Runs one statement with one text argument on the store's database.
    async fn exec(&self, sql: &'static str) {
        if let Some(pool) = self.store.sqlite_pool() {
            sqlx::query(sql).execute(pool).await.expect(sql);
        } else if let Some(pool) = self.store.postgres_pool() {
            sqlx::query(sql).execute(pool).await.expect(sql);
        }
    }

    /// Rows of `(text, integer)` from a query on the store's database.
    async fn rows(&self, sql: &'static str) -> Vec<(String, i64)> {
        if let Some(pool) = self.store.sqlite_pool() {
            sqlx::query_as(sql).fetch_all(pool).await.expect(sql)
        } else if let Some(pool) = self.store.postgres_pool() {
            sqlx::query_as(sql).fetch_all(pool).await.expect(sql)
        } else {
            unreachable!("a store is on one of the two databases")
        }
    }
}

/// Runs `sql` with one text argument within the store's transaction.
async fn exec_in(tx: &mut StoreTx, sql: &'static str, arg: &str) -> Result<u64, Error> {
    if let Some(connection) = tx.sqlite() {
        return Ok(sqlx::query(sql)
            .bind(arg)
            .execute(connection)
            .await?
            .rows_affected());
    }
    let connection = tx.postgres().expect("one of the two databases");
    Ok(sqlx::query(sql)
        .bind(arg)
        .execute(connection)
        .await?
        .rows_affected())
}

fn event(event_type: &str, n: i64) -> NewEvent {
    NewEvent::new(event_type, json!({ "type": event_type, "n": n }))
}

flotilla_testkit::for_each_variant!(
    worker_threads = 4,
    Backend { sqlite => Sqlite, postgres => Postgres },
    [
        expected_versions_are_enforced_and_conflicts_say_why,
        a_batch_is_atomic,
        the_envelope_round_trips,
        reads_by_stream_range_and_category,
        concurrent_appends_have_one_winner_per_version_and_no_gaps,
        subscriptions_switch_from_catch_up_to_live_without_gaps_or_duplicates,
        snapshots_plus_tail_equal_full_replay,
        snapshots_of_another_state_version_are_ignored,
        upcasters_bring_old_events_to_the_current_schema,
        time_travel_reads_the_state_as_it_was,
        commands_retry_on_conflict,
        the_transaction_hook_commits_events_and_own_rows_together,
        a_rebuilt_projection_equals_the_live_one,
    ],
);

async fn expected_versions_are_enforced_and_conflicts_say_why(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    let store = &db.store;
    assert_eq!(store.stream_version("acct-1").await.unwrap(), 0);
    let append = |expected, events| store.append("acct-1", expected, events);
    // Exact(0) and NoStream both mean "empty".
    append(ExpectedVersion::NoStream, vec![event("Opened", 0)])
        .await
        .unwrap();
    let again = append(ExpectedVersion::NoStream, vec![event("Opened", 0)]).await;
    match again {
        Err(Error::Conflict {
            stream,
            expected: ExpectedVersion::NoStream,
            actual: 1,
        }) => assert_eq!(stream, "acct-1"),
        other => panic!("expected a conflict at version 1, got {other:?}"),
    }
    append(ExpectedVersion::Exact(1), vec![event("Deposited", 1)])
        .await
        .unwrap();
    // A stale expectation and one ahead of the stream are both refused.
    for (expected, n) in [
        (ExpectedVersion::Exact(1), 2),
        (ExpectedVersion::Exact(5), 3),
    ] {
        let refused = append(expected, vec![event("Deposited", n)]).await;
        assert!(
            matches!(refused, Err(Error::Conflict { actual: 2, .. })),
            "{expected:?}: {refused:?}"
        );
    }
    append(ExpectedVersion::Any, vec![event("Deposited", 4)])
        .await
        .unwrap();
    // An empty batch checks the expectation and writes nothing.
    append(ExpectedVersion::Exact(3), vec![]).await.unwrap();
    assert!(append(ExpectedVersion::Exact(2), vec![]).await.is_err());
    let events = store.read_stream("acct-1", 1).await.unwrap();
    let ns: Vec<i64> = events
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 4], "only the accepted appends are stored");
    assert_eq!(store.stream_version("acct-1").await.unwrap(), 3);
    db.close().await;
}

async fn a_batch_is_atomic(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    let store = &db.store;
    let first = store
        .append("s-1", ExpectedVersion::Any, vec![event("A", 1)])
        .await
        .unwrap();
    let mut duplicate = event("B", 3);
    duplicate.id = first[0].id;
    let batch = vec![event("B", 2), duplicate, event("B", 4)];
    let failed = store.append("s-2", ExpectedVersion::Any, batch).await;
    assert!(
        matches!(failed, Err(Error::DuplicateEvent(id)) if id == first[0].id),
        "{failed:?}"
    );
    assert_eq!(
        store.stream_version("s-2").await.unwrap(),
        0,
        "nothing of the batch"
    );
    assert_eq!(store.head(None).await.unwrap(), 1);
    // Positions stay gap-free after the failed batch.
    let next = store
        .append(
            "s-2",
            ExpectedVersion::NoStream,
            vec![event("B", 5), event("B", 6)],
        )
        .await
        .unwrap();
    let positions: Vec<u64> = next.iter().map(|e| e.position).collect();
    assert_eq!(positions, [2, 3]);
    db.close().await;
}

async fn the_envelope_round_trips(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    let store = &db.store;
    let mut metadata = Metadata::correlated("order-9");
    metadata.causation_id = Some("message-3".into());
    metadata
        .extra
        .insert("traceparent".into(), json!("00-abc-def-01"));
    let new = NewEvent::new("Shipped", json!({ "type": "Shipped", "parcel": [1, 2] }))
        .schema(3)
        .with_metadata(metadata.clone());
    let before = time::OffsetDateTime::now_utc();
    let written = store
        .append("ship-9", ExpectedVersion::NoStream, vec![new.clone()])
        .await
        .unwrap();
    let read = store.read_stream("ship-9", 1).await.unwrap();
    assert_eq!(
        read, written,
        "what a reader gets is what the writer was told"
    );
    let event = &read[0];
    assert_eq!(event.id, new.id);
    assert_eq!(event.event_type, "Shipped");
    assert_eq!(event.schema_version, 3);
    assert_eq!(event.data, new.data);
    assert_eq!(event.metadata, metadata);
    assert_eq!((event.version, event.position), (1, 1));
    let skew = (event.recorded_at - before).whole_seconds().abs();
    assert!(skew < 60, "recorded_at is the append time");
    db.close().await;
}

async fn reads_by_stream_range_and_category(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    let store = &db.store;
    for n in 0..5 {
        store
            .append("order-1", ExpectedVersion::Any, vec![event("O", n)])
            .await
            .unwrap();
        store
            .append("payment-1", ExpectedVersion::Any, vec![event("P", n)])
            .await
            .unwrap();
    }
    let range = store.read_stream_range("order-1", 2, 4).await.unwrap();
    let versions: Vec<u64> = range.iter().map(|e| e.version).collect();
    assert_eq!(versions, [2, 3, 4]);
    let tail = store.read_stream("order-1", 4).await.unwrap();
    assert_eq!(tail.len(), 2);
    let all = store.read_all(0, 100, None).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=10).collect::<Vec<_>>());
    let page = store.read_all(4, 3, None).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    let payments = store.read_all(0, 100, Some("payment")).await.unwrap();
    assert_eq!(payments.len(), 5);
    assert!(payments.iter().all(|e| e.stream_id == "payment-1"));
    assert_eq!(store.head(None).await.unwrap(), 10);
    assert_eq!(store.head(Some("order")).await.unwrap(), 9);
    assert_eq!(store.head(Some("nothing")).await.unwrap(), 0);
    db.close().await;
}

async fn concurrent_appends_have_one_winner_per_version_and_no_gaps(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    const TASKS: usize = 12;
    const APPENDS_PER_TASK: usize = 15;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = db.store.clone();
            tokio::spawn(async move {
                let mut won = Vec::new();
                let mut conflicts = 0;
                while won.len() < APPENDS_PER_TASK {
                    let version = store.stream_version("contended-1").await.unwrap();
                    let n = (task * 1000 + won.len()) as i64;
                    match store
                        .append(
                            "contended-1",
                            ExpectedVersion::Exact(version),
                            vec![event("Bumped", n)],
                        )
                        .await
                    {
                        Ok(recorded) => {
                            assert_eq!(recorded[0].version, version + 1);
                            won.push(recorded[0].version);
                        }
                        Err(Error::Conflict { .. }) => conflicts += 1,
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
                (won, conflicts)
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (won, lost) = task.await.unwrap();
        versions.extend(won);
        conflicts += lost;
    }
    versions.sort_unstable();
    let total = (TASKS * APPENDS_PER_TASK) as u64;
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "every version won exactly once"
    );
    let stored = db.store.read_stream("contended-1", 1).await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert_eq!(
        stored.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "positions gap-free"
    );
    eprintln!("{backend:?}: {total} appends won, {conflicts} conflicts");
    db.close().await;
}

async fn subscriptions_switch_from_catch_up_to_live_without_gaps_or_duplicates(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    let store = &db.store;
    const BEFORE: i64 = 300;
    const WRITERS: i64 = 4;
    const PER_WRITER: i64 = 150;
    for n in 0..BEFORE {
        let stream = format!("item-{}", n % 7);
        store
            .append(&stream, ExpectedVersion::Any, vec![event("Stored", n)])
            .await
            .unwrap();
    }
    let total = (BEFORE + WRITERS * PER_WRITER) as usize;
    let mut all = store.subscribe(0, None);
    let mut items = store.subscribe(0, Some("item"));
    let reader = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(total);
        while seen.len() < total {
            seen.push(all.next().await.unwrap());
        }
        seen
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..PER_WRITER {
                    // Batches of 1 to 3 events, to other streams and categories too.
                    let stream = if n % 3 == 0 {
                        format!("other-{writer}")
                    } else {
                        format!("item-{}", (writer + n) % 7)
                    };
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event("Live", n)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the subscription reached the live end")
        .unwrap();
    let positions: Vec<u64> = seen.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=total as u64).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for event in &seen {
        let last = versions.entry(&event.stream_id).or_insert(0);
        assert_eq!(
            event.version,
            *last + 1,
            "stream order kept in {}",
            event.stream_id
        );
        *last = event.version;
    }
    // The category subscription sees exactly the item events.
    let expected_items = seen
        .iter()
        .filter(|e| e.stream_id.starts_with("item-"))
        .count();
    let mut item_positions = Vec::new();
    while item_positions.len() < expected_items {
        let event = tokio::time::timeout(Duration::from_secs(10), items.next())
            .await
            .expect("category subscription keeps up")
            .unwrap();
        assert!(event.stream_id.starts_with("item-"));
        item_positions.push(event.position);
    }
    assert!(item_positions.windows(2).all(|w| w[0] < w[1]));
    let unique: HashSet<u64> = item_positions.iter().copied().collect();
    assert_eq!(unique.len(), expected_items);
    // And nothing more arrives.
    store
        .append("other-x", ExpectedVersion::Any, vec![event("Late", 0)])
        .await
        .unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(300), items.next()).await;
    assert!(nothing.is_err(), "no event of another category");
    db.close().await;
}

/// A small aggregate for the snapshot and command tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Account {
    balance: i64,
    operations: u64,
    last_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
enum AccountEvent {
    Deposited { cents: i64 },
    Withdrawn { cents: i64 },
}

impl Aggregate for Account {
    type Event = AccountEvent;
    const CATEGORY: &'static str = "account";

    fn apply(&mut self, event: &AccountEvent, context: &EventContext) {
        match event {
            AccountEvent::Deposited { cents } => self.balance += cents,
            AccountEvent::Withdrawn { cents } => self.balance -= cents,
        }
        self.operations += 1;
        self.last_version = context.version;
    }
}

fn account_event(cents: i64) -> AccountEvent {
    if cents >= 0 {
        AccountEvent::Deposited { cents }
    } else {
        AccountEvent::Withdrawn { cents: -cents }
    }
}

async fn snapshots_plus_tail_equal_full_replay(backend: Backend) {
    // One store per snapshot interval; proptest draws the event batches.
    for every in [1u64, 3, 7] {
        let options = Options {
            snapshot_every: every,
            ..Options::default()
        };
        let Some(db) = Db::open(backend, options).await else {
            return;
        };
        let store = db.store.clone();
        let runtime = tokio::runtime::Handle::current();
        let case = std::sync::atomic::AtomicU64::new(0);
        let config = ProptestConfig {
            cases: 24,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let result = tokio::task::block_in_place(|| {
            proptest::test_runner::TestRunner::new(config).run(
                &proptest::collection::vec(proptest::collection::vec(-500i64..1000, 1..6), 1..8),
                |batches| {
                    let id = format!(
                        "{every}x{}",
                        case.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    );
                    runtime.block_on(async {
                        for batch in &batches {
                            let mut loaded = store.load::<Account>(&id).await.unwrap();
                            let events: Vec<_> = batch.iter().map(|c| account_event(*c)).collect();
                            store
                                .save(&mut loaded, &events, &Metadata::default())
                                .await
                                .unwrap();
                            let saved = loaded;
                            let snapshotted = store.load::<Account>(&id).await.unwrap();
                            let replayed = store.replay::<Account>(&id).await.unwrap();
                            prop_assert_eq!(&snapshotted, &replayed);
                            prop_assert_eq!(&saved, &replayed);
                        }
                        let total: i64 = batches.iter().flatten().sum();
                        let replayed = store.replay::<Account>(&id).await.unwrap();
                        prop_assert_eq!(replayed.state.balance, total);
                        Ok(())
                    })
                },
            )
        });
        if let Err(failure) = result {
            panic!("snapshot_every = {every}: {failure}");
        }
        // Snapshots were written: with every = 1 each save writes one.
        let snapshots = db
            .rows("SELECT stream_id, version FROM eventstore_snapshots")
            .await;
        assert!(
            !snapshots.is_empty(),
            "snapshots written with every = {every}"
        );
        db.close().await;
    }
}

async fn snapshots_of_another_state_version_are_ignored(backend: Backend) {
    let options = Options {
        snapshot_every: 2,
        ..Options::default()
    };
    let Some(db) = Db::open(backend, options).await else {
        return;
    };
    let store = &db.store;
    let mut account = store.load::<Account>("s").await.unwrap();
    let events: Vec<_> = [100, -30, 5, 7].into_iter().map(account_event).collect();
    store
        .save(&mut account, &events, &Metadata::default())
        .await
        .unwrap();
    // A snapshot written by an older state schema, with a wrong balance: must not be used.
    db.exec("UPDATE eventstore_snapshots SET state_version = 0, state = '{\"balance\": -1}'")
        .await;
    let loaded = store.load::<Account>("s").await.unwrap();
    assert_eq!(loaded.state.balance, 82);
    assert_eq!(loaded.version, 4);
    // And an unreadable one of the right version falls back to replay too.
    db.exec("UPDATE eventstore_snapshots SET state_version = 1, state = 'not json'")
        .await;
    assert_eq!(store.load::<Account>("s").await.unwrap().state.balance, 82);
    db.close().await;
}

async fn upcasters_bring_old_events_to_the_current_schema(backend: Backend) {
    let upcasters = Upcasters::default()
        .with("Deposited", 1, |mut data| {
            // v1: whole euros in `amount`.
            let euros = data["amount"].as_i64().ok_or("no amount")?;
            let object = data.as_object_mut().ok_or("not an object")?;
            object.remove("amount");
            object.insert("euro_cents".into(), json!(euros * 100));
            Ok(data)
        })
        .with("Deposited", 2, |mut data| {
            // v2 -> v3: `euro_cents` renamed `cents`.
            let object = data.as_object_mut().ok_or("not an object")?;
            let cents = object.remove("euro_cents").ok_or("no euro_cents")?;
            object.insert("cents".into(), cents);
            Ok(data)
        });
    let options = Options {
        upcasters,
        ..Options::default()
    };
    let Some(db) = Db::open(backend, options).await else {
        return;
    };
    let store = &db.store;
    store
        .append(
            "account-old",
            ExpectedVersion::NoStream,
            vec![
                NewEvent::new("Deposited", json!({ "type": "Deposited", "amount": 3 })),
                NewEvent::new(
                    "Deposited",
                    json!({ "type": "Deposited", "euro_cents": 250 }),
                )
                .schema(2),
                NewEvent::new("Deposited", json!({ "type": "Deposited", "cents": 1 })).schema(3),
            ],
        )
        .await
        .unwrap();
    let events = store.read_stream("account-old", 1).await.unwrap();
    assert!(events.iter().all(|e| e.schema_version == 3));
    assert_eq!(events[0].data, json!({ "type": "Deposited", "cents": 300 }));
    assert_eq!(events[1].data, json!({ "type": "Deposited", "cents": 250 }));
    let account = store.load::<Account>("old").await.unwrap();
    assert_eq!(account.state.balance, 551);
    // A v1 event the upcaster cannot read is a clear decode error naming it.
    store
        .append(
            "account-bad",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("Deposited", json!({ "type": "Deposited" }))],
        )
        .await
        .unwrap();
    match store.read_stream("account-bad", 1).await {
        Err(Error::Decode {
            event_type,
            schema_version: 1,
            reason,
            ..
        }) => {
            assert_eq!(event_type, "Deposited");
            assert!(reason.contains("no amount"), "{reason}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    db.close().await;
}

async fn time_travel_reads_the_state_as_it_was(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    let store = &db.store;
    let as_of = |at| store.load_as_of::<Account>("t", at);
    assert!(as_of(AsOf::Version(1)).await.unwrap().is_none());
    let mut account = store.load::<Account>("t").await.unwrap();
    store
        .save(&mut account, &[account_event(100)], &Metadata::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .save(
            &mut account,
            &[account_event(-40), account_event(5)],
            &Metadata::default(),
        )
        .await
        .unwrap();
    // The balance and the version as of each moment.
    for (at, balance, version) in [
        (AsOf::Version(1), 100, 1),
        (AsOf::Version(2), 60, 2),
        (AsOf::Version(99), 65, 3),
        (AsOf::Time(between), 100, 1),
    ] {
        let then = as_of(at).await.unwrap().unwrap();
        assert_eq!(
            (then.state.balance, then.version),
            (balance, version),
            "{at:?}"
        );
    }
    let before_all = between - time::Duration::hours(1);
    assert!(as_of(AsOf::Time(before_all)).await.unwrap().is_none());
    db.close().await;
}

async fn commands_retry_on_conflict(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    const TASKS: i64 = 10;
    // Every task deposits once, refusing to go above a ceiling: the ceiling invariant must
    // hold whatever the interleaving, because each retry decides on the fresh state.
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = db.store.clone();
            tokio::spawn(async move {
                store
                    .execute::<Account, &'static str>(
                        "shared",
                        50,
                        &Metadata::default(),
                        |account| {
                            if account.balance + 100 > 700 {
                                return Err("ceiling");
                            }
                            Ok(vec![AccountEvent::Deposited { cents: 100 }])
                        },
                    )
                    .await
            })
        })
        .collect();
    let mut accepted = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(flotilla_eventstore::aggregate::Execute::Refused("ceiling")) => refused += 1,
            Err(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (7, 3));
    let account = db.store.load::<Account>("shared").await.unwrap();
    assert_eq!((account.state.balance, account.version), (700, 7));
    db.close().await;
}

async fn the_transaction_hook_commits_events_and_own_rows_together(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    db.exec("CREATE TABLE outbox (message_id TEXT PRIMARY KEY, n BIGINT NOT NULL DEFAULT 1)")
        .await;
    let store = &db.store;
    // Committed: both the event and the outbox row.
    let mut tx = store.begin().await.unwrap();
    let (message_id, written) =
        append_with_outbox_row(&mut tx, ExpectedVersion::NoStream, event("Placed", 1), None).await;
    written.unwrap();
    tx.commit().await.unwrap();
    // Dropped: neither.
    let mut tx = store.begin().await.unwrap();
    let (_, written) = append_with_outbox_row(
        &mut tx,
        ExpectedVersion::Exact(1),
        event("Approved", 2),
        None,
    )
    .await;
    written.unwrap();
    drop(tx);
    // Failing own write: the caller drops the transaction, the event goes too.
    let mut tx = store.begin().await.unwrap();
    let (_, duplicate) = append_with_outbox_row(
        &mut tx,
        ExpectedVersion::Exact(1),
        event("Approved", 3),
        Some(&message_id),
    )
    .await;
    assert!(duplicate.is_err(), "the outbox refuses a duplicate id");
    drop(tx);
    let events = store.read_stream("order-h", 1).await.unwrap();
    assert_eq!(events.len(), 1);
    let outbox = db.rows("SELECT message_id, n FROM outbox").await;
    assert_eq!(outbox, [(message_id, 1)]);
    db.close().await;
}

/// Within `tx`: appends `event` to `order-h` after `expected`, then writes an outbox row for
/// `message_id` (the appended event's id if `None`). Returns the event's id and the row's write.
async fn append_with_outbox_row(
    tx: &mut StoreTx,
    expected: ExpectedVersion,
    event: NewEvent,
    message_id: Option<&str>,
) -> (String, Result<u64, Error>) {
    let recorded = tx.append("order-h", expected, vec![event]).await.unwrap();
    let id = recorded[0].id.to_string();
    let sql = "INSERT INTO outbox (message_id) VALUES ($1)";
    let written = exec_in(tx, sql, message_id.unwrap_or(&id)).await;
    (id, written)
}

/// Appends event `n` of another category (`noise-1`), one the account projections skip.
async fn noise(store: &EventStore, n: i64) {
    store
        .append("noise-1", ExpectedVersion::Any, vec![event("Noise", n)])
        .await
        .unwrap();
}

/// Totals per stream, in a table of the store's database.
struct Totals;

impl Projection for Totals {
    fn name(&self) -> &str {
        "totals"
    }

    fn category(&self) -> Option<&str> {
        Some("account")
    }

    async fn apply(&self, tx: &mut StoreTx, event: &RecordedEvent) -> Result<(), Error> {
        let sql = "INSERT INTO totals (stream_id, events) VALUES ($1, 1) \
                   ON CONFLICT (stream_id) DO UPDATE SET events = totals.events + 1";
        exec_in(tx, sql, &event.stream_id).await.map(drop)
    }

    async fn reset(&self, tx: &mut StoreTx) -> Result<(), Error> {
        exec_in(tx, "DELETE FROM totals WHERE stream_id <> $1", "")
            .await
            .map(drop)
    }
}

/// [`Totals`] with direct calls: the projector catches it up in one borrow per page.
struct DirectTotals;

impl Projection for DirectTotals {
    fn name(&self) -> &str {
        "direct_totals"
    }

    /// What [`Totals`] reads, so that the two keep the same rows.
    fn category(&self) -> Option<&str> {
        Totals.category()
    }

    async fn reset(&self, tx: &mut StoreTx) -> Result<(), Error> {
        exec_in(tx, "DELETE FROM direct_totals WHERE stream_id <> $1", "")
            .await
            .map(drop)
    }

    const ON_CONNECTION: bool = true;

    fn apply_on(&self, db: &rusqlite::Connection, event: &RecordedEvent) -> Result<(), Error> {
        flotilla_sqlite::execute(
            db,
            "INSERT INTO direct_totals (stream_id, events) VALUES ($1, 1) \
             ON CONFLICT (stream_id) DO UPDATE SET events = direct_totals.events + 1",
            &[&event.stream_id],
        )
        .map(drop)
        .map_err(|e| Error::Database(flotilla_sqlite::sqlx_error(e)))
    }
}

async fn a_rebuilt_projection_equals_the_live_one(backend: Backend) {
    let Some(db) = Db::open(backend, Options::default()).await else {
        return;
    };
    db.exec("CREATE TABLE totals (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL)")
        .await;
    let store = db.store.clone();
    let projector = Arc::new(Projector::new(store.clone(), Totals));
    let shutdown = tokio_util_token();
    let live = tokio::spawn({
        let projector = Projector::new(store.clone(), Totals);
        let shutdown = shutdown.clone();
        async move { projector.run(shutdown).await }
    });
    // Writers and a rebuild in the middle of them.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..60i64 {
                    let stream = format!("account-{}", (w * 7 + n) % 5);
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event("Deposited", n)])
                        .await
                        .unwrap();
                    if n % 10 == 0 {
                        noise(&store, n).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    projector.rebuild().await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    // The live projector catches up with everything.
    let head = store.head(Some("account")).await.unwrap();
    eventually(Duration::from_secs(20), "projector caught up", || async {
        match projector.checkpoint().await.unwrap() {
            at if at >= head => Ok(()),
            at => Err(format!("at {at} of {head}")),
        }
    })
    .await;
    assert_eq!(projector.lag().await.unwrap(), 0);
    shutdown.cancel();
    live.await.unwrap();
    let live_rows = db
        .rows("SELECT stream_id, events FROM totals ORDER BY stream_id")
        .await;
    assert_eq!(live_rows.iter().map(|r| r.1).sum::<i64>(), 180);
    let applied = projector.rebuild().await.unwrap();
    assert_eq!(applied, 180, "only the account category");
    let rebuilt = db
        .rows("SELECT stream_id, events FROM totals ORDER BY stream_id")
        .await;
    assert_eq!(rebuilt, live_rows);
    db.close().await;
}

fn tokio_util_token() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}

/// SQLite only: an aggregate loaded and saved twice within the caller's own transaction (a
/// message handler's) sees its first save; dropping the transaction drops both.
#[tokio::test]
async fn saves_within_a_callers_sqlite_transaction_see_each_other_and_roll_back_together() {
    let db = Db::open(Backend::Sqlite, Options::default())
        .await
        .expect("sqlite always works");
    let store = &db.store;
    let pool = store.sqlite_pool().expect("sqlite").clone();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let mut account = direct(&mut tx, |db| store.load_on::<Account>(db, "own"))
        .await
        .unwrap();
    direct(&mut tx, |db| {
        store.save_on(
            db,
            &mut account,
            &[account_event(100)],
            &Metadata::default(),
        )
    })
    .await
    .unwrap();
    let mut again = direct(&mut tx, |db| store.load_on::<Account>(db, "own"))
        .await
        .unwrap();
    assert_eq!(
        (again.state.balance, again.version),
        (100, 1),
        "sees its own append"
    );
    direct(&mut tx, |db| {
        store.save_on(db, &mut again, &[account_event(-30)], &Metadata::default())
    })
    .await
    .unwrap();
    // A stale save in the same transaction is a conflict, as anywhere.
    let stale = direct(&mut tx, |db| {
        store.save_on(db, &mut account, &[account_event(1)], &Metadata::default())
    })
    .await;
    assert!(
        matches!(stale, Err(Error::Conflict { actual: 2, .. })),
        "{stale:?}"
    );
    drop(tx);
    assert_eq!(
        store.stream_version("account-own").await.unwrap(),
        0,
        "rolled back"
    );
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let mut account = direct(&mut tx, |db| store.load_on::<Account>(db, "own"))
        .await
        .unwrap();
    direct(&mut tx, |db| {
        store.save_on(db, &mut account, &[account_event(7)], &Metadata::default())
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.load::<Account>("own").await.unwrap().state.balance, 7);
    db.close().await;
}

/// SQLite only: `load_on`/`save_on` on sqlx's borrowed handle inside a caller's transaction:
/// it sees its own appends, a stale save is a conflict, a repeated event id is named, several
/// events go in at once, a snapshot is taken at the interval, and what it recorded reads back
/// the same through sqlx.
#[tokio::test]
async fn direct_saves_behave_as_the_sqlx_path_within_a_callers_transaction() {
    let options = Options {
        snapshot_every: 3,
        ..Options::default()
    };
    let db = Db::open(Backend::Sqlite, options)
        .await
        .expect("sqlite always works");
    let store = db.store.clone();
    let pool = store.sqlite_pool().expect("sqlite").clone();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let recorded = flotilla_sqlite::direct(&mut tx, |sql| {
        let mut account = store.load_on::<Account>(sql, "direct").unwrap();
        let first = store
            .save_on(
                sql,
                &mut account,
                &[account_event(100)],
                &Metadata::default(),
            )
            .unwrap();
        let mut again = store.load_on::<Account>(sql, "direct").unwrap();
        assert_eq!(
            (again.state.balance, again.version),
            (100, 1),
            "sees its own append"
        );
        let more = store
            .save_on(
                sql,
                &mut again,
                &[account_event(-30), account_event(5)],
                &Metadata::default(),
            )
            .unwrap();
        let stale = store.save_on(sql, &mut account, &[account_event(1)], &Metadata::default());
        assert!(
            matches!(stale, Err(Error::Conflict { actual: 3, .. })),
            "{stale:?}"
        );
        Ok::<_, Error>(first.into_iter().chain(more).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(
        recorded.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    tx.commit().await.unwrap();
    let read = store.read_stream("account-direct", 1).await.unwrap();
    assert_eq!(
        read, recorded,
        "what the direct path returned is what a reader reads"
    );
    let loaded = store.load::<Account>("direct").await.unwrap();
    assert_eq!((loaded.state.balance, loaded.version), (75, 3));
    let snapshot: Option<i64> =
        sqlx::query_scalar("SELECT version FROM eventstore_snapshots WHERE stream_id = $1")
            .bind("account-direct")
            .fetch_optional(&pool)
            .await
            .unwrap();
    assert_eq!(snapshot, Some(3), "a snapshot at the interval");

    // A repeated event id is named, and the transaction rolls back with everything in it.
    let repeated = read[0].id;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let duplicate = flotilla_sqlite::direct(&mut tx, |sql| {
        let mut again = event("Deposited", 9);
        again.id = repeated;
        Ok::<_, Error>(store.append_on(
            sql,
            "account-direct",
            ExpectedVersion::Exact(3),
            vec![again],
        ))
    })
    .await
    .unwrap();
    assert!(
        matches!(duplicate, Err(Error::DuplicateEvent(id)) if id == repeated),
        "{duplicate:?}"
    );
    drop(tx);
    assert_eq!(store.stream_version("account-direct").await.unwrap(), 3);
    db.close().await;
}

/// SQLite only: a direct projection's catch-up (checkpoint, page, rows and new checkpoint in one
/// borrow per page) keeps the same rows as the statement-by-statement one, pages past the batch
/// size, and applies nothing twice.
#[tokio::test]
async fn a_direct_projection_catches_up_to_the_same_rows_as_the_statement_by_statement_one() {
    let db = Db::open(Backend::Sqlite, Options::default())
        .await
        .expect("sqlite always works");
    db.exec("CREATE TABLE totals (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL)")
        .await;
    db.exec("CREATE TABLE direct_totals (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL)")
        .await;
    let store = db.store.clone();
    for n in 0..1_200i64 {
        let stream = format!("account-{}", n % 7);
        let mut events = vec![event("Deposited", n)];
        if n % 3 == 0 {
            events.push(event("Deposited", -n));
        }
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
        if n % 100 == 0 {
            noise(&store, n).await;
        }
    }
    let plain = Projector::new(store.clone(), Totals);
    let direct = Projector::new(store.clone(), DirectTotals);
    assert_eq!(plain.catch_up().await.unwrap(), 1_600);
    assert_eq!(
        direct.catch_up().await.unwrap(),
        1_600,
        "more than one page"
    );
    assert_eq!(direct.catch_up().await.unwrap(), 0, "nothing applied twice");
    assert_eq!(direct.lag().await.unwrap(), 0);
    assert_eq!(
        direct.checkpoint().await.unwrap(),
        store.head(Some("account")).await.unwrap()
    );
    let plain_rows = db
        .rows("SELECT stream_id, events FROM totals ORDER BY stream_id")
        .await;
    let direct_rows = db
        .rows("SELECT stream_id, events FROM direct_totals ORDER BY stream_id")
        .await;
    assert_eq!(direct_rows, plain_rows);
    assert_eq!(direct_rows.iter().map(|r| r.1).sum::<i64>(), 1_600);
    // A later append is picked up from the checkpoint on.
    store
        .append(
            "account-0",
            ExpectedVersion::Any,
            vec![event("Deposited", 1)],
        )
        .await
        .unwrap();
    assert_eq!(direct.catch_up().await.unwrap(), 1);
    db.close().await;
}
