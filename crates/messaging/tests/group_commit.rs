//! Group commit: the deliveries waiting together are committed together, in order, and one
//! message's retry or failure never costs another its effect.

use std::sync::{Arc, Mutex};

use flotilla_messaging::inbox::{
    ByTopic, Consumer, Handler, HandlerError, HandlerResult, Processed,
};
use flotilla_messaging::{Deliveries, Delivery, Message};
use flotilla_testkit::TempData;
use sqlx::SqlitePool;

/// Records each message's `n` in `effects`; asks for a retry of `n == retry`, and answers every
/// message with an event.
struct Recorder {
    retry: Option<i64>,
    committed: Arc<Mutex<Vec<i64>>>,
}

fn n(message: &Message) -> i64 {
    message.payload["n"].as_i64().unwrap_or(-1)
}

impl Handler for Recorder {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        flotilla_sqlite::execute(db, "INSERT INTO effects (n) VALUES ($1)", &[&n(message)])
            .map_err(flotilla_sqlite::sqlx_error)?;
        if Some(n(message)) == self.retry {
            return Err(HandlerError::Retry("not now".into()));
        }
        if n(message) < 0 {
            return Err(HandlerError::Reject("negative".into()));
        }
        Ok(vec![Message::new(
            "order.done",
            "Done",
            message.key.clone(),
            serde_json::json!({ "n": n(message) }),
        )])
    }

    fn committed(&self, message: &Message) {
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(n(message));
    }
}

/// [`Recorder`] as the second handler of a [`ByTopic`]: the messages (on `order.events`) are
/// not on the first one's topic, so the test's recorder hears of every commit (had the first
/// run, it would not).
fn by_topic(recorder: Recorder) -> ByTopic<Recorder, Recorder> {
    let never = Recorder {
        retry: None,
        committed: Arc::default(),
    };
    ByTopic::new("payment.commands", never, recorder)
}

async fn database() -> (SqlitePool, TempData) {
    let data = TempData::new();
    let pool = data.messaging_pool("consumer").await;
    flotilla_testkit::by_hand(
        &pool,
        "CREATE TABLE effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL)",
    )
    .await;
    (pool, data)
}

async fn effects(pool: &SqlitePool) -> Vec<i64> {
    flotilla_testkit::numbers(pool, "SELECT n FROM effects ORDER BY seq").await
}

async fn outbox(pool: &SqlitePool) -> i64 {
    flotilla_testkit::number(pool, "SELECT COUNT(*) FROM messaging_outbox").await
}

fn message(n: i64) -> Message {
    Message::new(
        "order.events",
        "Tested",
        "key",
        serde_json::json!({ "n": n }),
    )
}

/// A consumer's database, and the `n`s its recorder heard committed.
struct Group {
    pool: SqlitePool,
    committed: Arc<Mutex<Vec<i64>>>,
    _data: TempData,
}

impl Group {
    async fn new() -> Self {
        let (pool, data) = database().await;
        Self {
            pool,
            committed: Arc::default(),
            _data: data,
        }
    }

    /// A [`Recorder`] asking for a retry of `n == retry`, telling this group of its commits.
    fn recorder(&self, retry: Option<i64>) -> Recorder {
        Recorder {
            retry,
            committed: self.committed.clone(),
        }
    }

    fn consumer<H: Handler>(&self, handler: H) -> Consumer<H> {
        Consumer::new("group", self.pool.clone(), handler)
    }
}

#[tokio::test]
async fn a_group_commits_every_effect_in_order_and_skips_duplicates_and_rejections() {
    let group = Group::new().await;
    commits_in_order(&group, group.consumer(group.recorder(None))).await;
}

#[tokio::test]
async fn a_group_through_by_topic_commits_every_effect_in_order_and_skips_duplicates_and_rejections()
 {
    let group = Group::new().await;
    commits_in_order(&group, group.consumer(by_topic(group.recorder(None)))).await;
}

