//! The saga tables' migrations keep what earlier schemas held: the log moved into the instance
//! row keeps its entries in order with their times; commands and facts survive the change of
//! table kind.

use flotilla_testkit::memory_database;

#[tokio::test]
async fn compacting_keeps_the_log_the_commands_and_the_facts() {
    let pool = memory_database().await;
    for earlier in [
        include_str!("../migrations/0001_saga.sql"),
        include_str!("../migrations/0002_facts.sql"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(earlier))
            .execute(&pool)
            .await
            .expect("earlier schema");
    }
    sqlx::raw_sql(
        "INSERT INTO saga_instances (saga_id, saga_type, data, status, step, attempt, deadline, created_at, updated_at)
             VALUES ('s1', 'place_order', '{}', 'RUNNING', 1, 0, 0, 1, 1),
                    ('s2', 'place_order', '{}', 'COMPLETED', 4, 0, 0, 1, 1),
                    ('s3', 'place_order', '{}', 'RUNNING', 0, 0, 0, 1, 1);
         INSERT INTO saga_log (saga_id, entry, at) VALUES
             ('s2', 'started', 10), ('s1', 'started', 11), ('s2', 'reserve_stock succeeded', 12),
             ('s1', 'reserve_stock succeeded', 13), ('s2', 'completed', 14);
         INSERT INTO saga_commands (message_id, saga_id, step, phase, sent_at) VALUES
             ('m1', 's1', 0, 'ACTION', 11), ('m2', 's1', 1, 'ACTION', 13);
         INSERT INTO saga_facts (saga_id, fact, detail, observed_at) VALUES
             ('s1', 'StockReserved', '{\"n\":1}', 20);",
    )
    .execute(&pool)
    .await
    .expect("rows of the earlier schema");

    sqlx::raw_sql(include_str!("../migrations/0003_compact.sql"))
        .execute(&pool)
        .await
        .expect("the migration applies");

    let log = |saga: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, String)>(
                "SELECT entry.value ->> 'at', entry.value ->> 'entry' FROM saga_instances, \
                 json_each(saga_instances.log) AS entry WHERE saga_id = $1 ORDER BY entry.key",
            )
            .bind(saga)
            .fetch_all(&pool)
            .await
            .expect("log")
        }
    };
    assert_eq!(
        log("s2").await,
        [
            (10, "started".to_owned()),
            (12, "reserve_stock succeeded".to_owned()),
            (14, "completed".to_owned()),
        ]
    );
    assert_eq!(log("s1").await.len(), 2);
    assert!(
        log("s3").await.is_empty(),
        "an instance without entries: an empty log"
    );
    let commands: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT message_id, saga_id, step FROM saga_commands ORDER BY message_id")
            .fetch_all(&pool)
            .await
            .expect("commands");
    assert_eq!(
        commands,
        [("m1".into(), "s1".into(), 0), ("m2".into(), "s1".into(), 1)]
    );
    let facts: Vec<(String, String)> = sqlx::query_as("SELECT fact, detail FROM saga_facts")
        .fetch_all(&pool)
        .await
        .expect("facts");
    assert_eq!(facts, [("StockReserved".into(), "{\"n\":1}".into())]);
    let old_log: i64 = flotilla_testkit::number(
        &pool,
        "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'saga_log'",
    )
    .await;
    assert_eq!(old_log, 0, "the log table is gone");
}
