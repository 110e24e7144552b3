//! The embedded push endpoint with a token: a push without it, or with another, is answered 401
//! (problem+json) and reaches no consumer; with it, the message is delivered.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flotilla_discovery::Discovery;
use flotilla_messaging::embedded::{Embedded, Subscriptions};
use flotilla_messaging::{Message, Transport};
use flotilla_testkit::body_bytes;
use tower::ServiceExt;

async fn push(
    transport: &Embedded,
    authorization: Option<&str>,
    message: &Message,
) -> (StatusCode, String, String) {
    let mut request =
        Request::post("/v1/messages/billing").header("content-type", "application/json");
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let response = transport
        .routes()
        .oneshot(
            request
                .body(Body::from(serde_json::to_vec(message).expect("JSON")))
                .expect("request"),
        )
        .await
        .expect("answered");
    let status = response.status();
    let kind = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = body_bytes(response).await;
    (status, kind, String::from_utf8_lossy(&body).into_owned())
}

/// A consumer that acknowledges the next delivery; its message's id.
fn acknowledge_one(
    mut deliveries: flotilla_messaging::Deliveries,
) -> tokio::task::JoinHandle<uuid::Uuid> {
    tokio::spawn(async move {
        let delivery = deliveries
            .next()
            .await
            .expect("a delivery")
            .expect("delivered");
        let id = delivery.message.id;
        delivery.ack().await.expect("acked");
        id
    })
}

#[tokio::test]
async fn pushes_without_the_token_are_refused_and_reach_no_consumer() {
    let transport = Embedded::new(
        Discovery::fixed(HashMap::new(), Duration::from_secs(1)),
        Subscriptions::default(),
    )
    .with_token(Some("s3cret-token".into()));
    let mut deliveries = transport
        .subscribe("billing", &["order.events"])
        .await
        .expect("subscribed");
    let message = Message::new("order.events", "Tested", "k", serde_json::json!({}));

    for authorization in [
        None,
        Some("Bearer wrong-token!"),
        Some("Bearer s3cret-tokeN"),
        Some("s3cret-token"),
        Some("Bearer s3cret-token "),
    ] {
        let (status, kind, body) = push(&transport, authorization, &message).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{authorization:?}: {body}"
        );
        assert_eq!(kind, "application/problem+json", "{authorization:?}");
        assert!(body.contains("unauthorized"), "{body}");
        assert!(
            deliveries.try_next().is_none(),
            "{authorization:?} reached the consumer"
        );
    }

    // With the token: handed to the consumer, answered once it settles.
    let consumer = acknowledge_one(deliveries);
    let (status, _, body) = push(&transport, Some("Bearer s3cret-token"), &message).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(consumer.await.expect("consumer"), message.id);
}

#[tokio::test]
async fn without_a_token_the_endpoint_takes_any_push() {
    let transport = Embedded::new(
        Discovery::fixed(HashMap::new(), Duration::from_secs(1)),
        Subscriptions::default(),
    )
    .with_token(Some(String::new()));
    let deliveries = transport
        .subscribe("billing", &["order.events"])
        .await
        .expect("subscribed");
    let consumer = acknowledge_one(deliveries);
    let message = Message::new("order.events", "Tested", "k", serde_json::json!({}));
    let (status, _, body) = push(&transport, None, &message).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(consumer.await.expect("consumer"), message.id);
}
