//! The messaging tables' migrations keep what earlier schemas held.

use flotilla_testkit::memory_database;

#[tokio::test]
async fn the_compact_inbox_keeps_every_processed_message_and_still_refuses_a_repeat() {
    let pool = memory_database().await;
    sqlx::raw_sql(include_str!("../migrations/0001_messaging.sql"))
        .execute(&pool)
        .await
        .expect("earlier schema");
    sqlx::raw_sql(
        "INSERT INTO messaging_inbox (consumer, message_id, processed_at) VALUES
             ('order', 'm1', 1), ('order', 'm2', 2), ('inventory', 'm1', 3)",
    )
    .execute(&pool)
    .await
    .expect("rows of the earlier schema");
    sqlx::raw_sql(include_str!("../migrations/0002_compact_inbox.sql"))
        .execute(&pool)
        .await
        .expect("the migration applies");
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT consumer, message_id, processed_at FROM messaging_inbox ORDER BY processed_at",
    )
    .fetch_all(&pool)
    .await
    .expect("inbox");
    assert_eq!(
        rows,
        [
            ("order".into(), "m1".into(), 1),
            ("order".into(), "m2".into(), 2),
            ("inventory".into(), "m1".into(), 3),
        ]
    );
    let repeat = sqlx::query(
        "INSERT INTO messaging_inbox (consumer, message_id, processed_at) VALUES ('order', 'm1', 4)",
    )
    .execute(&pool)
    .await;
    assert!(
        matches!(repeat, Err(sqlx::Error::Database(e)) if e.is_unique_violation()),
        "a message processed once is refused the second time"
    );
}
