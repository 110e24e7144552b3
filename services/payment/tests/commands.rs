//! The payment's saga commands through the messaging consumer, on a real database: replies,
//! refusals, and a redelivered command applied once.

use flotilla_contracts::{AuthorizePayment, CapturePayment, Command, RefundPayment, VoidPayment};
use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Consumer, Processed};
use flotilla_payment::commands::PaymentCommands;
use flotilla_testkit::TempData;
use sqlx::SqlitePool;

async fn database() -> (SqlitePool, TempData) {
    let data = TempData::new();
    let pool = flotilla_payment::open(&data.settings()).await;
    (pool.expect("database"), data)
}

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

async fn replies(pool: &SqlitePool) -> Vec<Message> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT envelope FROM messaging_outbox ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("outbox");
    rows.into_iter()
        .map(|(e,)| serde_json::from_str(&e).expect("message"))
        .collect()
}

/// `(held_cents, charged_cents)` of an account.
async fn balance(pool: &SqlitePool, customer_id: &str) -> (i64, i64) {
    sqlx::query_as("SELECT held_cents, charged_cents FROM accounts WHERE customer_id = ?")
        .bind(customer_id)
        .fetch_one(pool)
        .await
        .expect("account")
}

async fn payments(pool: &SqlitePool, order_id: &str) -> i64 {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM payments WHERE order_id = ?")
        .bind(order_id)
        .fetch_one(pool)
        .await
        .expect("payments");
    count
}

async fn no_violations(pool: &SqlitePool) {
    let violations = flotilla_payment::ledger::check(pool).await.expect("check");
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test]
async fn authorize_capture_and_refund_answer_and_a_redelivery_changes_nothing() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("payment", pool.clone(), PaymentCommands);
    let authorize = authorize("o-1", "alice", 2_500);
    assert_eq!(
        consumer.process(&authorize).await.expect("processed"),
        Processed::Applied
    );
    assert_eq!(
        consumer.process(&authorize).await.expect("again"),
        Processed::Duplicate
    );
    assert_eq!(
        balance(&pool, "alice").await,
        (2_500, 0),
        "held once, not twice"
    );
    assert_eq!(payments(&pool, "o-1").await, 1);
    let capture = command(&CapturePayment {
        order_id: "o-1".into(),
    });
    assert_eq!(
        consumer.process(&capture).await.expect("processed"),
        Processed::Applied
    );
    assert_eq!(
        consumer.process(&capture).await.expect("again"),
        Processed::Duplicate
    );
    assert_eq!(balance(&pool, "alice").await, (0, 2_500));
    let refund = command(&RefundPayment {
        order_id: "o-1".into(),
    });
    consumer.process(&refund).await.expect("processed");
    assert_eq!(balance(&pool, "alice").await, (0, 0));

    let answers = replies(&pool).await;
    assert_eq!(
        answers.len(),
        3,
        "one reply per command, none for the duplicates"
    );
    assert_eq!(answers[0].message_type, "AuthorizePaymentSucceeded");
    assert_eq!(answers[0].topic, "order.saga-replies");
    assert_eq!(answers[0].causation_id, Some(authorize.id.to_string()));
    assert_eq!(answers[0].payload["ok"], true);
    assert_eq!(answers[0].payload["amount_cents"], 2_500);
    let payment_id = answers[0].payload["payment_id"]
        .as_str()
        .expect("a payment id")
        .to_owned();
    assert!(!payment_id.is_empty());
    assert_eq!(answers[1].message_type, "CapturePaymentSucceeded");
    assert_eq!(answers[1].topic, "order.saga-replies");
    assert_eq!(answers[1].causation_id, Some(capture.id.to_string()));
    assert_eq!(answers[1].payload["ok"], true);
    assert_eq!(answers[1].payload["payment_id"], payment_id.as_str());
    assert_eq!(answers[2].message_type, "RefundPaymentSucceeded");
    assert_eq!(answers[2].causation_id, Some(refund.id.to_string()));
    assert_eq!(answers[2].payload["ok"], true);
    assert_eq!(answers[2].payload["payment_id"], payment_id.as_str());
    no_violations(&pool).await;
}

