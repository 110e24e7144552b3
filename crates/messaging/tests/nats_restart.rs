//! NATS restarted in the middle of a run loses nothing (issue 5).
//!
//! A producer commits messages to its outbox across several keys, the service relay publishes
//! them to JetStream and the service consumer (both started as services start them,
//! `runtime::start_relay` and `runtime::start_consumer`) applies them with an inbox in its own
//! database. While both are busy the test stops the machine's `nats-server`, keeps the producer
//! writing during the outage, starts the server again and waits until every message is applied.
//!
//! This binary is apart from `tests/nats.rs` because it takes the server down: cargo runs test
//! binaries one after another, so no other test of this crate sees the outage. It controls the
//! server with `start-stop-daemon`, as `.ci/run` starts it, restarting it with the command line
//! it was running with; a guard starts it again if the test fails half-way.
//!
//! The server is `FLOTILLA_TEST_NATS_URL` (default `nats://127.0.0.1:4222`). Without a server,
//! or without the means to restart it (root, `start-stop-daemon`, one local
//! `/usr/sbin/nats-server`), the test skips, saying so in a `skipped:` line; under CI (`CI` set)
//! it fails.
//!
//! ```sh
//! cargo test -p flotilla-messaging --test nats_restart -- --nocapture
//! ```

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};
use flotilla_messaging::outbox;
use flotilla_messaging::runtime::{AnyTransport, start_consumer, start_relay};
use flotilla_testkit::{NATS, TempData, eventually, nats_stream, skip};
use serde_json::json;
use sqlx::SqlitePool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Messages in the run.
const COUNT: i64 = 2_000;
/// Ordering keys they are spread over.
const KEYS: i64 = 8;
/// Messages the producer starts with; it is still committing them when the server goes down.
const BEFORE_OUTAGE: i64 = 1_000;
/// Messages it commits once the server is down (the rest after it is back).
const DURING_OUTAGE: i64 = 500;
/// Messages per producer transaction.
const PER_TRANSACTION: i64 = 10;
/// How long the server stays down, at least.
const OUTAGE: Duration = Duration::from_millis(1_500);
/// The consumer group, hence the durable consumer `restart-order_events`.
const GROUP: &str = "restart";
const TOPIC: &str = "order.events";
/// How long a delivery may stay unacknowledged before JetStream delivers it again: short, so
/// that deliveries lost with the connection come back within the test's patience.
const ACK_WAIT: Duration = Duration::from_secs(3);
/// How long the test waits for the consumer to catch up after the restart.
const PATIENCE: Duration = Duration::from_secs(60);

const SERVER: &str = "/usr/sbin/nats-server";

/// The machine's NATS server, which this test may stop and start; started again when dropped
/// while down, so that a failing test leaves it running.
struct Server {
    daemon: PathBuf,
    /// How it was running: its arguments (without the program) and working directory.
    args: Vec<OsString>,
    cwd: PathBuf,
    addr: SocketAddr,
    down: bool,
}

