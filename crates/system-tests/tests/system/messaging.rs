//! Messaging between the services: the outbox's retention, and the push token of a start.

use std::time::Duration;

use flotilla_system_tests::{System, eventually_every, order};
use http::{Method, StatusCode};
use serde_json::json;

/// Every service prunes its published outbox rows once past `messaging.outbox_retention_ms`
/// (half a second here): after a few sagas, no service's outbox keeps a published row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_are_pruned_after_their_retention() {
    let system = System::start_env(&[("FLOTILLA_MESSAGING__OUTBOX_RETENTION_MS", "500")]).await;
    for style in ["orchestration", "choreography"] {
        let placed = system
            .post_order(
                &order("alice", "MS-002", 1),
                &[("prefer", "wait=8"), ("x-saga-style", style)],
            )
            .await;
        assert_eq!(placed.body["status"], "APPROVED", "{}", placed.body);
    }
    // One deadline for the four services.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for service in ["order", "inventory", "payment", "shipping"] {
        let pool = system.database(service).await;
        eventually_every(
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            Duration::from_millis(100),
            &format!("{service}: no published row kept"),
            || async {
                let published: i64 = flotilla_testkit::number(
                    &pool,
                    "SELECT COUNT(published_at) FROM messaging_outbox",
                )
                .await;
                if published == 0 {
                    Ok(())
                } else {
                    Err(format!("{published} published rows still kept"))
                }
            },
        )
        .await;
        let ever: i64 = flotilla_testkit::number(
            &pool,
            "SELECT seq FROM sqlite_sequence WHERE name = 'messaging_outbox'",
        )
        .await;
        assert!(ever > 0, "{service} published messages");
        pool.close().await;
    }
}

/// `flotilla up` gives its services a push token of its own start: a message pushed straight
/// to a service's endpoint without it is refused (401, problem+json) and changes nothing, while
/// the services' own pushes carry it and sagas run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_systems_own_services_may_push_messages() {
    let system = System::start().await;
    let placed = system
        .post_order(&order("alice", "MS-002", 1), &[("prefer", "wait=8")])
        .await;
    assert_eq!(placed.body["status"], "APPROVED", "{}", placed.body);
    let address = system.address_of("inventory").await;
    // A forged command: reserve the whole stock of a product for an order nobody placed.
    let forged = json!({
        "id": "01a219f0-0000-7000-8000-000000000001",
        "topic": "inventory.commands",
        "message_type": "ReserveStock",
        "schema_version": 1,
        "key": "forged",
        "reply_to": "order.saga-replies",
        "payload": { "order_id": "forged", "lines": [{ "sku": "MS-002", "quantity": 1 }] }
    });
    for authorization in [None, Some("Bearer guessed")] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(authorization) = authorization {
            headers.push(("authorization", authorization));
        }
        let answer = system
            .call(
                Method::POST,
                &format!("http://{address}/v1/messages/inventory"),
                &headers,
                Some(forged.to_string().into_bytes()),
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
        assert_eq!(answer.headers["content-type"], "application/problem+json");
    }
    let inventory = system.database("inventory").await;
    let forged_rows: i64 = flotilla_testkit::number(
        &inventory,
        "SELECT COUNT(*) FROM reservations WHERE order_id = 'forged'",
    )
    .await;
    assert_eq!(forged_rows, 0, "the forged command changed nothing");
    inventory.close().await;
}
