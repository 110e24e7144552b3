//! The embedded transport, for one machine without a broker: the publisher's relay pushes each
//! message over HTTP to one instance of every subscribing service, found through the registry,
//! and counts it delivered when every one of them has answered 200. The service's consumer
//! processes the message (inbox, effect, outbox) **before** answering, so the answer is its
//! acknowledgement: no broker has to hold the message in between, because the publisher's
//! outbox still does until every subscriber has acknowledged.
//!
//! * Who subscribes to what is the system's wiring ([`Subscriptions`], given to every process
//!   in the same way); the registry says where each subscribing service runs.
//! * A subscriber that is down, busy or not subscribed yet answers 503 (or cannot be reached):
//!   the publish fails, the relay tries again with backoff, and the subscribers that had
//!   already acknowledged see the message again — their inbox drops it. A message that cannot
//!   be read is answered 400 and dead-lettered at once.
//! * Redelivery is the relay's job here (the broker's with NATS): a consumer asking to retry
//!   answers 503 with `Retry-After`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use flotilla_discovery::{Discovery, DiscoveryError};
use flotilla_kit::Problem;
use tokio::sync::{mpsc, oneshot};

use crate::transport::{Deliveries, Delivery, Settlement, Transport, TransportError};
use crate::{Message, valid_topic};

/// Which consumer groups (services) subscribe to each topic.
///
/// ```
/// use flotilla_messaging::embedded::Subscriptions;
/// let wiring = Subscriptions::default()
///     .topic("order.events", ["inventory", "payment"])
///     .topic("payment.events", ["order"]);
/// assert_eq!(wiring.groups("order.events"), ["inventory", "payment"]);
/// assert!(wiring.groups("shipping.events").is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    topics: BTreeMap<String, Vec<String>>,
}

impl Subscriptions {
    /// Adds `groups` as subscribers of `topic`.
    #[must_use]
    pub fn topic<G: Into<String>>(
        mut self,
        topic: impl Into<String>,
        groups: impl IntoIterator<Item = G>,
    ) -> Self {
        let entry = self.topics.entry(topic.into()).or_default();
        for group in groups {
            let group = group.into();
            if !entry.contains(&group) {
                entry.push(group);
            }
        }
        self
    }

    /// The groups subscribed to `topic`.
    pub fn groups(&self, topic: &str) -> &[String] {
        self.topics.get(topic).map_or(&[], Vec::as_slice)
    }
}

/// The path a subscriber receives its group's messages on.
pub fn path(group: &str) -> String {
    format!("/v1/messages/{group}")
}

type Senders = HashMap<(String, String), mpsc::Sender<Result<Delivery, TransportError>>>;

/// The embedded transport: a publisher (through discovery) and a receiver (an HTTP route) in
/// one value; a process uses either side or both.
#[derive(Debug, Clone)]
pub struct Embedded {
    discovery: Discovery,
    subscriptions: Subscriptions,
    receivers: Arc<Mutex<Senders>>,
    ack_wait: Duration,
}

impl Embedded {
    /// A transport that publishes to the groups `subscriptions` names, through `discovery`.
    pub fn new(discovery: Discovery, subscriptions: Subscriptions) -> Self {
        Self {
            discovery,
            subscriptions,
            receivers: Arc::default(),
            ack_wait: Duration::from_secs(30),
        }
    }