impl Server {
    /// The server listening at `url`, if this process can restart it.
    fn controllable(url: &str) -> Option<Self> {
        let authority = url.rsplit("://").next().unwrap_or(url);
        let Some(addr) = authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
        else {
            return skip(&format!("cannot resolve NATS address `{authority}`"));
        };
        let root = std::fs::metadata("/proc/self").is_ok_and(|proc| proc.uid() == 0);
        if !root {
            return skip("restarting nats-server needs root (start-stop-daemon)");
        }
        let Some(daemon) = ["/usr/sbin/start-stop-daemon", "/sbin/start-stop-daemon"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
        else {
            return skip("start-stop-daemon is missing; cannot restart nats-server");
        };
        let mut running = running_servers();
        let (args, cwd) = match running.len() {
            1 => running.remove(0),
            0 => {
                return skip(&format!(
                    "no {SERVER} process runs here; the NATS at {url} cannot be restarted"
                ));
            }
            n => {
                return skip(&format!(
                    "{n} {SERVER} processes run here; stopping one would stop them all"
                ));
            }
        };
        Some(Self {
            daemon,
            args,
            cwd,
            addr,
            down: false,
        })
    }

    fn accepts_connections(&self) -> bool {
        TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
    }

    /// Stops the server (SIGTERM, as a service manager does) and waits until the process has
    /// exited and the port is closed.
    fn stop(&mut self) -> Result<(), String> {
        self.down = true;
        // `--retry` waits for the process to exit (SIGKILL after 15 s), so that the next server
        // does not open a store the last one is still flushing.
        let status = Command::new(&self.daemon)
            .args(["--stop", "--oknodo", "--retry", "TERM/15/KILL/5"])
            .args(["--exec", SERVER])
            .status()
            .map_err(|error| format!("start-stop-daemon: {error}"))?;
        if !status.success() {
            return Err(format!("stopping nats-server: {status}"));
        }
        self.wait_for(false)
    }

    /// Starts the server as it was running and waits until it accepts connections.
    fn start(&mut self) -> Result<(), String> {
        let status = Command::new(&self.daemon)
            .args(["--start", "--oknodo", "--background", "--chdir"])
            .arg(&self.cwd)
            .args(["--exec", SERVER, "--"])
            .args(&self.args)
            .status()
            .map_err(|error| format!("start-stop-daemon: {error}"))?;
        if !status.success() {
            return Err(format!("starting nats-server: {status}"));
        }
        self.wait_for(true)?;
        self.down = false;
        Ok(())
    }

    fn wait_for(&self, accepting: bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.accepts_connections() != accepting {
            if Instant::now() >= deadline {
                return Err(format!(
                    "nats-server at {} still {} after 20 s",
                    self.addr,
                    if accepting { "closed" } else { "open" }
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.down {
            eprintln!("starting nats-server again after a failure");
            if let Err(error) = self.start() {
                eprintln!("NATS IS LEFT STOPPED: {error}");
            }
        }
    }
}

/// How the running `/usr/sbin/nats-server` processes were started: arguments (without the
/// program) and working directory.
fn running_servers() -> Vec<(Vec<OsString>, PathBuf)> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|entry| {
            std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == Path::new(SERVER))
        })
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
            let args = cmdline
                .split(|byte| *byte == 0)
                .skip(1)
                .filter(|arg| !arg.is_empty())
                .map(|arg| OsString::from_vec(arg.to_vec()))
                .collect();
            Some((args, cwd))
        })
        .collect()
}

fn key_of(n: i64) -> String {
    format!("key-{}", n % KEYS)
}

/// Records each message it applies in `applied`, keyed by message id: applying one twice
/// would show as `applications = 2` rather than be hidden by a failed insert.
struct Counting {
    calls: Arc<AtomicU64>,
}

impl Handler for Counting {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let n = message.payload["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::Reject("no n".into()))?;
        flotilla_sqlite::execute(
            db,
            "INSERT INTO applied (message_id, key, n, applications, position)
             VALUES ($1, $2, $3, 1, (SELECT COALESCE(MAX(position), 0) + 1 FROM applied))
             ON CONFLICT (message_id) DO UPDATE SET applications = applications + 1",
            &[&message.id.to_string(), &message.key, &n],
        )
        .map_err(flotilla_sqlite::sqlx_error)?;
        Ok(Vec::new())
    }
}

/// Where the run is; the producer follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Up,
    Down,
    Restarted,
}

