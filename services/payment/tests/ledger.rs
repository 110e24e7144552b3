//! The payment ledger on a real database: every transition and its repeat, the money each one
//! moves, refusals that stay refused, the credit limit under concurrent authorizations, and the
//! invariant check finding damage done by hand.

use flotilla_payment::Account;
use flotilla_payment::ledger::{
    self, Authorization, LedgerError, Operation, PaymentStatus, Settled,
};
use flotilla_testkit::{TempData, assert_no_violations, by_hand, in_transaction, row, value};
use sqlx::SqlitePool;

struct Db {
    pool: SqlitePool,
    _data: TempData,
}

async fn db() -> Db {
    let (pool, data) = TempData::with_database(flotilla_payment::open).await;
    Db { pool, _data: data }
}

impl Db {
    /// Authorizes in its own `BEGIN IMMEDIATE` transaction, committed.
    async fn authorize(&self, order_id: &str, customer_id: &str, amount: i64) -> Authorization {
        authorize_in(&self.pool, order_id, customer_id, amount).await
    }

    /// Voids, captures or refunds in its own transaction, committed when it succeeds.
    async fn settle(&self, operation: Operation, order_id: &str) -> Result<Settled, LedgerError> {
        in_transaction(&self.pool, |db| operation.apply(db, order_id)).await
    }

    /// Asserts that `operation` on `order_id` answers `applied`, and that a repeat right after
    /// answers with the same payment, already applied, and moves no money of `customer_id`'s.
    async fn assert_settles_once(
        &self,
        operation: Operation,
        order_id: &str,
        customer_id: &str,
        applied: &Settled,
    ) {
        let first = self.settle(operation, order_id).await.expect("settled");
        assert_eq!(&first, applied);
        let balance = self.balance(customer_id).await;
        let again = self.settle(operation, order_id).await.expect("again");
        let Settled::Applied {
            payment_id,
            amount_cents,
        } = first
        else {
            panic!("{operation} on {order_id}: {first:?}");
        };
        assert_eq!(
            again,
            Settled::AlreadyApplied {
                payment_id,
                amount_cents
            }
        );
        assert_eq!(self.balance(customer_id).await, balance, "moved once");
    }

    /// Asserts that each of `operations` on `order_id` fails, the payment's `status`
    /// forbidding it.
    async fn assert_forbidden(
        &self,
        operations: &[Operation],
        order_id: &str,
        status: PaymentStatus,
    ) {
        for &operation in operations {
            match self.settle(operation, order_id).await {
                Err(LedgerError::WrongStatus {
                    operation: refused,
                    status: seen,
                    ..
                }) => assert_eq!((refused, seen), (operation, status)),
                other => panic!("expected a wrong status, got {other:?}"),
            }
        }
    }

    /// `(held_cents, charged_cents)` of an account.
    async fn balance(&self, customer_id: &str) -> (i64, i64) {
        let account: Account = row(
            &self.pool,
            "SELECT customer_id, name, credit_limit_cents, held_cents, charged_cents
             FROM accounts WHERE customer_id = ?",
            &[customer_id],
        )
        .await;
        (account.held_cents, account.charged_cents)
    }

    /// The status of an order's payment.
    async fn status(&self, order_id: &str) -> PaymentStatus {
        let sql = "SELECT status FROM payments WHERE order_id = ?";
        let status: String = value(&self.pool, sql, &[order_id]).await;
        PaymentStatus::parse(&status).expect("known status")
    }

    async fn count(&self, sql: &'static str) -> i64 {
        value(&self.pool, sql, &[]).await
    }

    async fn assert_consistent(&self) {
        assert_no_violations(ledger::check(&self.pool).await);
    }
}

async fn authorize_in(
    pool: &SqlitePool,
    order_id: &str,
    customer_id: &str,
    amount: i64,
) -> Authorization {
    in_transaction(pool, |db| {
        ledger::authorize(db, order_id, customer_id, amount)
    })
    .await
    .expect("authorize")
}

fn authorized(outcome: Authorization) -> (String, i64) {
    match outcome {
        Authorization::Authorized {
            payment_id,
            amount_cents,
        } => (payment_id, amount_cents),
        Authorization::Refused { reason } => panic!("refused: {reason}"),
    }
}