    /// The route subscribers must serve: `POST /v1/messages/{group}`.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/v1/messages/{group}", post(receive))
            .with_state(self.clone())
    }

    fn receiver(
        &self,
        group: &str,
        topic: &str,
    ) -> Option<mpsc::Sender<Result<Delivery, TransportError>>> {
        self.receivers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&(group.to_owned(), topic.to_owned()))
            .cloned()
    }

    async fn push(
        &self,
        group: &str,
        body: &Bytes,
        message: &Message,
    ) -> Result<(), TransportError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // A key makes the push safe to retry for discovery's retry policy.
        if let Ok(key) = HeaderValue::from_str(&message.id.to_string()) {
            headers.insert("idempotency-key", key);
        }
        match self
            .discovery
            .send(
                group,
                http::Method::POST,
                &path(group),
                &headers,
                body.clone(),
            )
            .await
        {
            Ok((StatusCode::OK, _)) => Ok(()),
            Ok((StatusCode::BAD_REQUEST, answer)) => Err(TransportError::Refused(format!(
                "`{group}` cannot read the message: {}",
                String::from_utf8_lossy(&answer)
            ))),
            Ok((status, _)) => Err(TransportError::Unavailable(format!(
                "`{group}` answered {status}"
            ))),
            Err(
                error @ (DiscoveryError::NoInstances { .. } | DiscoveryError::Unreachable { .. }),
            ) => Err(TransportError::Unavailable(error.to_string())),
            Err(error) => Err(TransportError::Unavailable(error.to_string())),
        }
    }
}

impl Transport for Embedded {
    async fn publish(&self, message: &Message) -> Result<(), TransportError> {
        if !valid_topic(&message.topic) {
            return Err(TransportError::Refused(format!(
                "invalid topic `{}`",
                message.topic
            )));
        }
        let body = Bytes::from(
            serde_json::to_vec(message).map_err(|e| TransportError::Refused(e.to_string()))?,
        );
        let groups = self.subscriptions.groups(&message.topic);
        let pushes = groups.iter().map(|group| self.push(group, &body, message));
        let results = futures_util::future::join_all(pushes).await;
        // A refusal by any subscriber is final; otherwise any failure is retried.
        if let Some(refused) = results
            .iter()
            .find_map(|r| matches!(r, Err(TransportError::Refused(_))).then(|| r.as_ref().err()))
            .flatten()
        {
            return Err(TransportError::Refused(refused.to_string()));
        }
        results.into_iter().collect()
    }

    async fn subscribe(&self, group: &str, topics: &[&str]) -> Result<Deliveries, TransportError> {
        let (sender, receiver) = mpsc::channel(64);
        let mut receivers = self
            .receivers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for topic in topics {
            if !valid_topic(topic) {
                return Err(TransportError::Refused(format!("invalid topic `{topic}`")));
            }
            receivers.insert((group.to_owned(), (*topic).to_owned()), sender.clone());
        }
        Ok(Deliveries::new(receiver))
    }
}

fn busy(detail: &str, retry_after: Duration) -> Response {
    let mut response = Problem::unavailable("consumer-busy", detail).into_response();
    let seconds = retry_after.as_secs().max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

async fn receive(
    State(transport): State<Embedded>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let message: Message = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(error) => {
            return Problem::bad_request("invalid-message", format!("not a message: {error}"))
                .into_response();
        }
    };
    let Some(sender) = transport.receiver(&group, &message.topic) else {
        // Not subscribed (yet): the publisher tries again later.
        return busy(
            &format!(
                "group `{group}` does not consume `{}` here yet",
                message.topic
            ),
            Duration::from_secs(1),
        );
    };
    let (settled, answer) = oneshot::channel();
    let delivery = Delivery::new(message, 1, move |settlement| {
        Box::pin(async move {
            // The pusher may have given up waiting; the inbox absorbs the repeat it will send.
            let _ = settled.send(settlement);
            Ok(())
        })
    });
    if sender.send(Ok(delivery)).await.is_err() {
        return busy("the consumer stopped", Duration::from_secs(1));
    }
    match tokio::time::timeout(transport.ack_wait, answer).await {
        Ok(Ok(Settlement::Ack)) => StatusCode::OK.into_response(),
        Ok(Ok(Settlement::Retry(delay))) => busy("the consumer asks to retry later", delay),
        Ok(Err(_)) => busy("the delivery was dropped unsettled", Duration::from_secs(1)),
        Err(_) => busy(
            "the consumer did not settle in time",
            Duration::from_secs(1),
        ),
    }
}
