//! The shipping's saga commands through the messaging consumer, on a real database: replies,
//! refusals, and a redelivered command applied once.

use flotilla_contracts::{CancelShipment, Command, Destination, ScheduleShipment};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Processed};
use flotilla_shipping::carrier::CANCELLED_BEFORE_SCHEDULING;
use flotilla_shipping::commands::ShippingCommands;
use flotilla_testkit::TempData;
use sqlx::SqlitePool;

async fn database() -> (SqlitePool, TempData) {
    let data = TempData::new();
    let pool = flotilla_shipping::open(&data.settings()).await;
    (pool.expect("database"), data)
}

fn command<C: Command>(command: &C) -> Message {
    command.message("saga-1", "order.saga-replies")
}

fn schedule(order_id: &str, country: &str) -> Message {
    command(&ScheduleShipment {
        order_id: order_id.into(),
        destination: Destination {
            name: "Alice Martin".into(),
            street: "12 rue des Lilas".into(),
            city: "Lyon".into(),
            postal_code: "69003".into(),
            country: country.into(),
        },
    })
}

fn cancel(order_id: &str) -> Message {
    command(&CancelShipment {
        order_id: order_id.into(),
    })
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

/// `(shipment_id, status, city)` of each shipment of an order.
async fn shipments(pool: &SqlitePool, order_id: &str) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT shipment_id, status, city FROM shipments WHERE order_id = ?")
        .bind(order_id)
        .fetch_all(pool)
        .await
        .expect("shipments")
}

async fn no_violations(pool: &SqlitePool) {
    let violations = flotilla_shipping::carrier::check(pool)
        .await
        .expect("check");
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test]
async fn schedule_and_cancel_answer_and_a_redelivery_changes_nothing() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("shipping", pool.clone(), ShippingCommands);
    let schedule = schedule("o-1", "FR");
    assert_eq!(
        consumer.process(&schedule).await.expect("processed"),
        Processed::Applied
    );
    assert_eq!(
        consumer.process(&schedule).await.expect("again"),
        Processed::Duplicate
    );
    let stored = shipments(&pool, "o-1").await;
    assert_eq!(stored.len(), 1, "one shipment, not two");
    assert_eq!(stored[0].1, "SCHEDULED");
    assert_eq!(stored[0].2, "Lyon", "the destination reached the carrier");
    let cancel = cancel("o-1");
    assert_eq!(
        consumer.process(&cancel).await.expect("processed"),
        Processed::Applied
    );
    assert_eq!(
        consumer.process(&cancel).await.expect("again"),
        Processed::Duplicate
    );
    let answers = replies(&pool).await;
    assert_eq!(
        answers.len(),
        2,
        "one reply per command, none for the duplicates"
    );
    assert_eq!(answers[0].message_type, "ScheduleShipmentSucceeded");
    assert_eq!(answers[0].topic, "order.saga-replies");
    assert_eq!(answers[0].causation_id, Some(schedule.id.to_string()));
    assert_eq!(answers[0].payload["ok"], true);
    assert_eq!(answers[0].payload["shipment_id"], stored[0].0.as_str());
    assert_eq!(answers[1].message_type, "CancelShipmentSucceeded");
    assert_eq!(answers[1].topic, "order.saga-replies");
    assert_eq!(answers[1].causation_id, Some(cancel.id.to_string()));
    assert_eq!(answers[1].payload["ok"], true);
    assert_eq!(answers[1].payload["shipment_id"], stored[0].0.as_str());
    assert_eq!(shipments(&pool, "o-1").await[0].1, "CANCELLED");
    no_violations(&pool).await;
}

#[tokio::test]
async fn antarctica_is_answered_with_a_refusal() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("shipping", pool.clone(), ShippingCommands);
    let south = schedule("o-2", "AQ");
    assert_eq!(
        consumer.process(&south).await.expect("processed"),
        Processed::Applied
    );
    let answers = replies(&pool).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].message_type, "ScheduleShipmentRefused");
    assert_eq!(answers[0].topic, "order.saga-replies");
    assert_eq!(answers[0].causation_id, Some(south.id.to_string()));
    assert_eq!(answers[0].payload["ok"], false);
    assert_eq!(answers[0].payload["reason"], "no carrier serves Antarctica");
    assert!(shipments(&pool, "o-2").await.is_empty());
    no_violations(&pool).await;
}

#[tokio::test]
async fn a_cancel_before_scheduling_succeeds_and_a_cancel_after_dispatch_is_refused() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("shipping", pool.clone(), ShippingCommands);
    // The compensation overtakes its step: nothing to cancel, and the late schedule is refused.
    consumer.process(&cancel("o-3")).await.expect("processed");
    consumer
        .process(&schedule("o-3", "FR"))
        .await
        .expect("processed");
    // A shipment that has left cannot be cancelled.
    consumer
        .process(&schedule("o-4", "DE"))
        .await
        .expect("processed");
    sqlx::query("UPDATE shipments SET status = 'DISPATCHED' WHERE order_id = 'o-4'")
        .execute(&pool)
        .await
        .expect("dispatched");
    let late = cancel("o-4");
    assert_eq!(
        consumer.process(&late).await.expect("processed"),
        Processed::Applied,
        "a refusal is an answer, not a failure"
    );

    let answers = replies(&pool).await;
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0].message_type, "CancelShipmentSucceeded");
    assert_eq!(answers[0].payload["ok"], true);
    assert_eq!(answers[1].message_type, "ScheduleShipmentRefused");
    assert_eq!(answers[1].payload["reason"], CANCELLED_BEFORE_SCHEDULING);
    assert!(shipments(&pool, "o-3").await.is_empty());
    assert_eq!(answers[2].payload["ok"], true);
    assert_eq!(answers[3].message_type, "CancelShipmentRefused");
    assert_eq!(answers[3].causation_id, Some(late.id.to_string()));
    assert_eq!(answers[3].payload["ok"], false);
    assert!(
        answers[3].payload["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with("is DISPATCHED: too late to cancel")),
        "{}",
        answers[3].payload
    );
    assert_eq!(shipments(&pool, "o-4").await[0].1, "DISPATCHED");
    no_violations(&pool).await;
}

#[tokio::test]
async fn nonsense_is_rejected_without_a_reply() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("shipping", pool.clone(), ShippingCommands);
    let unknown = Message::new(
        "shipping.commands",
        "ShipByPigeon",
        "k",
        serde_json::json!({}),
    )
    .replying_to("order.saga-replies");
    assert_eq!(
        consumer.process(&unknown).await.expect("processed"),
        Processed::Rejected
    );
    let broken = Message::new(
        "shipping.commands",
        "ScheduleShipment",
        "k",
        serde_json::json!({ "order_id": "o-5", "destination": "somewhere" }),
    )
    .replying_to("order.saga-replies");
    assert_eq!(
        consumer.process(&broken).await.expect("processed"),
        Processed::Rejected
    );
    assert!(
        replies(&pool).await.is_empty(),
        "no reply to what was rejected"
    );
    assert!(shipments(&pool, "o-5").await.is_empty());
}
