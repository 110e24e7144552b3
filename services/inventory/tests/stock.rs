//! Stock held for orders, on a real database: every step, its repeat, refusals, and many
//! concurrent reservations that must never oversell.

use std::sync::Arc;

use flotilla_inventory::stock::{self, Change, Line, Reservation};
use flotilla_sqlite::Connection;
use flotilla_testkit::{TempData, assert_no_violations, by_hand, in_transaction, row};
use sqlx::SqlitePool;

async fn database() -> (SqlitePool, TempData) {
    TempData::with_database(flotilla_inventory::open).await
}

/// A new database, and the units `sku` has on hand there to begin with.
async fn database_with(sku: &str) -> (SqlitePool, TempData, i64) {
    let (pool, data) = database().await;
    let (on_hand, _) = stock_of(&pool, sku).await;
    (pool, data, on_hand)
}

fn line(sku: &str, quantity: i64) -> Line {
    Line {
        sku: sku.into(),
        quantity,
    }
}

async fn stock_of(pool: &SqlitePool, sku: &str) -> (i64, i64) {
    row(
        pool,
        "SELECT on_hand, reserved FROM products WHERE sku = $1",
        &[sku],
    )
    .await
}

/// Reserves `lines` for `order_id` in its own write transaction, committed.
async fn reserve(pool: &SqlitePool, order_id: &str, lines: &[Line]) -> Reservation {
    in_transaction(pool, |c| stock::reserve(c, order_id, lines))
        .await
        .expect("reserve")
}

/// A later step of a reservation: `stock::release`, `commit` or `restock`.
type Step = fn(&Connection, &str) -> Result<Change, sqlx::Error>;

/// Runs a later step of `order_id` in its own write transaction, committed.
async fn change(pool: &SqlitePool, step: Step, order_id: &str) -> Change {
    in_transaction(pool, |c| step(c, order_id))
        .await
        .expect("step")
}

/// Asserts that a later step of `order_id` is applied, and that a repeat of it is only that.
async fn assert_applied_once(pool: &SqlitePool, step: Step, order_id: &str) {
    assert_eq!(change(pool, step, order_id).await, Change::Applied);
    assert_eq!(change(pool, step, order_id).await, Change::Repeated);
}

#[tokio::test]
async fn reserve_commit_and_restock_move_the_stock_once_each() {
    let (pool, _dir, on_hand) = database_with("KB-001").await;
    let lines = [line("KB-001", 3), line("MS-002", 1)];
    let reserved = reserve(&pool, "o-1", &lines).await;
    assert_eq!(reserved, Reservation::Reserved);
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand, 3));
    // A redelivered reserve changes nothing.
    assert_eq!(reserve(&pool, "o-1", &lines).await, Reservation::Reserved);
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand, 3));
    assert_eq!(change(&pool, stock::commit, "o-1").await, Change::Applied);
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand - 3, 0));
    assert_eq!(change(&pool, stock::commit, "o-1").await, Change::Repeated);
    // Released after commit: refused, the units are gone to the customer.
    assert_eq!(
        change(&pool, stock::release, "o-1").await,
        Change::Conflict {
            status: "COMMITTED".into()
        }
    );
    assert_applied_once(&pool, stock::restock, "o-1").await;
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand, 0));
    assert_no_violations(stock::check(&pool).await);
}

#[tokio::test]
async fn a_released_reservation_gives_the_units_back() {
    let (pool, _dir, on_hand) = database_with("MS-002").await;
    reserve(&pool, "o-2", &[line("MS-002", 5)]).await;
    assert_eq!(stock_of(&pool, "MS-002").await, (on_hand, 5));
    assert_applied_once(&pool, stock::release, "o-2").await;
    assert_eq!(stock_of(&pool, "MS-002").await, (on_hand, 0));
    // Compensating an order that never reserved anything changes no stock, and the reservation
    // arriving after it (a step that timed out, delivered late) is refused, not held.
    assert_eq!(
        change(&pool, stock::release, "never").await,
        Change::Nothing
    );
    assert_eq!(
        reserve(&pool, "never", &[line("MS-002", 1)]).await,
        Reservation::Refused {
            reason: stock::RELEASED_BEFORE_RESERVED.into()
        }
    );
    assert_eq!(
        change(&pool, stock::release, "never").await,
        Change::Nothing
    );
    assert_eq!(stock_of(&pool, "MS-002").await, (on_hand, 0));
    assert_no_violations(stock::check(&pool).await);
}

#[tokio::test]
async fn shortages_and_unknown_skus_are_refused_whole_and_stay_refused() {
    let (pool, _dir, on_hand) = database_with("KB-001").await;
    let too_many = [line("MS-002", 1), line("KB-001", on_hand + 1)];
    let refused = reserve(&pool, "o-3", &too_many).await;
    let Reservation::Refused { reason } = refused.clone() else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(reason.contains("out of stock: KB-001"), "{reason}");
    assert_eq!(
        stock_of(&pool, "MS-002").await.1,
        0,
        "nothing held of the other line"
    );
    // The same answer on a repeat, even if stock arrived meanwhile.
    by_hand(&pool, "UPDATE products SET on_hand = on_hand + 1000, initial_on_hand = initial_on_hand + 1000 WHERE sku = 'KB-001'").await;
    assert_eq!(reserve(&pool, "o-3", &too_many).await, refused);
    let unknown = reserve(&pool, "o-4", &[line("NOPE-1", 1)]).await;
    assert!(
        matches!(unknown, Reservation::Refused { ref reason } if reason.contains("unknown SKU NOPE-1"))
    );
    let zero = reserve(&pool, "o-5", &[line("KB-001", 0)]).await;
    assert!(matches!(zero, Reservation::Refused { .. }));
    assert_eq!(change(&pool, stock::commit, "o-3").await, Change::Nothing);
    assert_no_violations(stock::check(&pool).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_oversell() {
    let (pool, _dir, on_hand) = database_with("MN-003").await;
    // 150 units: 24 orders of 8 units each want 192.
    let pool = Arc::new(pool);
    let tasks: Vec<_> = (0..24)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(
                async move { reserve(&pool, &format!("race-{n}"), &[line("MN-003", 8)]).await },
            )
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        if task.await.expect("task") == Reservation::Reserved {
            reserved += 1;
        }
    }
    assert_eq!(reserved, on_hand / 8, "as many as fit, no more");
    assert_eq!(stock_of(&pool, "MN-003").await, (on_hand, reserved * 8));
    assert_no_violations(stock::check(&pool).await);
}

#[tokio::test]
async fn the_checker_finds_stock_that_does_not_add_up() {
    let (pool, _dir) = database().await;
    reserve(&pool, "o-6", &[line("KB-001", 2)]).await;
    for damage in [
        "UPDATE products SET reserved = reserved + 1 WHERE sku = 'KB-001'",
        "UPDATE products SET on_hand = on_hand - 5 WHERE sku = 'MS-002'",
    ] {
        by_hand(&pool, damage).await;
    }
    let violations = stock::check(&pool).await.expect("check");
    assert_eq!(violations.len(), 2, "{violations:?}");
    let starts = ["KB-001: reserved is 3", "MS-002: on hand"];
    for (violation, start) in violations.iter().zip(starts) {
        assert!(violation.starts_with(start), "{violations:?}");
    }
}