/// Commits messages `range` to the outbox, `PER_TRANSACTION` at a time, paced so that the
/// relay publishes while the producer writes.
async fn produce(pool: &SqlitePool, relay: &Notify, range: std::ops::Range<i64>) {
    let mut n = range.start;
    while n < range.end {
        let mut tx = pool.begin().await.expect("begin");
        flotilla_sqlite::direct(&mut tx, |db| {
            (n..(n + PER_TRANSACTION).min(range.end)).try_for_each(|m| {
                let message = Message::new(TOPIC, "Numbered", key_of(m), json!({ "n": m }));
                outbox::enqueue(db, &message)
            })
        })
        .await
        .expect("enqueue");
        tx.commit().await.expect("commit");
        relay.notify_one();
        n += PER_TRANSACTION;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_nothing_and_applies_every_message_once() {
    let url = NATS.url();
    let Some(mut server) = Server::controllable(&url) else {
        return;
    };
    let Some((nats, stream_name)) = nats_stream(&url, "TEST", ACK_WAIT).await else {
        return;
    };
    let started = Instant::now();
    let data = TempData::new();
    let producer = data.messaging_pool("producer").await;
    let consumer_db = data.messaging_pool("consumer").await;
    sqlx::query(
        "CREATE TABLE applied (message_id TEXT PRIMARY KEY, key TEXT NOT NULL, n INTEGER NOT NULL,
         applications INTEGER NOT NULL, position INTEGER NOT NULL UNIQUE)",
    )
    .execute(&consumer_db)
    .await
    .expect("effect table");

    // The relay and the consumer, started as a service starts them.
    let transport = Arc::new(AnyTransport::Nats(Box::new(nats.clone())));
    let shutdown = CancellationToken::new();
    let relay = start_relay(producer.clone(), transport.clone(), shutdown.clone());
    let calls = Arc::new(AtomicU64::new(0));
    start_consumer(
        GROUP,
        consumer_db.clone(),
        Counting {
            calls: calls.clone(),
        },
        transport.clone(),
        &[TOPIC],
        Arc::new(Notify::new()),
        None,
        shutdown.clone(),
    );

    // The producer: some messages before the outage, some while the server is down, the rest
    // after it is back.
    let (phase, mut follow) = watch::channel(Phase::Up);
    let (written, mut during_written) = watch::channel(0);
    let producing = tokio::spawn({
        let producer = producer.clone();
        let relay = relay.clone();
        async move {
            produce(&producer, &relay, 0..BEFORE_OUTAGE).await;
            follow.wait_for(|p| *p >= Phase::Down).await.expect("phase");
            produce(
                &producer,
                &relay,
                BEFORE_OUTAGE..BEFORE_OUTAGE + DURING_OUTAGE,
            )
            .await;
            written.send_replace(BEFORE_OUTAGE + DURING_OUTAGE);
            follow
                .wait_for(|p| *p >= Phase::Restarted)
                .await
                .expect("phase");
            produce(&producer, &relay, BEFORE_OUTAGE + DURING_OUTAGE..COUNT).await;
        }
    });

    let applied =
        async || flotilla_testkit::number(&consumer_db, "SELECT COUNT(*) FROM applied").await;
    let unpublished = async || {
        flotilla_testkit::number(
            &producer,
            "SELECT COUNT(*) FROM messaging_outbox WHERE published_at IS NULL",
        )
        .await
    };

    // Mid-run: the consumer has applied a tenth while the producer is still committing (it
    // takes at least half a second for its first thousand) and the relay publishing.
    eventually(
        Duration::from_secs(30),
        "the consumer applying its first messages over NATS",
        || async {
            match applied().await {
                n if n >= COUNT / 10 => Ok(()),
                n => Err(format!("{n} applied")),
            }
        },
    )
    .await;
    let stopping = Instant::now();
    let written =
        async || flotilla_testkit::number(&producer, "SELECT COUNT(*) FROM messaging_outbox").await;
    eprintln!(
        "stopping nats-server at {:?}: {} written, {} of them unpublished, {} applied",
        started.elapsed(),
        written().await,
        unpublished().await,
        applied().await,
    );
    tokio::task::block_in_place(|| server.stop()).expect("nats-server stops");
    eprintln!(
        "nats-server stopped in {:?}: {} written, {} of them unpublished, {} applied",
        stopping.elapsed(),
        written().await,
        unpublished().await,
        applied().await,
    );
    phase.send_replace(Phase::Down);

    // The outage: the producer goes on committing, the relay goes on trying.
    tokio::time::timeout(
        Duration::from_secs(30),
        during_written.wait_for(|n| *n >= BEFORE_OUTAGE + DURING_OUTAGE),
    )
    .await
    .expect("the producer writes during the outage")
    .expect("producer alive");
    tokio::time::sleep(OUTAGE.saturating_sub(stopping.elapsed())).await;
    let unpublished_during_outage = unpublished().await;
    assert!(
        unpublished_during_outage >= DURING_OUTAGE,
        "nothing can be published while the server is down: {unpublished_during_outage} unpublished"
    );
    tokio::task::block_in_place(|| server.start()).expect("nats-server starts again");
    eprintln!(
        "nats-server started again at {:?} after {:?} down; {} applied, {unpublished_during_outage} unpublished",
        started.elapsed(),
        stopping.elapsed(),
        applied().await,
    );
    phase.send_replace(Phase::Restarted);

    // Everything arrives, once.
    let restarted = Instant::now();
    eventually(
        PATIENCE,
        "every message applied after the restart",
        || async {
            match applied().await {
                n if n >= COUNT => Ok(()),
                n => Err(format!(
                    "{n} of {COUNT} applied, {} unpublished, {} dead letters",
                    unpublished().await,
                    flotilla_testkit::number(
                        &producer,
                        "SELECT COUNT(*) FROM messaging_dead_letters"
                    )
                    .await,
                )),
            }
        },
    )
    .await;
    producing.await.expect("producer finished");
    let caught_up = restarted.elapsed();
    // Nothing left in flight: the durable consumer has every delivery acknowledged, so no
    // redelivery can still come and be applied a second time.
    let stream = jetstream::new(nats.client().clone())
        .get_stream(&stream_name)
        .await
        .expect("stream");
    let durable = format!("{GROUP}-{}", TOPIC.replace('.', "_"));
    let deliveries = eventually(
        Duration::from_secs(30),
        "the durable consumer acknowledging everything",
        || async {
            let mut consumer: consumer::PullConsumer =
                stream.get_consumer(&durable).await.expect("consumer");
            let info = consumer.info().await.expect("consumer info");
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                Ok(info.delivered.consumer_sequence)
            } else {
                Err("acknowledgements pending")
            }
        },
    )
    .await;
    shutdown.cancel();

    // Every message applied exactly once.
    let rows: Vec<(String, i64, i64, i64)> =
        sqlx::query_as("SELECT key, n, applications, position FROM applied ORDER BY position")
            .fetch_all(&consumer_db)
            .await
            .expect("applied");
    let twice: Vec<_> = rows.iter().filter(|row| row.2 != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    let numbers: HashSet<i64> = rows.iter().map(|row| row.1).collect();
    assert_eq!(rows.len(), usize::try_from(COUNT).expect("count"));
    assert_eq!(numbers, (0..COUNT).collect(), "every message, no other");
    assert_eq!(
        flotilla_testkit::number(
            &consumer_db,
            "SELECT COUNT(*) FROM messaging_inbox WHERE consumer = 'restart'"
        )
        .await,
        COUNT,
        "one inbox row per message"
    );
    // The outbox is drained: every row published, none dead.
    assert_eq!(unpublished().await, 0, "unpublished outbox rows");
    assert_eq!(
        flotilla_testkit::number(&producer, "SELECT COUNT(*) FROM messaging_dead_letters").await,
        0,
        "dead letters"
    );
    assert_eq!(
        flotilla_testkit::number(&producer, "SELECT COUNT(*) FROM messaging_outbox").await,
        COUNT
    );
    let failed_publishes = flotilla_testkit::number(
        &producer,
        "SELECT COUNT(*) FROM messaging_outbox WHERE attempts > 0",
    )
    .await;

    // The stream holds each message once (publishes repeated across the restart were
    // deduplicated) and each key's messages in the order they were committed: what the relay
    // promises.
    let mut stream = stream;
    let stored = stream.info().await.expect("stream info").state.clone();
    assert_eq!(
        stored.messages,
        u64::try_from(COUNT).expect("count"),
        "messages in the stream"
    );
    let mut published: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for sequence in stored.first_sequence..=stored.last_sequence {
        let raw = stream
            .get_raw_message(sequence)
            .await
            .expect("stored message");
        let message: Message = serde_json::from_slice(&raw.payload).expect("an envelope");
        published
            .entry(message.key)
            .or_default()
            .push(message.payload["n"].as_i64().expect("n"));
    }
    for (key, ns) in &published {
        assert!(
            ns.windows(2).all(|pair| pair[0] < pair[1]),
            "{key} published out of order: {ns:?}"
        );
    }
    // The order of application per key is not asserted: JetStream delivers a message lost
    // with the connection again after its ack wait, behind later messages of its key
    // (docs/patterns/messaging.md, "Order under redelivery"). Reported instead.
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    let mut out_of_order = 0;
    for (key, n, _, _) in &rows {
        if last
            .get(key.as_str())
            .is_some_and(|previous| *previous > *n)
        {
            out_of_order += 1;
        }
        let entry = last.entry(key.as_str()).or_insert(*n);
        *entry = (*entry).max(*n);
    }
    eprintln!(
        "{COUNT} messages over {KEYS} keys in {:?}: caught up {caught_up:?} after the restart; \
         {failed_publishes} messages published again after a failed attempt; {deliveries} \
         deliveries to the consumer, {} handler calls; {out_of_order} applied behind a later \
         message of their key",
        started.elapsed(),
        calls.load(Ordering::Relaxed),
    );
    nats.delete_stream().await.expect("cleanup");
    drop(server);
}
