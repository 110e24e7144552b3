//! The payment's saga commands through the messaging consumer, on a real database: replies,
//! refusals, and a redelivered command applied once.

use flotilla_contracts::{
    AuthorizePayment, CapturePayment, Command, ORDER_SAGA_REPLIES, RefundPayment, VoidPayment,
};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::Processed;
use flotilla_payment::PARTICIPANT;
use flotilla_testkit::{
    TestConsumer, assert_no_violations, assert_reason, assert_reply, row, value,
};
use sqlx::SqlitePool;

fn command<C: Command>(command: &C) -> Message {
    command.message("saga-1", "order.saga-replies")
}

fn authorize(order_id: &str, customer_id: &str, amount_cents: i64) -> Message {
    command(&AuthorizePayment {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        amount_cents,
    })
}

/// `(held_cents, charged_cents)` of an account.
async fn balance(pool: &SqlitePool, customer_id: &str) -> (i64, i64) {
    let sql = "SELECT held_cents, charged_cents FROM accounts WHERE customer_id = ?";
    row(pool, sql, &[customer_id]).await
}

async fn payments(pool: &SqlitePool, order_id: &str) -> i64 {
    value(
        pool,
        "SELECT COUNT(*) FROM payments WHERE order_id = ?",
        &[order_id],
    )
    .await
}

#[tokio::test]
async fn authorize_capture_and_refund_answer_and_a_redelivery_changes_nothing() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    let authorize = authorize("o-1", "alice", 2_500);
    consumer.assert_applied_once(&authorize).await;
    assert_eq!(
        balance(pool, "alice").await,
        (2_500, 0),
        "held once, not twice"
    );
    assert_eq!(payments(pool, "o-1").await, 1);
    let capture = command(&CapturePayment {
        order_id: "o-1".into(),
    });
    consumer.assert_applied_once(&capture).await;
    assert_eq!(balance(pool, "alice").await, (0, 2_500));
    let refund = command(&RefundPayment {
        order_id: "o-1".into(),
    });
    consumer.process(&refund).await;
    assert_eq!(balance(pool, "alice").await, (0, 0));

    // One reply per command, none for the duplicates.
    let answers = consumer.assert_outbox(3).await;
    assert_reply(&answers[0], &authorize, "AuthorizePaymentSucceeded", true);
    assert_eq!(answers[0].payload["amount_cents"], 2_500);
    let payment_id = answers[0].payload["payment_id"]
        .as_str()
        .expect("a payment id")
        .to_owned();
    assert!(!payment_id.is_empty());
    assert_reply(&answers[1], &capture, "CapturePaymentSucceeded", true);
    assert_eq!(answers[1].payload["payment_id"], payment_id.as_str());
    assert_reply(&answers[2], &refund, "RefundPaymentSucceeded", true);
    assert_eq!(answers[2].payload["payment_id"], payment_id.as_str());
    assert_no_violations(flotilla_payment::ledger::check(pool).await);
}

#[tokio::test]
async fn carol_over_her_limit_is_answered_with_a_refusal() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    let greedy = authorize("o-2", "carol", 1_500);
    assert_eq!(consumer.process(&greedy).await, Processed::Applied);
    let answers = consumer.assert_outbox(1).await;
    assert_reply(&answers[0], &greedy, "AuthorizePaymentRefused", false);
    assert_reason(&answers[0], |r| r.contains("credit limit exceeded"));
    assert_eq!(balance(pool, "carol").await, (0, 0));
    assert_eq!(payments(pool, "o-2").await, 0);
    assert_no_violations(flotilla_payment::ledger::check(pool).await);
}

#[tokio::test]
async fn a_capture_after_a_void_is_refused_and_a_void_without_payment_succeeds() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    consumer.process(&authorize("o-3", "bob", 4_000)).await;
    let void = command(&VoidPayment {
        order_id: "o-3".into(),
    });
    consumer.process(&void).await;
    let capture = command(&CapturePayment {
        order_id: "o-3".into(),
    });
    assert_eq!(
        consumer.process(&capture).await,
        Processed::Applied,
        "a refusal is an answer, not a failure"
    );
    // The compensation overtakes its step: voiding an order without a payment succeeds, and
    // the late authorization is refused.
    let early_void = command(&VoidPayment {
        order_id: "o-4".into(),
    });
    consumer.process(&early_void).await;
    let late = authorize("o-4", "bob", 100);
    consumer.process(&late).await;
    // Nothing to capture.
    let orphan = command(&CapturePayment {
        order_id: "o-5".into(),
    });
    consumer.process(&orphan).await;

    let answers = consumer.assert_outbox(6).await;
    assert_reply(&answers[1], &void, "VoidPaymentSucceeded", true);
    assert_reply(&answers[2], &capture, "CapturePaymentRefused", false);
    assert_reason(&answers[2], |r| {
        r.starts_with("cannot capture payment") && r.ends_with("VOIDED")
    });
    assert_reply(&answers[3], &early_void, "VoidPaymentSucceeded", true);
    assert_reply(&answers[4], &late, "AuthorizePaymentRefused", false);
    assert_eq!(
        answers[4].payload["reason"],
        "the payment was voided before it was authorized"
    );
    assert_reply(&answers[5], &orphan, "CapturePaymentRefused", false);
    assert_eq!(
        answers[5].payload["reason"],
        "cannot capture order `o-5`: it has no payment"
    );
    assert_eq!(balance(pool, "bob").await, (0, 0));
    assert_no_violations(flotilla_payment::ledger::check(pool).await);
}

#[tokio::test]
async fn nonsense_is_rejected_without_a_reply() {
    let consumer = TestConsumer::commands(&PARTICIPANT).await;
    let pool = &consumer.pool;
    let broken =
        serde_json::json!({ "order_id": "o-6", "customer_id": "alice", "amount_cents": "lots" });
    let nonsense = [
        ("PrintMoney", serde_json::json!({})),
        ("AuthorizePayment", broken),
    ];
    consumer
        .assert_rejects(Some(ORDER_SAGA_REPLIES), &nonsense)
        .await;
    // No reply to what was rejected.
    consumer.assert_outbox(0).await;
    assert_eq!(balance(pool, "alice").await, (0, 0));
    assert_eq!(payments(pool, "o-6").await, 0);
}
