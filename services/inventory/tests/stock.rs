//! Stock held for orders, on a real database: every step, its repeat, refusals, and many
//! concurrent reservations that must never oversell.

use std::sync::Arc;

use flotilla_inventory::stock::{self, Change, Line, Reservation};
use flotilla_testkit::TempData;
use sqlx::SqlitePool;

async fn database() -> (SqlitePool, TempData) {
    let data = TempData::new();
    let pool = flotilla_inventory::open(&data.settings()).await;
    (pool.expect("database"), data)
}

fn line(sku: &str, quantity: i64) -> Line {
    Line {
        sku: sku.into(),
        quantity,
    }
}

async fn stock_of(pool: &SqlitePool, sku: &str) -> (i64, i64) {
    sqlx::query_as("SELECT on_hand, reserved FROM products WHERE sku = $1")
        .bind(sku)
        .fetch_one(pool)
        .await
        .expect("product")
}

/// Runs `step` in its own write transaction and commits.
macro_rules! in_tx {
    ($pool:expr, |$conn:ident| $step:expr) => {{
        let mut tx = $pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
        let outcome = flotilla_sqlite::direct(&mut tx, |$conn| $step)
            .await
            .expect("step");
        tx.commit().await.expect("commit");
        outcome
    }};
}

#[tokio::test]
async fn reserve_commit_and_restock_move_the_stock_once_each() {
    let (pool, _dir) = database().await;
    let (on_hand, _) = stock_of(&pool, "KB-001").await;
    let lines = [line("KB-001", 3), line("MS-002", 1)];
    let reserved = in_tx!(pool, |c| stock::reserve(c, "o-1", &lines));
    assert_eq!(reserved, Reservation::Reserved);
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand, 3));
    // A redelivered reserve changes nothing.
    assert_eq!(
        in_tx!(pool, |c| stock::reserve(c, "o-1", &lines)),
        Reservation::Reserved
    );
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand, 3));
    assert_eq!(in_tx!(pool, |c| stock::commit(c, "o-1")), Change::Applied);
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand - 3, 0));
    assert_eq!(in_tx!(pool, |c| stock::commit(c, "o-1")), Change::Repeated);
    // Released after commit: refused, the units are gone to the customer.
    assert_eq!(
        in_tx!(pool, |c| stock::release(c, "o-1")),
        Change::Conflict {
            status: "COMMITTED".into()
        }
    );
    assert_eq!(in_tx!(pool, |c| stock::restock(c, "o-1")), Change::Applied);
    assert_eq!(in_tx!(pool, |c| stock::restock(c, "o-1")), Change::Repeated);
    assert_eq!(stock_of(&pool, "KB-001").await, (on_hand, 0));
    assert!(stock::check(&pool).await.expect("check").is_empty());
}

#[tokio::test]
async fn a_released_reservation_gives_the_units_back() {
    let (pool, _dir) = database().await;
    let (on_hand, _) = stock_of(&pool, "MS-002").await;
    in_tx!(pool, |c| stock::reserve(c, "o-2", &[line("MS-002", 5)]));
    assert_eq!(stock_of(&pool, "MS-002").await, (on_hand, 5));
    assert_eq!(in_tx!(pool, |c| stock::release(c, "o-2")), Change::Applied);
    assert_eq!(in_tx!(pool, |c| stock::release(c, "o-2")), Change::Repeated);
    assert_eq!(stock_of(&pool, "MS-002").await, (on_hand, 0));
    // Compensating an order that never reserved anything changes no stock, and the reservation
    // arriving after it (a step that timed out, delivered late) is refused, not held.
    assert_eq!(
        in_tx!(pool, |c| stock::release(c, "never")),
        Change::Nothing
    );
    assert_eq!(
        in_tx!(pool, |c| stock::reserve(c, "never", &[line("MS-002", 1)])),
        Reservation::Refused {
            reason: stock::RELEASED_BEFORE_RESERVED.into()
        }
    );
    assert_eq!(
        in_tx!(pool, |c| stock::release(c, "never")),
        Change::Nothing
    );
    assert_eq!(stock_of(&pool, "MS-002").await, (on_hand, 0));
    assert!(stock::check(&pool).await.expect("check").is_empty());
}

#[tokio::test]
async fn shortages_and_unknown_skus_are_refused_whole_and_stay_refused() {
    let (pool, _dir) = database().await;
    let (on_hand, _) = stock_of(&pool, "KB-001").await;
    let too_many = [line("MS-002", 1), line("KB-001", on_hand + 1)];
    let refused = in_tx!(pool, |c| stock::reserve(c, "o-3", &too_many));
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
    sqlx::query("UPDATE products SET on_hand = on_hand + 1000, initial_on_hand = initial_on_hand + 1000 WHERE sku = 'KB-001'")
        .execute(&pool)
        .await
        .expect("restocked by hand");
    assert_eq!(
        in_tx!(pool, |c| stock::reserve(c, "o-3", &too_many)),
        refused
    );
    let unknown = in_tx!(pool, |c| stock::reserve(c, "o-4", &[line("NOPE-1", 1)]));
    assert!(
        matches!(unknown, Reservation::Refused { ref reason } if reason.contains("unknown SKU NOPE-1"))
    );
    let zero = in_tx!(pool, |c| stock::reserve(c, "o-5", &[line("KB-001", 0)]));
    assert!(matches!(zero, Reservation::Refused { .. }));
    assert_eq!(in_tx!(pool, |c| stock::commit(c, "o-3")), Change::Nothing);
    assert!(stock::check(&pool).await.expect("check").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_oversell() {
    let (pool, _dir) = database().await;
    let (on_hand, _) = stock_of(&pool, "MN-003").await;
    // 150 units: 24 orders of 8 units each want 192.
    let pool = Arc::new(pool);
    let tasks: Vec<_> = (0..24)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
                let outcome = flotilla_sqlite::direct(&mut tx, |db| {
                    stock::reserve(db, &format!("race-{n}"), &[line("MN-003", 8)])
                })
                .await
                .expect("reserve");
                tx.commit().await.expect("commit");
                outcome
            })
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
    assert!(stock::check(&pool).await.expect("check").is_empty());
}

#[tokio::test]
async fn the_checker_finds_stock_that_does_not_add_up() {
    let (pool, _dir) = database().await;
    in_tx!(pool, |c| stock::reserve(c, "o-6", &[line("KB-001", 2)]));
    sqlx::query("UPDATE products SET reserved = reserved + 1 WHERE sku = 'KB-001'")
        .execute(&pool)
        .await
        .expect("corrupted by hand");
    sqlx::query("UPDATE products SET on_hand = on_hand - 5 WHERE sku = 'MS-002'")
        .execute(&pool)
        .await
        .expect("corrupted by hand");
    let violations = stock::check(&pool).await.expect("check");
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0].starts_with("KB-001: reserved is 3"),
        "{violations:?}"
    );
    assert!(
        violations[1].starts_with("MS-002: on hand"),
        "{violations:?}"
    );
}
