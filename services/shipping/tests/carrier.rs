//! The carrier's saga operations against a real database in a temporary directory.

use std::sync::Arc;

use flotilla_shipping::carrier::{
    self, CANCELLED_BEFORE_SCHEDULING, CancelError, Cancellation, Destination, Scheduling,
};
use flotilla_testkit::{TempData, assert_no_violations, by_hand, in_transaction, rows, value};
use sqlx::SqlitePool;
use tokio::sync::Barrier;

async fn open() -> (TempData, SqlitePool) {
    let (pool, data) = TempData::with_database(flotilla_shipping::open).await;
    (data, pool)
}

fn to(country: &str) -> Destination {
    Destination {
        name: "Alice Martin".into(),
        street: "1 rue de la Paix".into(),
        city: "Paris".into(),
        postal_code: "75002".into(),
        country: country.into(),
    }
}

/// Schedules in its own `BEGIN IMMEDIATE` transaction, as a message handler would.
async fn schedule(pool: &SqlitePool, order_id: &str, destination: &Destination) -> Scheduling {
    in_transaction(pool, |db| {
        carrier::schedule(db, order_id, Some("alice"), destination)
    })
    .await
    .expect("schedule succeeds")
}

/// Cancels in its own `BEGIN IMMEDIATE` transaction, committing only a success.
async fn cancel(pool: &SqlitePool, order_id: &str) -> Result<Cancellation, CancelError> {
    in_transaction(pool, |db| carrier::cancel(db, order_id)).await
}

fn shipment_id(outcome: Scheduling) -> String {
    match outcome {
        Scheduling::Scheduled { shipment_id } => shipment_id,
        Scheduling::Refused { reason } => panic!("expected a shipment, refused: {reason}"),
    }
}

async fn shipments_of(pool: &SqlitePool, order_id: &str) -> Vec<(String, String, String)> {
    let sql = "SELECT shipment_id, status, country FROM shipments WHERE order_id = ?";
    rows(pool, sql, &[order_id]).await
}

async fn assert_invariants_hold(pool: &SqlitePool) {
    assert_no_violations(carrier::check(pool).await);
}

