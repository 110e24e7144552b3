//! Event store throughput on SQLite and PostgreSQL, against a plain `INSERT` loop on the same
//! database (the physical limit of the append path).
//!
//! `cargo bench -p flotilla-eventstore --bench eventstore`
//!
//! * `append_single`: one event appended (one transaction) vs one plain `INSERT` (autocommit);
//! * `append_batch100`: 100 events in one append vs 100 plain `INSERT`s in one transaction;
//! * `load_10k`: an aggregate of a 10,000-event stream, loaded from its latest snapshot plus
//!   tail (`snapshot`, every 100 events) and by replaying the whole stream (`replay`);
//! * `replay_global`: the whole global log (≥ 20,000 events) read in pages of 1,000 and
//!   decoded.
//!
//! PostgreSQL is `FLOTILLA_TEST_POSTGRES_URL` (default the local server), in a fresh schema;
//! its cases are skipped with a message when it is unreachable.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flotilla_eventstore::{
    Aggregate, EventContext, EventStore, ExpectedVersion, Metadata, NewEvent, Options,
};
use flotilla_testkit::{PgSchema, postgres_schema};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::runtime::Runtime;

const PLAIN_TABLE: &str = "CREATE TABLE plain_events (
    position BIGINT PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, stream_id TEXT NOT NULL,
    category TEXT NOT NULL, version BIGINT NOT NULL, event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL, data TEXT NOT NULL, metadata TEXT NOT NULL,
    causation_id TEXT, correlation_id TEXT, recorded_at BIGINT NOT NULL,
    UNIQUE (stream_id, version))";

const PLAIN_INSERT: &str = "INSERT INTO plain_events (position, event_id, stream_id, category, \
    version, event_type, schema_version, data, metadata, causation_id, correlation_id, recorded_at) \
    VALUES ($1, $2, $3, 'plain', $4, 'Deposited', 1, $5, '{}', NULL, NULL, $6)";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
    operations: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
enum AccountEvent {
    Deposited { cents: i64, memo: String },
}

impl Aggregate for Account {
    type Event = AccountEvent;
    const CATEGORY: &'static str = "account";

    fn apply(&mut self, event: &AccountEvent, _: &EventContext) {
        let AccountEvent::Deposited { cents, .. } = event;
        self.balance += cents;
        self.operations += 1;
    }
}

fn payload(n: i64) -> serde_json::Value {
    json!({ "type": "Deposited", "cents": n, "memo": "monthly savings" })
}

struct Subject {
    name: &'static str,
    store: EventStore,
    _dir: Option<tempfile::TempDir>,
    schema: Option<PgSchema>,
}

impl Subject {
    async fn exec(&self, sql: &'static str) {
        if let Some(pool) = self.store.sqlite_pool() {
            sqlx::query(sql).execute(pool).await.expect(sql);
        } else if let Some(pool) = self.store.postgres_pool() {
            sqlx::query(sql).execute(pool).await.expect(sql);
        }
    }

    /// One plain INSERT in its own transaction, or `count` of them in one.
    async fn plain_inserts(&self, next: &mut i64, count: usize) {
        let now = 1_700_000_000_000_000i64;
        macro_rules! insert_all {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.expect("begin");
                for _ in 0..count {
                    *next += 1;
                    sqlx::query(PLAIN_INSERT)
                        .bind(*next)
                        .bind(uuid::Uuid::now_v7().to_string())
                        .bind("plain-1")
                        .bind(*next)
                        .bind(payload(*next).to_string())
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                }
                tx.commit().await.expect("commit");
            }};
        }
        if let Some(pool) = self.store.sqlite_pool() {
            insert_all!(pool)
        } else if let Some(pool) = self.store.postgres_pool() {
            insert_all!(pool)
        }
    }
}