async fn commits_in_order<H: Handler>(group: &Group, consumer: Consumer<H>) {
    let (pool, committed) = (group.pool.clone(), &group.committed);
    let (one, two, bad) = (message(1), message(2), message(-1));
    let outcomes = consumer
        .process_batch(&[&one, &two, &one, &bad])
        .await
        .expect("processed");
    assert_eq!(
        outcomes,
        [
            Processed::Applied,
            Processed::Applied,
            Processed::Duplicate,
            Processed::Rejected
        ]
    );
    // The rejected handler's partial write commits with its inbox row, as a lone one does.
    assert_eq!(effects(&pool).await, [1, 2, -1]);
    assert_eq!(outbox(&pool).await, 2, "one answer per applied message");
    assert_eq!(
        *committed.lock().expect("lock"),
        [1, 2],
        "told after the commit"
    );
    let again = consumer
        .process_batch(&[&two, &one])
        .await
        .expect("processed again");
    assert_eq!(again, [Processed::Duplicate, Processed::Duplicate]);
    assert_eq!(effects(&pool).await, [1, 2, -1]);
}

#[tokio::test]
async fn a_retry_in_a_group_rolls_it_back_and_the_others_still_apply_alone() {
    let group = Group::new().await;
    retries_alone(&group, group.consumer(group.recorder(Some(2)))).await;
}

#[tokio::test]
async fn a_retry_in_a_group_through_by_topic_rolls_it_back_and_the_others_still_apply_alone() {
    let group = Group::new().await;
    retries_alone(&group, group.consumer(by_topic(group.recorder(Some(2))))).await;
}

async fn retries_alone<H: Handler>(group: &Group, consumer: Consumer<H>) {
    let (pool, committed) = (group.pool.clone(), &group.committed);
    let batch = [message(1), message(2), message(3)];
    let refs: Vec<&Message> = batch.iter().collect();
    let outcomes = consumer.process_batch(&refs).await.expect("processed");
    assert_eq!(
        outcomes,
        [Processed::Applied, Processed::Retried, Processed::Applied]
    );
    assert_eq!(
        effects(&pool).await,
        [1, 3],
        "the retried message left nothing"
    );
    assert_eq!(outbox(&pool).await, 2);
    assert_eq!(*committed.lock().expect("lock"), [1, 3]);
    let inbox: i64 = flotilla_testkit::number(&pool, "SELECT COUNT(*) FROM messaging_inbox").await;
    assert_eq!(inbox, 2, "the retried message can come again");
}

#[tokio::test]
async fn deliveries_waiting_together_are_settled_after_one_commit() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new(
        "group",
        pool.clone(),
        Recorder {
            retry: Some(5),
            committed: Arc::default(),
        },
    );
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let settled = Arc::new(Mutex::new(Vec::new()));
    for n in 1..=6 {
        let settled = settled.clone();
        let delivery = Delivery::new(message(n), 1, move |settlement| {
            Box::pin(async move {
                settled
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((n, settlement));
                Ok(())
            })
        });
        sender.send(Ok(delivery)).await.expect("queued");
    }
    drop(sender);
    let mut deliveries = Deliveries::new(receiver);
    let mut batch = Vec::new();
    while let Some(Ok(delivery)) = deliveries.try_next() {
        batch.push(delivery);
    }
    assert_eq!(batch.len(), 6, "all six were waiting");
    let outcomes = consumer.deliver_all(batch).await.expect("delivered");
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == Processed::Applied)
            .count(),
        5
    );
    let mut settled = settled.lock().expect("lock").clone();
    settled.sort_by_key(|(n, _)| *n);
    let retried: Vec<i64> = settled
        .iter()
        .filter(|(_, s)| matches!(s, flotilla_messaging::Settlement::Retry(_)))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(settled.len(), 6);
    assert_eq!(retried, [5]);
    assert_eq!(effects(&pool).await, [1, 2, 3, 4, 6]);
}