#[tokio::test]
async fn schedules_one_shipment_with_the_destination() {
    let (_dir, pool) = open().await;
    let id = shipment_id(schedule(&pool, "order-1", &to("FR")).await);

    let stored: (String, String, String, String, String, String, String) = sqlx::query_as(
        "SELECT order_id, name, street, city, postal_code, country, status FROM shipments WHERE shipment_id = ?",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .expect("the shipment is stored");
    assert_eq!(
        stored,
        (
            "order-1".into(),
            "Alice Martin".into(),
            "1 rue de la Paix".into(),
            "Paris".into(),
            "75002".into(),
            "FR".into(),
            "SCHEDULED".into()
        )
    );
    assert_invariants_hold(&pool).await;
}

#[tokio::test]
async fn a_repeated_schedule_answers_the_first_outcome() {
    let (_dir, pool) = open().await;
    let first = schedule(&pool, "order-1", &to("FR")).await;
    let again = schedule(&pool, "order-1", &to("FR")).await;
    assert_eq!(first, again);
    // Even with another destination, even a refused one: the first outcome stands.
    let elsewhere = schedule(&pool, "order-1", &to("AQ")).await;
    assert_eq!(first, elsewhere);

    let id = shipment_id(first);
    assert_eq!(
        shipments_of(&pool, "order-1").await,
        vec![(id, "SCHEDULED".into(), "FR".into())]
    );
    // Another order gets its own shipment.
    let other = shipment_id(schedule(&pool, "order-2", &to("FR")).await);
    assert_eq!(shipments_of(&pool, "order-2").await.len(), 1);
    assert_ne!(other, shipments_of(&pool, "order-1").await[0].0);
    assert_invariants_hold(&pool).await;
}

#[tokio::test]
async fn antarctica_is_refused_and_refused_again_identically() {
    let (_dir, pool) = open().await;
    let refused = schedule(&pool, "order-aq", &to("AQ")).await;
    assert_eq!(
        refused,
        Scheduling::Refused {
            reason: "no carrier serves Antarctica".into()
        }
    );
    assert_eq!(schedule(&pool, "order-aq", &to("AQ")).await, refused);
    // A repeat to a served country does not turn the refusal into a shipment.
    assert_eq!(schedule(&pool, "order-aq", &to("FR")).await, refused);
    assert!(shipments_of(&pool, "order-aq").await.is_empty());

    // The answer is recorded: it stays the same if the carrier starts serving Antarctica.
    by_hand(
        &pool,
        "DELETE FROM refused_destinations WHERE country = 'AQ'",
    )
    .await;
    assert_eq!(schedule(&pool, "order-aq", &to("AQ")).await, refused);
    assert!(shipments_of(&pool, "order-aq").await.is_empty());
    assert_invariants_hold(&pool).await;
}

#[tokio::test]
async fn an_invalid_country_code_is_refused() {
    let (_dir, pool) = open().await;
    for (order, country) in [("o-lower", "fr"), ("o-long", "FRA"), ("o-empty", "")] {
        let outcome = schedule(&pool, order, &to(country)).await;
        let Scheduling::Refused { reason } = &outcome else {
            panic!("{country:?} should be refused, got {outcome:?}");
        };
        assert!(reason.contains("invalid country code"), "{reason}");
        assert_eq!(schedule(&pool, order, &to(country)).await, outcome);
        assert!(shipments_of(&pool, order).await.is_empty());
    }
    assert_invariants_hold(&pool).await;
}

#[tokio::test]
async fn cancel_cancels_once_then_reports_already_cancelled() {
    let (_dir, pool) = open().await;
    let scheduled = schedule(&pool, "order-1", &to("FR")).await;
    let id = shipment_id(scheduled.clone());

    let cancelled = cancel(&pool, "order-1").await.expect("cancel succeeds");
    assert_eq!(
        cancelled,
        Cancellation::Cancelled {
            shipment_id: id.clone()
        }
    );
    assert_eq!(shipments_of(&pool, "order-1").await[0].1, "CANCELLED");

    let again = cancel(&pool, "order-1").await.expect("repeat succeeds");
    assert_eq!(
        again,
        Cancellation::AlreadyCancelled {
            shipment_id: id.clone()
        }
    );
    assert_eq!(shipments_of(&pool, "order-1").await.len(), 1);
    // A redelivered schedule still answers with the first outcome, and creates nothing.
    assert_eq!(schedule(&pool, "order-1", &to("FR")).await, scheduled);
    assert_eq!(
        shipments_of(&pool, "order-1").await,
        vec![(id, "CANCELLED".into(), "FR".into())]
    );
    assert_invariants_hold(&pool).await;
}

#[tokio::test]
async fn cancelling_an_unknown_order_is_a_no_op_and_refuses_a_late_schedule() {
    let (_dir, pool) = open().await;
    assert_eq!(
        cancel(&pool, "ghost").await.expect("cancel succeeds"),
        Cancellation::NoShipment
    );
    assert_eq!(
        cancel(&pool, "ghost").await.expect("repeat succeeds"),
        Cancellation::NoShipment
    );
    let shipments: i64 = value(&pool, "SELECT COUNT(*) FROM shipments", &[]).await;
    assert_eq!(shipments, 0);

    // The compensation overtook the step: the step, arriving late, must not ship.
    assert_eq!(
        schedule(&pool, "ghost", &to("FR")).await,
        Scheduling::Refused {
            reason: CANCELLED_BEFORE_SCHEDULING.into()
        }
    );
    assert!(shipments_of(&pool, "ghost").await.is_empty());

    // Cancelling a refused order keeps the refusal's reason.
    let refused = schedule(&pool, "order-aq", &to("AQ")).await;
    assert_eq!(
        cancel(&pool, "order-aq").await.expect("cancel succeeds"),
        Cancellation::NoShipment
    );
    assert_eq!(schedule(&pool, "order-aq", &to("AQ")).await, refused);
    assert_invariants_hold(&pool).await;
}

#[tokio::test]
async fn a_shipment_that_left_is_too_late_to_cancel() {
    let (_dir, pool) = open().await;
    for (order, status) in [("order-d", "DISPATCHED"), ("order-v", "DELIVERED")] {
        let id = shipment_id(schedule(&pool, order, &to("FR")).await);
        sqlx::query("UPDATE shipments SET status = ? WHERE shipment_id = ?")
            .bind(status)
            .bind(&id)
            .execute(&pool)
            .await
            .expect("hand-made progress");
        match cancel(&pool, order).await {
            Err(CancelError::TooLate {
                shipment_id,
                status: seen,
            }) => {
                assert_eq!(shipment_id, id);
                assert_eq!(seen, status);
            }
            other => panic!("expected too late, got {other:?}"),
        }
        assert_eq!(shipments_of(&pool, order).await[0].1, status);
    }
    assert_invariants_hold(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_schedules_of_one_order_make_one_shipment() {
    let (_dir, pool) = open().await;
    let tasks = 10;
    let barrier = Arc::new(Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let pool = pool.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                schedule(&pool, "order-race", &to("FR")).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(handle.await.expect("the task completes"));
    }
    let rows = shipments_of(&pool, "order-race").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let id = &rows[0].0;
    for outcome in outcomes {
        assert_eq!(
            outcome,
            Scheduling::Scheduled {
                shipment_id: id.clone()
            }
        );
    }
    assert_invariants_hold(&pool).await;
}

#[tokio::test]
async fn the_database_refuses_a_second_shipment_for_an_order() {
    let (_dir, pool) = open().await;
    shipment_id(schedule(&pool, "order-1", &to("FR")).await);
    let duplicate = sqlx::query(
        "INSERT INTO shipments (shipment_id, order_id, name, street, city, postal_code, country, status, created_at, updated_at)
         VALUES ('s-dup', 'order-1', 'n', 's', 'c', 'p', 'FR', 'SCHEDULED', 't', 't')",
    )
    .execute(&pool)
    .await;
    assert!(duplicate.is_err(), "{duplicate:?}");
}

#[tokio::test]
async fn check_finds_hand_made_violations() {
    let (_dir, pool) = open().await;
    let fr = shipment_id(schedule(&pool, "order-fr", &to("FR")).await);
    schedule(&pool, "order-aq", &to("AQ")).await;
    assert_invariants_hold(&pool).await;

    // The carrier stops serving France while a shipment there is scheduled.
    let strike = "INSERT INTO refused_destinations (country, reason) VALUES ('FR', 'strike')";
    by_hand(&pool, strike).await;
    let violations = carrier::check(&pool).await.expect("check runs");
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(
        violations[0].contains(&fr) && violations[0].contains("refused destination FR"),
        "{violations:#?}"
    );

    // Once cancelled, the shipment breaks nothing.
    cancel(&pool, "order-fr").await.expect("cancel succeeds");
    assert_invariants_hold(&pool).await;

    // A second shipment for an order (the unique index dropped by hand) and a shipment for a
    // refused order.
    let mut conn = pool.acquire().await.expect("a connection");
    for statement in [
        "DROP INDEX shipments_one_per_order",
        "INSERT INTO shipments (shipment_id, order_id, name, street, city, postal_code, country, status, created_at, updated_at)
         VALUES ('s-dup', 'order-fr', 'n', 's', 'c', 'p', 'DE', 'SCHEDULED', 't', 't')",
        "INSERT INTO shipments (shipment_id, order_id, name, street, city, postal_code, country, status, created_at, updated_at)
         VALUES ('s-aq', 'order-aq', 'n', 's', 'c', 'p', 'AQ', 'SCHEDULED', 't', 't')",
        "INSERT INTO shipments (shipment_id, order_id, name, street, city, postal_code, country, status, created_at, updated_at)
         VALUES ('s-bad', 'order-bad', 'n', 's', 'c', 'p', 'zz', 'SCHEDULED', 't', 't')",
    ] {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .expect("hand-made violation");
    }
    drop(conn);
    let violations = carrier::check(&pool).await.expect("check runs");
    let expect = [
        "order `order-fr` has 2 shipments",
        "order `order-aq` has shipment `s-aq` and was refused",
        "shipment `s-aq` of order `order-aq` goes to refused destination AQ",
        "shipment `s-bad` of order `order-bad` has an invalid country code",
    ];
    assert_eq!(violations.len(), expect.len(), "{violations:#?}");
    for expected in expect {
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "missing {expected:?} in {violations:#?}"
        );
    }
}