fn refused(outcome: Authorization) -> String {
    match outcome {
        Authorization::Refused { reason } => reason,
        Authorization::Authorized { payment_id, .. } => panic!("authorized as {payment_id}"),
    }
}

#[tokio::test]
async fn authorize_holds_once_per_order() {
    let db = db().await;
    let (payment_id, amount) = authorized(db.authorize("o-1", "alice", 2_500).await);
    assert_eq!(amount, 2_500);
    assert_eq!(db.status("o-1").await, PaymentStatus::Authorized);
    assert_eq!(db.balance("alice").await, (2_500, 0));

    // A repeat, even with other arguments, answers with the first payment and holds nothing more.
    let again = authorized(db.authorize("o-1", "alice", 2_500).await);
    assert_eq!(again, (payment_id.clone(), 2_500));
    let other_args = authorized(db.authorize("o-1", "bob", 9_999).await);
    assert_eq!(other_args, (payment_id, 2_500));
    assert_eq!(db.balance("alice").await, (2_500, 0));
    assert_eq!(db.balance("bob").await, (0, 0));
    assert_eq!(db.count("SELECT COUNT(*) FROM payments").await, 1);

    // A second order is a second payment.
    authorized(db.authorize("o-2", "alice", 500).await);
    assert_eq!(db.balance("alice").await, (3_000, 0));
    db.assert_consistent().await;
}

#[tokio::test]
async fn capture_then_refund_move_the_money_once() {
    let db = db().await;
    let (payment_id, _) = authorized(db.authorize("o-1", "bob", 1_234).await);
    authorized(db.authorize("o-2", "bob", 100).await);
    assert_eq!(db.balance("bob").await, (1_334, 0));

    let applied = Settled::Applied {
        payment_id,
        amount_cents: 1_234,
    };

    db.assert_settles_once(Operation::Capture, "o-1", "bob", &applied)
        .await;
    assert_eq!(db.status("o-1").await, PaymentStatus::Captured);
    assert_eq!(db.balance("bob").await, (100, 1_234));
    db.assert_consistent().await;

    // A captured payment is refunded, not voided.
    db.assert_forbidden(&[Operation::Void], "o-1", PaymentStatus::Captured)
        .await;

    db.assert_settles_once(Operation::Refund, "o-1", "bob", &applied)
        .await;
    assert_eq!(db.status("o-1").await, PaymentStatus::Refunded);
    assert_eq!(db.balance("bob").await, (100, 0));

    // Nothing leads out of REFUNDED.
    let out_of_refunded = [Operation::Void, Operation::Capture];
    db.assert_forbidden(&out_of_refunded, "o-1", PaymentStatus::Refunded)
        .await;
    assert_eq!(db.balance("bob").await, (100, 0));
    // Authorizing again answers with the (refunded) payment and holds nothing.
    authorized(db.authorize("o-1", "bob", 1_234).await);
    assert_eq!(db.balance("bob").await, (100, 0));
    db.assert_consistent().await;
}

#[tokio::test]
async fn void_releases_the_hold_once() {
    let db = db().await;
    let (payment_id, _) = authorized(db.authorize("o-1", "carol", 700).await);
    assert_eq!(db.balance("carol").await, (700, 0));

    let applied = Settled::Applied {
        payment_id: payment_id.clone(),
        amount_cents: 700,
    };
    db.assert_settles_once(Operation::Void, "o-1", "carol", &applied)
        .await;
    assert_eq!(db.status("o-1").await, PaymentStatus::Voided);
    assert_eq!(db.balance("carol").await, (0, 0));

    // A voided payment is neither captured nor refunded, and a repeated authorization does
    // not hold it again.
    let out_of_voided = [Operation::Capture, Operation::Refund];
    db.assert_forbidden(&out_of_voided, "o-1", PaymentStatus::Voided)
        .await;
    assert_eq!(
        authorized(db.authorize("o-1", "carol", 700).await),
        (payment_id, 700)
    );
    assert_eq!(db.balance("carol").await, (0, 0));

    // The released credit is available again.
    authorized(db.authorize("o-2", "carol", 1_000).await);
    assert_eq!(db.balance("carol").await, (1_000, 0));
    db.assert_consistent().await;
}

