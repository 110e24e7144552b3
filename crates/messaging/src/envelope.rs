//! The message envelope every transport carries.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// A message: what happened or what to do, with what a consumer needs to process it once, in
/// order, and in the right trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id (UUIDv7): the inbox's and the broker's deduplication key.
    pub id: Uuid,
    /// Where it goes, such as `order.events` or `payment.commands`: lower-case letters, digits,
    /// `.`, `-` and `_` ([`valid_topic`]).
    pub topic: String,
    /// What it is, such as `OrderPlaced` or `AuthorizePayment`.
    pub message_type: String,
    /// The version of the type's payload schema.
    pub schema_version: u32,
    /// The ordering key (an aggregate's id): messages of one key are delivered in order.
    pub key: String,
    /// The id of the message that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The id shared by every message of one business flow (a saga).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The W3C trace context the message was sent in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// For a request: the topic the reply goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The payload.
    pub payload: Value,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Message {
    /// A message of schema version 1 with a fresh id.
    ///
    /// ```
    /// use flotilla_messaging::Message;
    /// let message = Message::new("order.events", "OrderPlaced", "order-1", serde_json::json!({}));
    /// assert_eq!((message.topic.as_str(), message.schema_version), ("order.events", 1));
    /// ```
    pub fn new(
        topic: impl Into<String>,
        message_type: impl Into<String>,
        key: impl Into<String>,
        payload: Value,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            topic: topic.into(),
            message_type: message_type.into(),
            schema_version: 1,
            key: key.into(),
            causation_id: None,
            correlation_id: None,
            traceparent: None,
            reply_to: None,
            payload,
            created_at: OffsetDateTime::now_utc(),
        }
    }

    /// The same message as caused by `cause`: its causation id is the cause's id, and it
    /// inherits the cause's correlation id and trace.
    ///
    /// ```
    /// use flotilla_messaging::Message;
    /// let placed = Message::new("order.events", "OrderPlaced", "o-1", serde_json::json!({}))
    ///     .correlated("order-o-1");
    /// let reserve = Message::new("inventory.commands", "ReserveStock", "o-1", serde_json::json!({}))
    ///     .caused_by(&placed);
    /// assert_eq!(reserve.causation_id, Some(placed.id.to_string()));
    /// assert_eq!(reserve.correlation_id.as_deref(), Some("order-o-1"));
    /// ```
    #[must_use]
    pub fn caused_by(mut self, cause: &Message) -> Self {
        self.causation_id = Some(cause.id.to_string());
        self.correlation_id.clone_from(&cause.correlation_id);
        self.traceparent.clone_from(&cause.traceparent);
        self
    }

    /// The same message with a correlation id.
    #[must_use]
    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The same message as a request whose reply goes to `topic`.
    #[must_use]
    pub fn replying_to(mut self, topic: impl Into<String>) -> Self {
        self.reply_to = Some(topic.into());
        self
    }

    /// The reply to this request (`None` if it asked for none): to its `reply_to` topic, same
    /// key, caused by it.
    ///
    /// ```
    /// use flotilla_messaging::Message;
    /// let ask = Message::new("payment.commands", "Authorize", "o-1", serde_json::json!({}))
    ///     .replying_to("saga.replies");
    /// let reply = ask.reply("Authorized", serde_json::json!({ "payment_id": "p-1" })).unwrap();
    /// assert_eq!((reply.topic.as_str(), reply.key.as_str()), ("saga.replies", "o-1"));
    /// assert_eq!(reply.causation_id, Some(ask.id.to_string()));
    /// ```
    pub fn reply(&self, message_type: impl Into<String>, payload: Value) -> Option<Message> {
        let topic = self.reply_to.clone()?;
        Some(Message::new(topic, message_type, self.key.clone(), payload).caused_by(self))
    }
}

/// Whether `topic` is a usable topic name: 1 to 200 characters of lower-case ASCII letters,
/// digits, `.`, `-` and `_`, not starting or ending with `.`, without `..`.
///
/// ```
/// use flotilla_messaging::valid_topic;
/// assert!(valid_topic("order.events"));
/// assert!(!valid_topic("Order Events"));
/// assert!(!valid_topic("order..events"));
/// assert!(!valid_topic("order.*"));
/// ```
pub fn valid_topic(topic: &str) -> bool {
    (1..=200).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !topic.starts_with('.')
        && !topic.ends_with('.')
        && !topic.contains("..")
}
