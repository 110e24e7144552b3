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
//! * **Batched pushes.** Each subscribing group has a pusher with at most [`PUSHES_IN_FLIGHT`]
//!   requests under way; the messages that queue up meanwhile go together in the next request,
//!   a JSON array (at most [`MAX_BATCH`] messages, [`MAX_BATCH_BYTES`]), answered with one
//!   outcome per message once the consumer has settled each. A lone message still goes alone.
//!   Per-key order holds: the relay never has two messages of one key under way.
//! * **Only the system's own services push.** With a token ([`Embedded::with_token`], the
//!   setting `messaging.push_token`, which `flotilla up` makes anew at each start), every push
//!   carries `Authorization: Bearer <token>` and the endpoint answers any other request 401
//!   (problem+json) without handing anything to the consumer.

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

/// Requests under way to one subscribing group at most; what queues meanwhile is batched.
pub const PUSHES_IN_FLIGHT: usize = 8;
/// Messages in one pushed batch at most.
pub const MAX_BATCH: usize = 64;
/// Bytes of messages in one pushed batch at most (under the services' 64 KiB body limit).
pub const MAX_BATCH_BYTES: usize = 48 * 1024;

/// A message waiting for its group's pusher.
struct Queued {
    body: Bytes,
    id: String,
    done: oneshot::Sender<Result<(), TransportError>>,
}

type Pushers = HashMap<String, mpsc::UnboundedSender<Queued>>;

/// What a subscriber did with one message of a pushed batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Processed (or a duplicate): acknowledged.
    Ack,
    /// Try again later.
    Retry {
        /// Why.
        detail: String,
    },
    /// It cannot be read: dead-letter it.
    Refused {
        /// Why.
        detail: String,
    },
}

/// The embedded transport: a publisher (through discovery) and a receiver (an HTTP route) in
/// one value; a process uses either side or both.
#[derive(Clone)]
pub struct Embedded {
    discovery: Discovery,
    /// Shared, not copied: the transport is the state of every pushed request.
    subscriptions: Arc<Subscriptions>,
    receivers: Arc<Mutex<Senders>>,
    pushers: Arc<Mutex<Pushers>>,
    ack_wait: Duration,
    /// What pushes carry and the endpoint requires, when set.
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("subscriptions", &self.subscriptions)
            .field("ack_wait", &self.ack_wait)
            .finish_non_exhaustive()
    }
}

impl Embedded {
    /// A transport that publishes to the groups `subscriptions` names, through `discovery`.
    pub fn new(discovery: Discovery, subscriptions: Subscriptions) -> Self {
        Self {
            discovery,
            subscriptions: Arc::new(subscriptions),
            receivers: Arc::default(),
            pushers: Arc::default(),
            ack_wait: Duration::from_secs(30),
            token: None,
        }
    }