#[tokio::test]
async fn an_authorized_payment_is_voided_not_refunded() {
    let db = db().await;
    authorized(db.authorize("o-1", "alice", 50).await);
    db.assert_forbidden(&[Operation::Refund], "o-1", PaymentStatus::Authorized)
        .await;
    assert_eq!(db.status("o-1").await, PaymentStatus::Authorized);
    assert_eq!(db.balance("alice").await, (50, 0));
}

#[tokio::test]
async fn without_a_payment_void_is_a_no_op_and_capture_and_refund_fail() {
    let db = db().await;
    for operation in [Operation::Capture, Operation::Refund] {
        match db.settle(operation, "o-none").await {
            Err(LedgerError::NoPayment {
                operation: refused,
                order_id,
            }) => {
                assert_eq!((refused, order_id.as_str()), (operation, "o-none"));
            }
            other => panic!("{operation}: expected no payment, got {other:?}"),
        }
    }
    assert_eq!(
        db.settle(Operation::Void, "o-none").await.expect("void"),
        Settled::NoPayment
    );
    assert_eq!(
        db.settle(Operation::Void, "o-none").await.expect("again"),
        Settled::NoPayment
    );

    // The compensation overtook the authorization: a late one must not hold credit that
    // nothing would release.
    let reason = refused(db.authorize("o-none", "alice", 100).await);
    assert!(reason.contains("voided"), "{reason}");
    assert_eq!(db.balance("alice").await, (0, 0));
    assert_eq!(db.count("SELECT COUNT(*) FROM payments").await, 0);

    // A refused order has no payment to void either, and keeps its first reason.
    let first = refused(db.authorize("o-2", "carol", 5_000).await);
    assert_eq!(
        db.settle(Operation::Void, "o-2")
            .await
            .expect("void refused"),
        Settled::NoPayment
    );
    assert_eq!(refused(db.authorize("o-2", "carol", 5_000).await), first);
    db.assert_consistent().await;
}