#[tokio::test]
async fn carol_over_her_limit_is_answered_with_a_refusal() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("payment", pool.clone(), PaymentCommands);
    let greedy = authorize("o-2", "carol", 1_500);
    assert_eq!(
        consumer.process(&greedy).await.expect("processed"),
        Processed::Applied
    );
    let answers = replies(&pool).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].message_type, "AuthorizePaymentRefused");
    assert_eq!(answers[0].topic, "order.saga-replies");
    assert_eq!(answers[0].causation_id, Some(greedy.id.to_string()));
    assert_eq!(answers[0].payload["ok"], false);
    assert!(
        answers[0].payload["reason"]
            .as_str()
            .is_some_and(|r| r.contains("credit limit exceeded")),
        "{}",
        answers[0].payload
    );
    assert_eq!(balance(&pool, "carol").await, (0, 0));
    assert_eq!(payments(&pool, "o-2").await, 0);
    no_violations(&pool).await;
}

#[tokio::test]
async fn a_capture_after_a_void_is_refused_and_a_void_without_payment_succeeds() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("payment", pool.clone(), PaymentCommands);
    consumer
        .process(&authorize("o-3", "bob", 4_000))
        .await
        .expect("authorized");
    let void = command(&VoidPayment {
        order_id: "o-3".into(),
    });
    consumer.process(&void).await.expect("voided");
    let capture = command(&CapturePayment {
        order_id: "o-3".into(),
    });
    assert_eq!(
        consumer.process(&capture).await.expect("processed"),
        Processed::Applied,
        "a refusal is an answer, not a failure"
    );
    // The compensation overtakes its step: voiding an order without a payment succeeds, and
    // the late authorization is refused.
    let early_void = command(&VoidPayment {
        order_id: "o-4".into(),
    });
    consumer.process(&early_void).await.expect("voided");
    let late = authorize("o-4", "bob", 100);
    consumer.process(&late).await.expect("processed");
    // Nothing to capture.
    let orphan = command(&CapturePayment {
        order_id: "o-5".into(),
    });
    consumer.process(&orphan).await.expect("processed");

    let answers = replies(&pool).await;
    assert_eq!(answers.len(), 6);
    assert_eq!(answers[1].message_type, "VoidPaymentSucceeded");
    assert_eq!(answers[1].payload["ok"], true);
    assert_eq!(answers[2].message_type, "CapturePaymentRefused");
    assert_eq!(answers[2].causation_id, Some(capture.id.to_string()));
    assert_eq!(answers[2].payload["ok"], false);
    assert!(
        answers[2].payload["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("cannot capture payment") && r.ends_with("VOIDED")),
        "{}",
        answers[2].payload
    );
    assert_eq!(answers[3].message_type, "VoidPaymentSucceeded");
    assert_eq!(answers[3].causation_id, Some(early_void.id.to_string()));
    assert_eq!(answers[3].payload["ok"], true);
    assert_eq!(answers[4].message_type, "AuthorizePaymentRefused");
    assert_eq!(
        answers[4].payload["reason"],
        "the payment was voided before it was authorized"
    );
    assert_eq!(answers[5].message_type, "CapturePaymentRefused");
    assert_eq!(
        answers[5].payload["reason"],
        "cannot capture order `o-5`: it has no payment"
    );
    assert_eq!(balance(&pool, "bob").await, (0, 0));
    no_violations(&pool).await;
}

#[tokio::test]
async fn nonsense_is_rejected_without_a_reply() {
    let (pool, _dir) = database().await;
    let consumer = Consumer::new("payment", pool.clone(), PaymentCommands);
    let unknown = Message::new("payment.commands", "PrintMoney", "k", serde_json::json!({}))
        .replying_to("order.saga-replies");
    assert_eq!(
        consumer.process(&unknown).await.expect("processed"),
        Processed::Rejected
    );
    let broken = Message::new(
        "payment.commands",
        "AuthorizePayment",
        "k",
        serde_json::json!({ "order_id": "o-6", "customer_id": "alice", "amount_cents": "lots" }),
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
    assert_eq!(balance(&pool, "alice").await, (0, 0));
    assert_eq!(payments(&pool, "o-6").await, 0);
}