    /// Pushes carry `token` (`Authorization: Bearer <token>`), and the push endpoint answers
    /// 401 to any request without it; `None` (the default) authenticates nothing.
    #[must_use]
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }

    /// Whether `headers` carry this transport's token (always, when it has none). The
    /// comparison takes the same time wherever the first difference is.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |differs, (a, b)| differs | (a ^ b))
                == 0
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

    /// Hands `message` (serialised as `body`) to `group`'s pusher and waits for its outcome.
    async fn push(
        &self,
        group: &str,
        body: &Bytes,
        message: &Message,
    ) -> Result<(), TransportError> {
        let (done, outcome) = oneshot::channel();
        let queued = Queued {
            body: body.clone(),
            id: message.id.to_string(),
            done,
        };
        self.pusher(group)
            .send(queued)
            .map_err(|_| TransportError::Unavailable(format!("the pusher of `{group}` stopped")))?;
        outcome
            .await
            .map_err(|_| TransportError::Unavailable(format!("the pusher of `{group}` stopped")))?
    }

    /// The queue of `group`'s pusher, started on first use.
    fn pusher(&self, group: &str) -> mpsc::UnboundedSender<Queued> {
        let mut pushers = self
            .pushers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(queue) = pushers.get(group)
            && !queue.is_closed()
        {
            return queue.clone();
        }
        let (queue, queued) = mpsc::unbounded_channel();
        pushers.insert(group.to_owned(), queue.clone());
        tokio::spawn(self.clone().run_pusher(group.to_owned(), queued));
        queue
    }

    /// Sends what queues for `group`: at most [`PUSHES_IN_FLIGHT`] requests at once, each with
    /// everything that waited (up to [`MAX_BATCH`] messages, [`MAX_BATCH_BYTES`]).
    async fn run_pusher(self, group: String, mut queued: mpsc::UnboundedReceiver<Queued>) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(PUSHES_IN_FLIGHT));
        let mut carried: Option<Queued> = None;
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let first = match carried.take() {
                Some(first) => first,
                None => match queued.recv().await {
                    Some(first) => first,
                    None => return,
                },
            };
            let mut bytes = first.body.len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queued.try_recv() {
                    Ok(next) if bytes + next.body.len() < MAX_BATCH_BYTES => {
                        bytes += next.body.len() + 1;
                        batch.push(next);
                    }
                    Ok(next) => {
                        carried = Some(next);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let this = self.clone();
            let group = group.clone();
            tokio::spawn(async move {
                this.send_batch(&group, batch).await;
                drop(permit);
            });
        }
    }

    /// One request for `batch`; tells each message's publisher its outcome.
    async fn send_batch(&self, group: &str, batch: Vec<Queued>) {
        if let [_] = batch.as_slice() {
            for queued in batch {
                let outcome = self.send_one(group, &queued).await;
                let _ = queued.done.send(outcome);
            }
            return;
        }
        let mut body =
            Vec::with_capacity(batch.iter().map(|q| q.body.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (n, queued) in batch.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&queued.body);
        }
        body.push(b']');
        let answer = self
            .send(group, Bytes::from(body), &uuid::Uuid::now_v7().to_string())
            .await;
        let outcomes: Result<Vec<Outcome>, TransportError> = match answer {
            Ok((StatusCode::OK, answer)) => serde_json::from_slice::<Vec<Outcome>>(&answer)
                .ok()
                .filter(|outcomes| outcomes.len() == batch.len())
                .ok_or_else(|| {
                    TransportError::Unavailable(format!("`{group}` answered a batch unreadably"))
                }),
            Ok((status, _)) => Err(TransportError::Unavailable(format!(
                "`{group}` answered {status}"
            ))),
            Err(error) => Err(error),
        };
        match outcomes {
            Ok(outcomes) => {
                for (queued, outcome) in batch.into_iter().zip(outcomes) {
                    let result = match outcome {
                        Outcome::Ack => Ok(()),
                        Outcome::Retry { detail } => {
                            Err(TransportError::Unavailable(format!("`{group}`: {detail}")))
                        }
                        Outcome::Refused { detail } => Err(TransportError::Refused(format!(
                            "`{group}` cannot read the message: {detail}"
                        ))),
                    };
                    let _ = queued.done.send(result);
                }
            }
            Err(error) => {
                for queued in batch {
                    let _ = queued
                        .done
                        .send(Err(TransportError::Unavailable(error.to_string())));
                }
            }
        }
    }

    /// One message alone, as a single JSON object.
    async fn send_one(&self, group: &str, queued: &Queued) -> Result<(), TransportError> {
        match self.send(group, queued.body.clone(), &queued.id).await? {
            (StatusCode::OK, _) => Ok(()),
            (StatusCode::BAD_REQUEST, answer) => Err(TransportError::Refused(format!(
                "`{group}` cannot read the message: {}",
                String::from_utf8_lossy(&answer)
            ))),
            (status, _) => Err(TransportError::Unavailable(format!(
                "`{group}` answered {status}"
            ))),
        }
    }

    /// POSTs `body` to an instance of `group`, with `key` making it safe to retry.
    async fn send(
        &self,
        group: &str,
        body: Bytes,
        key: &str,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // A key makes the push safe to retry for discovery's retry policy.
        if let Ok(key) = HeaderValue::from_str(key) {
            headers.insert("idempotency-key", key);
        }
        if let Some(token) = &self.token
            && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        match self
            .discovery
            .send(group, http::Method::POST, &path(group), &headers, body)
            .await
        {
            Ok(answer) => Ok(answer),
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !transport.admits(&headers) {
        let mut refused = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "pushes to this endpoint need the system's token (Authorization: Bearer …)",
        )
        .into_response();
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"flotilla-messages\""),
        );
        return refused;
    }
    if body.trim_ascii_start().first() == Some(&b'[') {
        return receive_batch(&transport, &group, &body).await;
    }
    let message: Message = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(error) => {
            return Problem::bad_request("invalid-message", format!("not a message: {error}"))
                .into_response();
        }
    };
    match transport.hand_over(&group, message).await {
        Ok(answer) => match transport.settled(answer).await {
            Outcome::Ack => StatusCode::OK.into_response(),
            Outcome::Retry { detail } => busy(&detail, Duration::from_secs(1)),
            Outcome::Refused { detail } => {
                Problem::bad_request("invalid-message", detail).into_response()
            }
        },
        Err(Outcome::Refused { detail }) => {
            Problem::bad_request("invalid-message", detail).into_response()
        }
        Err(Outcome::Retry { detail }) => busy(&detail, Duration::from_secs(1)),
        Err(Outcome::Ack) => StatusCode::OK.into_response(),
    }
}

