//! The shipping's saga commands through the messaging consumer, on a real database: replies,
//! refusals, and a redelivered command applied once.

use flotilla_contracts::{
    CancelShipment, Command, Destination, ORDER_SAGA_REPLIES, ScheduleShipment,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::Processed;
use flotilla_shipping::PARTICIPANT;
use flotilla_shipping::carrier::CANCELLED_BEFORE_SCHEDULING;
use flotilla_testkit::{
    TestConsumer, assert_no_violations, assert_reason, assert_reply, by_hand, rows,
};
use sqlx::SqlitePool;

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
        customer_id: Some("alice".into()),
    })
}

fn cancel(order_id: &str) -> Message {
    command(&CancelShipment {
        order_id: order_id.into(),
    })
}

/// `(shipment_id, status, city)` of each shipment of an order.
async fn shipments(pool: &SqlitePool, order_id: &str) -> Vec<(String, String, String)> {
    let sql = "SELECT shipment_id, status, city FROM shipments WHERE order_id = ?";
    rows(pool, sql, &[order_id]).await
}

/// Asserts that the shipments of `order_id` have the `statuses` (none, or its one shipment's),
/// and that the carrier's invariants hold: the state a test ends in.
async fn assert_ends(pool: &SqlitePool, order_id: &str, statuses: &[&str]) {
    let stored: Vec<String> = shipments(pool, order_id)
        .await
        .into_iter()
        .map(|(_, status, _)| status)
        .collect();
    assert_eq!(stored, statuses, "the shipments of {order_id}");
    assert_no_violations(flotilla_shipping::carrier::check(pool).await);
}

#[tokio::test]
async fn schedule_and_cancel_answer_and_a_redelivery_changes_nothing() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    let schedule = schedule("o-1", "FR");
    consumer.assert_applied_once(&schedule).await;
    let stored = shipments(pool, "o-1").await;
    assert_eq!(stored.len(), 1, "one shipment, not two");
    assert_eq!(stored[0].1, "SCHEDULED");
    assert_eq!(stored[0].2, "Lyon", "the destination reached the carrier");
    let cancel = cancel("o-1");
    consumer.assert_applied_once(&cancel).await;
    // One reply per command, none for the duplicates.
    let answers = consumer.assert_outbox(2).await;
    assert_reply(&answers[0], &schedule, "ScheduleShipmentSucceeded", true);
    assert_eq!(answers[0].payload["shipment_id"], stored[0].0.as_str());
    assert_reply(&answers[1], &cancel, "CancelShipmentSucceeded", true);
    assert_eq!(answers[1].payload["shipment_id"], stored[0].0.as_str());
    assert_ends(pool, "o-1", &["CANCELLED"]).await;
}

#[tokio::test]
async fn antarctica_is_answered_with_a_refusal() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    let south = schedule("o-2", "AQ");
    assert_eq!(consumer.process(&south).await, Processed::Applied);
    let answers = consumer.assert_outbox(1).await;
    assert_reply(&answers[0], &south, "ScheduleShipmentRefused", false);
    assert_eq!(answers[0].payload["reason"], "no carrier serves Antarctica");
    assert_ends(pool, "o-2", &[]).await;
}

#[tokio::test]
async fn a_cancel_before_scheduling_succeeds_and_a_cancel_after_dispatch_is_refused() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    // The compensation overtakes its step: nothing to cancel, and the late schedule is refused.
    let early = cancel("o-3");
    consumer.process(&early).await;
    let overtaken = schedule("o-3", "FR");
    consumer.process(&overtaken).await;
    // A shipment that has left cannot be cancelled.
    let left = schedule("o-4", "DE");
    consumer.process(&left).await;
    let dispatch = "UPDATE shipments SET status = 'DISPATCHED' WHERE order_id = 'o-4'";
    by_hand(pool, dispatch).await;
    let late = cancel("o-4");
    assert_eq!(
        consumer.process(&late).await,
        Processed::Applied,
        "a refusal is an answer, not a failure"
    );

    let answers = consumer.assert_outbox(4).await;
    assert_reply(&answers[0], &early, "CancelShipmentSucceeded", true);
    assert_reply(&answers[1], &overtaken, "ScheduleShipmentRefused", false);
    assert_eq!(answers[1].payload["reason"], CANCELLED_BEFORE_SCHEDULING);
    assert!(shipments(pool, "o-3").await.is_empty());
    assert_reply(&answers[2], &left, "ScheduleShipmentSucceeded", true);
    assert_reply(&answers[3], &late, "CancelShipmentRefused", false);
    assert_reason(&answers[3], |r| {
        r.ends_with("is DISPATCHED: too late to cancel")
    });
    assert_ends(pool, "o-4", &["DISPATCHED"]).await;
}

#[tokio::test]
async fn nonsense_is_rejected_without_a_reply() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    let broken = serde_json::json!({ "order_id": "o-5", "destination": "somewhere" });
    let nonsense = [
        ("ShipByPigeon", serde_json::json!({})),
        ("ScheduleShipment", broken),
    ];
    consumer
        .assert_rejects(Some(ORDER_SAGA_REPLIES), &nonsense)
        .await;
    // No reply to what was rejected.
    consumer.assert_outbox(0).await;
    assert_ends(pool, "o-5", &[]).await;
}
