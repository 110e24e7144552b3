//! `outbox::replay_dead_letters`: all or nothing, and in the letters' seq order.

use flotilla_messaging::Message;
use flotilla_messaging::outbox::{self, Replay};
use flotilla_testkit::TempData;
use sqlx::SqlitePool;

/// A database whose outbox buried `count` messages of one key; returns them in enqueue order.
async fn buried(count: usize) -> (SqlitePool, Vec<Message>, TempData) {
    let data = TempData::new();
    let pool = data.messaging_pool("service").await;
    let messages: Vec<Message> = (0..count)
        .map(|n| Message::new("order.events", "Tested", "k", serde_json::json!({ "n": n })))
        .collect();
    flotilla_testkit::bury(&pool, &messages).await;
    (pool, messages, data)
}

/// The message ids of the pending outbox rows, in seq order.
async fn pending(pool: &SqlitePool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT message_id FROM messaging_outbox WHERE published_at IS NULL ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("pending")
}

#[tokio::test]
async fn an_unknown_seq_replays_nothing_and_the_letters_go_back_in_seq_order() {
    let (pool, messages, _dir) = buried(3).await;
    let letters = outbox::dead_letters(&pool).await.expect("list");
    let seqs: Vec<i64> = letters.iter().map(|letter| letter.seq).collect();

    let unknown = seqs[2] + 1;
    assert_eq!(
        outbox::replay_dead_letters(&pool, Some(&[seqs[0], unknown]))
            .await
            .expect("replay"),
        Replay::Unknown(vec![unknown])
    );
    assert_eq!(outbox::dead_letters(&pool).await.expect("list"), letters);
    assert!(pending(&pool).await.is_empty());

    // Asked out of order and twice: replayed once each, in seq order.
    assert_eq!(
        outbox::replay_dead_letters(&pool, Some(&[seqs[2], seqs[1], seqs[2]]))
            .await
            .expect("replay"),
        Replay::Done(vec![seqs[1], seqs[2]])
    );
    assert_eq!(
        outbox::replay_dead_letters(&pool, None)
            .await
            .expect("replay"),
        Replay::Done(vec![seqs[0]])
    );
    assert!(outbox::dead_letters(&pool).await.expect("list").is_empty());
    let ids: Vec<String> = [1, 2, 0]
        .map(|n: usize| messages[n].id.to_string())
        .to_vec();
    assert_eq!(pending(&pool).await, ids, "in the order they were replayed");
}