/// A pushed batch: each message handed to the consumer in order, then one outcome each.
async fn receive_batch(transport: &Embedded, group: &str, body: &Bytes) -> Response {
    let items: Vec<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(items) => items,
        Err(error) => {
            return Problem::bad_request("invalid-message", format!("not a batch: {error}"))
                .into_response();
        }
    };
    if items.len() > MAX_BATCH {
        return Problem::bad_request(
            "invalid-message",
            format!("a batch holds {MAX_BATCH} messages at most"),
        )
        .into_response();
    }
    // Handed over in order (the consumer applies them in that order), settled together.
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        let handed = match serde_json::from_value::<Message>(item) {
            Ok(message) => transport.hand_over(group, message).await,
            Err(error) => Err(Outcome::Refused {
                detail: format!("not a message: {error}"),
            }),
        };
        answers.push(handed);
    }
    let outcomes = futures_util::future::join_all(answers.into_iter().map(|handed| async move {
        match handed {
            Ok(answer) => transport.settled(answer).await,
            Err(outcome) => outcome,
        }
    }))
    .await;
    axum::Json(outcomes).into_response()
}

impl Embedded {
    /// Puts `message` in the consumer's queue; the receiver of its settlement, or why not.
    async fn hand_over(
        &self,
        group: &str,
        message: Message,
    ) -> Result<oneshot::Receiver<Settlement>, Outcome> {
        let Some(sender) = self.receiver(group, &message.topic) else {
            // Not subscribed (yet): the publisher tries again later.
            return Err(Outcome::Retry {
                detail: format!(
                    "group `{group}` does not consume `{}` here yet",
                    message.topic
                ),
            });
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
            return Err(Outcome::Retry {
                detail: "the consumer stopped".into(),
            });
        }
        Ok(answer)
    }

    /// How the consumer settled a delivery, waiting [`Embedded`]'s acknowledgement time.
    async fn settled(&self, answer: oneshot::Receiver<Settlement>) -> Outcome {
        match tokio::time::timeout(self.ack_wait, answer).await {
            Ok(Ok(Settlement::Ack)) => Outcome::Ack,
            Ok(Ok(Settlement::Retry(_))) => Outcome::Retry {
                detail: "the consumer asks to retry later".into(),
            },
            Ok(Err(_)) => Outcome::Retry {
                detail: "the delivery was dropped unsettled".into(),
            },
            Err(_) => Outcome::Retry {
                detail: "the consumer did not settle in time".into(),
            },
        }
    }
}
