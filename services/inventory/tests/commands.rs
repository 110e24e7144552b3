//! The inventory's saga commands through the messaging consumer, on a real database: replies,
//! refusals, and a redelivered command applied once.

use flotilla_contracts::{Command, Line, ReleaseStock, ReserveStock};
use flotilla_inventory::commands::StockCommands;
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Processed};
use flotilla_testkit::TempData;
use sqlx::SqlitePool;

async fn database() -> (SqlitePool, TempData) {
    let data = TempData::new();
    let pool = flotilla_inventory::open(&data.settings()).await;
    (pool.expect("database"), data)
}

fn command<C: Command>(command: &C) -> Message {
    command.message("saga-1", "order.saga-replies")
}

async fn replies(pool: &SqlitePool) -> Vec<Message> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT envelope FROM messaging_outbox ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("outbox");
    rows.into_iter()
        .map(|(e,)| serde_json::from_str(&e).expect("message"))
        .collect()
}

#[tokio::test]
async fn reserve_and_release_answer_and_a_redelivery_changes_nothing() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("inventory", pool.clone(), StockCommands);
    let reserve = command(&ReserveStock {
        order_id: "o-1".into(),
        lines: vec![Line {
            sku: "KB-001".into(),
            quantity: 2,
        }],
    });
    assert_eq!(
        consumer.process(&reserve).await.expect("processed"),
        Processed::Applied
    );
    assert_eq!(
        consumer.process(&reserve).await.expect("again"),
        Processed::Duplicate
    );
    let release = command(&ReleaseStock {
        order_id: "o-1".into(),
    });
    consumer.process(&release).await.expect("processed");
    let answers = replies(&pool).await;
    assert_eq!(
        answers.len(),
        2,
        "one reply per command, none for the duplicate"
    );
    assert_eq!(answers[0].message_type, "ReserveStockSucceeded");
    assert_eq!(answers[0].topic, "order.saga-replies");
    assert_eq!(answers[0].causation_id, Some(reserve.id.to_string()));
    assert_eq!(answers[1].payload["ok"], true);
    let (reserved,): (i64,) = sqlx::query_as("SELECT reserved FROM products WHERE sku = 'KB-001'")
        .fetch_one(&pool)
        .await
        .expect("stock");
    assert_eq!(reserved, 0);
    assert!(
        flotilla_inventory::stock::check(&pool)
            .await
            .expect("check")
            .is_empty()
    );
}

#[tokio::test]
async fn a_shortage_is_answered_with_a_refusal_and_nonsense_is_rejected() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("inventory", pool.clone(), StockCommands);
    let greedy = command(&ReserveStock {
        order_id: "o-2".into(),
        lines: vec![Line {
            sku: "KB-001".into(),
            quantity: 1_000_000,
        }],
    });
    consumer.process(&greedy).await.expect("processed");
    let answers = replies(&pool).await;
    assert_eq!(answers[0].payload["ok"], false);
    assert!(
        answers[0].payload["reason"]
            .as_str()
            .is_some_and(|r| r.contains("out of stock: KB-001")),
        "{}",
        answers[0].payload
    );
    let unknown = Message::new(
        "inventory.commands",
        "PaintItBlue",
        "k",
        serde_json::json!({}),
    );
    assert_eq!(
        consumer.process(&unknown).await.expect("processed"),
        Processed::Rejected
    );
    let broken = Message::new(
        "inventory.commands",
        "ReserveStock",
        "k",
        serde_json::json!({ "order_id": 7 }),
    );
    assert_eq!(
        consumer.process(&broken).await.expect("processed"),
        Processed::Rejected
    );
    assert_eq!(
        replies(&pool).await.len(),
        1,
        "no reply to what was rejected"
    );
}
