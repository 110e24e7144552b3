//! Retention: published outbox rows and processed inbox ids are pruned once past their window,
//! never before, and never a pending row; a message redelivered within the window is still a
//! duplicate.

use std::time::Duration;

use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Handler, HandlerResult, Processed};
use flotilla_messaging::outbox;
use flotilla_messaging::retention::{self, Pruned, Retention};
use flotilla_testkit::TempData;
use sqlx::SqlitePool;
use time::OffsetDateTime;

async fn database(data: &TempData) -> SqlitePool {
    let pool = data.pool("service").await;
    flotilla_messaging::migrate(&pool).await.expect("migrate");
    pool
}

const HOUR: Duration = Duration::from_secs(3600);

fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).expect("micros")
}

async fn outbox_seqs(pool: &SqlitePool) -> Vec<i64> {
    flotilla_testkit::numbers(pool, "SELECT seq FROM messaging_outbox ORDER BY seq").await
}

#[tokio::test]
async fn published_rows_are_pruned_after_their_window_in_order_and_pending_ones_never() {
    let data = TempData::new();
    let pool = database(&data).await;
    let now = OffsetDateTime::now_utc();
    for n in 0..6 {
        let mut tx = pool.begin().await.expect("begin");
        let message = Message::new("order.events", "Tested", "k", serde_json::json!({ "n": n }));
        flotilla_sqlite::direct(&mut tx, |db| outbox::enqueue(db, &message))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
    let seqs = outbox_seqs(&pool).await;
    // Published two hours ago: 1, 2 and 4; 3 is still pending; 5 was published a minute ago; 6
    // is pending.
    let published = |seq: i64, at: Option<OffsetDateTime>| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE messaging_outbox SET published_at = $1 WHERE seq = $2")
                .bind(at.map(micros))
                .bind(seq)
                .execute(&pool)
                .await
                .expect("mark");
        }
    };
    let long_ago = Some(now - 2 * HOUR);
    for i in [0, 1, 3] {
        published(seqs[i], long_ago).await;
    }
    published(seqs[4], Some(now - Duration::from_secs(60))).await;
    let retention = Retention {
        outbox: HOUR,
        ..Retention::default()
    };

    let pruned = retention::prune(&pool, "tests", &retention, now)
        .await
        .expect("pruned");
    assert_eq!(
        pruned,
        Pruned {
            outbox: 2,
            inbox: 0
        }
    );
    assert_eq!(
        outbox_seqs(&pool).await,
        seqs[2..],
        "the oldest two went; the old one after a pending row waits for it"
    );
    assert_eq!(
        retention::prune(&pool, "tests", &retention, now)
            .await
            .expect("pruned")
            .outbox,
        0,
        "nothing more while the third is pending"
    );

    published(seqs[2], long_ago).await;
    retention::prune(&pool, "tests", &retention, now)
        .await
        .expect("pruned");
    assert_eq!(
        outbox_seqs(&pool).await,
        seqs[4..],
        "the published-a-minute-ago row and the pending one stay"
    );
    // An hour later the recent one goes too; the pending one never does.
    retention::prune(&pool, "tests", &retention, now + HOUR)
        .await
        .expect("pruned");
    assert_eq!(outbox_seqs(&pool).await, seqs[5..]);
}

#[tokio::test]
async fn many_published_rows_are_pruned_in_several_transactions() {
    let data = TempData::new();
    let pool = database(&data).await;
    let rows = retention::PRUNED_AT_ONCE * 2 + 17;
    let mut tx = pool.begin().await.expect("begin");
    flotilla_sqlite::direct(&mut tx, |db| {
        (0..rows).try_for_each(|n| {
            let message =
                Message::new("order.events", "Tested", "k", serde_json::json!({ "n": n }));
            outbox::enqueue(db, &message)
        })
    })
    .await
    .expect("enqueue");
    tx.commit().await.expect("commit");
    sqlx::query("UPDATE messaging_outbox SET published_at = 1")
        .execute(&pool)
        .await
        .expect("mark");
    let pruned = retention::prune(
        &pool,
        "tests",
        &Retention::default(),
        OffsetDateTime::now_utc(),
    )
    .await
    .expect("pruned");
    assert_eq!(pruned.outbox, rows as u64);
    assert!(outbox_seqs(&pool).await.is_empty());
}

struct Counting;

impl Handler for Counting {
    fn handle(&self, _: &rusqlite::Connection, _: &Message) -> HandlerResult {
        Ok(Vec::new())
    }
}

/// A message whose UUIDv7 id was made at `at`.
fn message_made_at(at: OffsetDateTime) -> Message {
    let mut message = Message::new("order.events", "Tested", "k", serde_json::json!({}));
    let seconds = u64::try_from(at.unix_timestamp()).expect("after 1970");
    let timestamp = uuid::Timestamp::from_unix(uuid::NoContext, seconds, at.nanosecond());
    message.id = uuid::Uuid::new_v7(timestamp);
    message
}

#[tokio::test]
async fn inbox_ids_are_pruned_once_both_made_and_processed_before_the_window() {
    let data = TempData::new();
    let pool = database(&data).await;
    let consumer = Consumer::new("tests", pool.clone(), Counting);
    let now = OffsetDateTime::now_utc();
    let week = 7 * 24 * HOUR;
    let old = message_made_at(now - week - HOUR);
    let recent = message_made_at(now - HOUR);
    // Made long ago but processed just now (a late delivery): kept for a whole window.
    let late = message_made_at(now - week - 2 * HOUR);
    for message in [&old, &recent, &late] {
        assert_eq!(
            consumer.process(message).await.expect("processed"),
            Processed::Applied
        );
    }
    // Another consumer's rows are not this one's to prune.
    let other = Consumer::new("others", pool.clone(), Counting);
    other.process(&old).await.expect("processed");
    // The old one was processed when it was made, by both consumers.
    sqlx::query("UPDATE messaging_inbox SET processed_at = $1 WHERE message_id = $2")
        .bind(micros(now - week - HOUR))
        .bind(old.id.to_string())
        .execute(&pool)
        .await
        .expect("backdated");

    let pruned = retention::prune(&pool, "tests", &Retention::default(), now)
        .await
        .expect("pruned");
    assert_eq!(
        pruned,
        Pruned {
            outbox: 0,
            inbox: 1
        }
    );
    let left: Vec<(String, String)> = sqlx::query_as(
        "SELECT consumer, message_id FROM messaging_inbox ORDER BY consumer, message_id",
    )
    .fetch_all(&pool)
    .await
    .expect("inbox");
    let mut expected = vec![
        ("others".to_owned(), old.id.to_string()),
        ("tests".to_owned(), late.id.to_string()),
        ("tests".to_owned(), recent.id.to_string()),
    ];
    expected.sort();
    assert_eq!(left, expected);
    // Within the window a redelivery is still a duplicate.
    assert_eq!(
        consumer.process(&recent).await.expect("processed"),
        Processed::Duplicate
    );
    assert_eq!(
        consumer.process(&late).await.expect("processed"),
        Processed::Duplicate
    );
}