#[tokio::test]
async fn refusals_are_recorded_and_stable() {
    let db = db().await;
    let unknown = refused(db.authorize("o-1", "mallory", 100).await);
    assert!(unknown.contains("unknown customer"), "{unknown}");
    let zero = refused(db.authorize("o-2", "alice", 0).await);
    assert!(zero.contains("positive"), "{zero}");
    let negative = refused(db.authorize("o-3", "alice", -5).await);
    assert!(negative.contains("positive"), "{negative}");
    let over = refused(db.authorize("o-4", "carol", 1_001).await);
    assert!(over.contains("credit limit exceeded"), "{over}");
    assert!(over.contains("1000 cents available"), "{over}");

    // Repeats get the same answer, even when they would now succeed.
    assert_eq!(refused(db.authorize("o-1", "alice", 100).await), unknown);
    assert_eq!(refused(db.authorize("o-2", "alice", 100).await), zero);
    assert_eq!(refused(db.authorize("o-4", "carol", 10).await), over);

    assert_eq!(db.count("SELECT COUNT(*) FROM payments").await, 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM payment_refusals").await, 4);
    assert_eq!(db.balance("alice").await, (0, 0));
    assert_eq!(db.balance("carol").await, (0, 0));
    db.assert_consistent().await;
}

#[tokio::test]
async fn carol_cannot_go_beyond_her_limit() {
    let db = db().await;
    authorized(db.authorize("o-1", "carol", 600).await);
    let reason = refused(db.authorize("o-2", "carol", 401).await);
    assert!(reason.contains("400 cents available"), "{reason}");
    authorized(db.authorize("o-3", "carol", 400).await);
    assert_eq!(db.balance("carol").await, (1_000, 0));
    refused(db.authorize("o-4", "carol", 1).await);

    // Charged money counts against the limit as much as held money...
    db.settle(Operation::Capture, "o-1").await.expect("capture");
    assert_eq!(db.balance("carol").await, (400, 600));
    refused(db.authorize("o-5", "carol", 1).await);
    // ...until it is refunded.
    db.settle(Operation::Refund, "o-1").await.expect("refund");
    assert_eq!(db.balance("carol").await, (400, 0));
    authorized(db.authorize("o-6", "carol", 600).await);
    assert_eq!(db.balance("carol").await, (1_000, 0));
    db.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_authorizations_never_exceed_the_limit() {
    let db = db().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let pool = db.pool.clone();
            tokio::spawn(async move { authorize_in(&pool, &format!("o-{i}"), "carol", 300).await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        if let Authorization::Authorized { amount_cents, .. } = task.await.expect("task") {
            assert_eq!(amount_cents, 300);
            accepted += 1;
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(db.balance("carol").await, (900, 0));
    assert_eq!(db.count("SELECT COUNT(*) FROM payments").await, 3);
    assert_eq!(db.count("SELECT COUNT(*) FROM payment_refusals").await, 17);
    db.assert_consistent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redeliveries_authorize_once() {
    let db = db().await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move { authorize_in(&pool, "o-1", "alice", 300).await })
        })
        .collect();
    let mut payments = Vec::new();
    for task in tasks {
        payments.push(authorized(task.await.expect("task")));
    }
    payments.dedup();
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(db.balance("alice").await, (300, 0));
    assert_eq!(db.count("SELECT COUNT(*) FROM payments").await, 1);
    db.assert_consistent().await;
}

#[tokio::test]
async fn check_finds_damage_done_by_hand() {
    let db = db().await;
    authorized(db.authorize("o-1", "alice", 300).await);
    authorized(db.authorize("o-2", "carol", 900).await);
    db.settle(Operation::Capture, "o-2").await.expect("capture");
    db.assert_consistent().await;

    for damage in [
        "UPDATE accounts SET held_cents = held_cents + 1 WHERE customer_id = 'alice'",
        "UPDATE accounts SET credit_limit_cents = 500 WHERE customer_id = 'carol'",
        "INSERT INTO payment_refusals (order_id, reason, created_at)
         VALUES ('o-1', 'by hand', '2025-01-01T00:00:00Z')",
    ] {
        by_hand(&db.pool, damage).await;
    }

    let violations = ledger::check(&db.pool).await.expect("check");
    assert_eq!(violations.len(), 3, "{violations:#?}");
    assert!(
        violations[0].contains("`alice`") && violations[0].contains("held_cents is 301"),
        "{violations:#?}"
    );
    assert!(
        violations[1].contains("`carol`") && violations[1].contains("credit limit 500"),
        "{violations:#?}"
    );
    assert!(
        violations[2].contains("`o-1`") && violations[2].contains("refusal"),
        "{violations:#?}"
    );

    let damage = "UPDATE accounts SET charged_cents = 0 WHERE customer_id = 'carol'";
    by_hand(&db.pool, damage).await;
    let violations = ledger::check(&db.pool).await.expect("check");
    assert!(
        violations
            .iter()
            .any(|v| v.contains("`carol`") && v.contains("charged_cents is 0")),
        "{violations:#?}"
    );
}

#[tokio::test]
async fn the_database_refuses_a_second_payment_for_an_order() {
    let db = db().await;
    authorized(db.authorize("o-1", "alice", 300).await);
    let duplicate = sqlx::query(
        "INSERT INTO payments (payment_id, order_id, customer_id, amount_cents, status, created_at, updated_at)
         VALUES ('p-by-hand', 'o-1', 'alice', 300, 'AUTHORIZED', '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z')",
    )
    .execute(&db.pool)
    .await;
    assert!(duplicate.is_err(), "{duplicate:?}");
    db.assert_consistent().await;
}

#[tokio::test]
async fn payments_keep_rfc3339_timestamps() {
    let db = db().await;
    authorized(db.authorize("o-1", "alice", 300).await);
    db.settle(Operation::Capture, "o-1").await.expect("capture");
    let (created, updated): (String, String) =
        sqlx::query_as("SELECT created_at, updated_at FROM payments WHERE order_id = 'o-1'")
            .fetch_one(&db.pool)
            .await
            .expect("payment");
    for at in [&created, &updated] {
        assert!(
            at.len() >= 20 && at.as_bytes()[10] == b'T' && at.ends_with('Z'),
            "{at}"
        );
    }
    assert!(updated >= created);
}
