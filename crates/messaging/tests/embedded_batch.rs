//! The embedded transport's batched pushes: messages that queue up for one subscriber while its
//! requests are under way go together in one request, each gets its own outcome, and a
//! subscriber hands a batch to its consumer in the batch's order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flotilla_discovery::Discovery;
use flotilla_messaging::embedded::{Embedded, Subscriptions};
use flotilla_messaging::{Message, Transport, TransportError};
use flotilla_testkit::body_bytes;
use tower::ServiceExt;

fn message(topic: &str, n: usize) -> Message {
    Message::new(
        topic,
        "Tested",
        format!("key-{n}"),
        serde_json::json!({ "n": n }),
    )
}

#[tokio::test]
async fn a_batch_is_handed_over_in_order_and_answered_message_by_message() {
    let transport = Embedded::new(
        Discovery::fixed(HashMap::new(), Duration::from_secs(1)),
        Subscriptions::default(),
    );
    let mut deliveries = transport
        .subscribe("billing", &["order.events"])
        .await
        .expect("subscribed");
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(Ok(delivery)) = deliveries.next().await {
                let n = delivery.message.payload["n"].as_u64().unwrap_or(0);
                seen.lock().unwrap_or_else(PoisonError::into_inner).push(n);
                let _ = if n == 3 {
                    delivery.retry(Duration::from_millis(10)).await
                } else {
                    delivery.ack().await
                };
            }
        }
    });
    let batch = serde_json::json!([
        message("order.events", 1),
        { "not": "a message" },
        message("order.events", 2),
        message("order.events", 3),
        message("payment.events", 4),
    ]);
    let response = transport
        .routes()
        .oneshot(
            Request::post("/v1/messages/billing")
                .header("content-type", "application/json")
                .body(Body::from(batch.to_string()))
                .expect("request"),
        )
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_bytes(response).await;
    let outcomes: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let kinds: Vec<&str> = outcomes
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|o| o["outcome"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["ack", "refused", "ack", "retry", "retry"],
        "{outcomes}"
    );
    assert_eq!(
        *seen.lock().unwrap_or_else(PoisonError::into_inner),
        [1, 2, 3],
        "handed over in the batch's order; the unreadable and the unsubscribed never reach it"
    );
}

/// A subscriber that counts requests and messages, slow enough for messages to queue up.
async fn slow_subscriber() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let messages = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/v1/messages/billing",
        axum::routing::post({
            let (requests, messages) = (requests.clone(), messages.clone());
            move |body: axum::body::Bytes| async move {
                requests.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                match serde_json::from_slice::<Vec<Message>>(&body) {
                    Ok(batch) => {
                        messages.fetch_add(batch.len(), Ordering::SeqCst);
                        let acks = vec![serde_json::json!({ "outcome": "ack" }); batch.len()];
                        (StatusCode::OK, axum::Json(serde_json::Value::from(acks)))
                    }
                    Err(_) => {
                        messages.fetch_add(1, Ordering::SeqCst);
                        (StatusCode::OK, axum::Json(serde_json::Value::Null))
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, requests, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_queue_up_for_a_subscriber_go_together() {
    let (address, requests, messages) = slow_subscriber().await;
    let transport = Arc::new(Embedded::new(
        Discovery::fixed(
            HashMap::from([("billing".to_owned(), vec![address])]),
            Duration::from_secs(5),
        ),
        Subscriptions::default().topic("order.events", ["billing"]),
    ));
    let publishes: Vec<_> = (0..200)
        .map(|n| {
            let transport = transport.clone();
            tokio::spawn(async move { transport.publish(&message("order.events", n)).await })
        })
        .collect();
    for publish in publishes {
        let published: Result<(), TransportError> = publish.await.expect("task");
        published.expect("acknowledged");
    }
    let (requests, messages) = (
        requests.load(Ordering::SeqCst),
        messages.load(Ordering::SeqCst),
    );
    assert_eq!(messages, 200, "every message delivered once");
    assert!(
        requests <= 200 / 4,
        "200 messages in {requests} requests: they should have been batched"
    );
}