async fn subjects() -> Vec<Subject> {
    let options = Options {
        snapshot_every: 100,
        ..Options::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
    let sqlite = EventStore::connect(&url, options.clone())
        .await
        .expect("sqlite store");
    let mut subjects = vec![Subject {
        name: "sqlite",
        store: sqlite,
        _dir: Some(dir),
        schema: None,
    }];
    if let Some(schema) = postgres_schema().await {
        let store = EventStore::postgres(schema.pool.clone(), options)
            .await
            .expect("postgres store");
        subjects.push(Subject {
            name: "postgres",
            store,
            _dir: None,
            schema: Some(schema),
        });
    }
    for subject in &subjects {
        subject.exec(PLAIN_TABLE).await;
    }
    subjects
}

/// The group `name`: `size` events in one append to `stream`, against `size` plain `INSERT`s
/// in one transaction (one alone: autocommit), numbered from `first_plain` on, apart from
/// other groups'.
fn appends(
    c: &mut Criterion,
    runtime: &Runtime,
    subjects: &[Subject],
    name: &str,
    size: usize,
    stream: &'static str,
    first_plain: i64,
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(size as u64));
    for subject in subjects {
        let mut n = 0i64;
        group.bench_function(BenchmarkId::new("eventstore", subject.name), |b| {
            b.to_async(runtime).iter(|| {
                let events: Vec<_> = (0..size)
                    .map(|_| {
                        n += 1;
                        NewEvent::new("Deposited", payload(n))
                    })
                    .collect();
                let store = subject.store.clone();
                async move {
                    store
                        .append(stream, ExpectedVersion::Any, events)
                        .await
                        .expect("append")
                }
            })
        });
        let mut next = first_plain;
        group.bench_function(BenchmarkId::new("plain_insert", subject.name), |b| {
            b.iter(|| runtime.block_on(subject.plain_inserts(&mut next, size)))
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let subjects = runtime.block_on(subjects());

    appends(c, &runtime, &subjects, "append_single", 1, "single-1", 0);
    appends(
        c,
        &runtime,
        &subjects,
        "append_batch100",
        100,
        "batch-1",
        1_000_000_000,
    );

    // A 10,000-event aggregate, written in batches of 100 through the aggregate API so that
    // snapshots are taken as in production.
    for subject in &subjects {
        runtime.block_on(async {
            let mut loaded = subject.store.load::<Account>("big").await.expect("load");
            for batch in 0..100i64 {
                let events: Vec<_> = (0..100)
                    .map(|i| AccountEvent::Deposited {
                        cents: batch * 100 + i,
                        memo: "monthly savings".into(),
                    })
                    .collect();
                subject
                    .store
                    .save(&mut loaded, &events, &Metadata::default())
                    .await
                    .expect("save");
            }
        });
    }
    let mut group = c.benchmark_group("load_10k");
    group.sample_size(10);
    for subject in &subjects {
        group.bench_function(BenchmarkId::new("snapshot", subject.name), |b| {
            b.to_async(&runtime).iter(|| async {
                let account = subject.store.load::<Account>("big").await.expect("load");
                assert_eq!(account.version, 10_000);
            })
        });
        group.bench_function(BenchmarkId::new("replay", subject.name), |b| {
            b.to_async(&runtime).iter(|| async {
                let account = subject
                    .store
                    .replay::<Account>("big")
                    .await
                    .expect("replay");
                assert_eq!(account.state.operations, 10_000);
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("replay_global");
    group.sample_size(10);
    for subject in &subjects {
        let head = runtime.block_on(subject.store.head(None)).expect("head");
        group.throughput(Throughput::Elements(head));
        group.bench_function(BenchmarkId::new("eventstore", subject.name), |b| {
            b.to_async(&runtime).iter(|| async {
                let mut after = 0;
                let mut count = 0u64;
                loop {
                    let page = subject
                        .store
                        .read_all(after, 1000, None)
                        .await
                        .expect("read");
                    let Some(last) = page.last() else { break };
                    after = last.position;
                    count += page.len() as u64;
                }
                assert_eq!(count, head);
            })
        });
    }
    group.finish();

    for subject in subjects {
        if let Some(schema) = subject.schema {
            runtime.block_on(schema.drop_schema());
        }
    }
}

criterion_group! {
    name = eventstore;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = benches
}
criterion_main!(eventstore);
