//! The inventory's saga commands through the messaging consumer, on a real database: replies,
//! refusals, and a redelivered command applied once.

use flotilla_contracts::{Command, Line, ReleaseStock, ReserveStock};
use flotilla_inventory::PARTICIPANT;
use flotilla_messaging::Message;
use flotilla_testkit::{TestConsumer, assert_no_violations, assert_reason, assert_reply, value};

fn command<C: Command>(command: &C) -> Message {
    command.message("saga-1", "order.saga-replies")
}

fn reserve(order_id: &str, sku: &str, quantity: i64) -> Message {
    command(&ReserveStock {
        order_id: order_id.into(),
        lines: vec![Line {
            sku: sku.into(),
            quantity,
        }],
    })
}

#[tokio::test]
async fn reserve_and_release_answer_and_a_redelivery_changes_nothing() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let reserve = reserve("o-1", "KB-001", 2);
    consumer.assert_applied_once(&reserve).await;
    let release = command(&ReleaseStock {
        order_id: "o-1".into(),
    });
    consumer.process(&release).await;
    // One reply per command, none for the duplicate.
    let answers = consumer.assert_outbox(2).await;
    assert_reply(&answers[0], &reserve, "ReserveStockSucceeded", true);
    assert_eq!(answers[1].payload["ok"], true);
    let reserved: i64 = value(
        &consumer.pool,
        "SELECT reserved FROM products WHERE sku = 'KB-001'",
        &[],
    )
    .await;
    assert_eq!(reserved, 0);
    assert_no_violations(flotilla_inventory::stock::check(&consumer.pool).await);
}

#[tokio::test]
async fn a_shortage_is_answered_with_a_refusal_and_nonsense_is_rejected() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    consumer.process(&reserve("o-2", "KB-001", 1_000_000)).await;
    let answers = consumer.outbox().await;
    assert_eq!(answers[0].payload["ok"], false);
    assert_reason(&answers[0], |r| r.contains("out of stock: KB-001"));
    let nonsense = [
        ("PaintItBlue", serde_json::json!({})),
        ("ReserveStock", serde_json::json!({ "order_id": 7 })),
    ];
    consumer.assert_rejects(None, &nonsense).await;
    // No reply to what was rejected.
    consumer.assert_outbox(1).await;
}
