//! What a transport must do: publish with an acknowledgement, and deliver to consumer groups
//! at least once.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::Message;

/// Why a transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The message cannot be carried (a bad topic, an encoding failure): retrying will not help.
    #[error("message refused: {0}")]
    Refused(String),
    /// The transport is unreachable or did not acknowledge: retry later.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
}

type Settle = Box<
    dyn FnOnce(Settlement) -> Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send>>
        + Send,
>;

/// How a consumer settles a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Processed (or a duplicate): do not deliver it again.
    Ack,
    /// Not processed: deliver it again after this delay.
    Retry(Duration),
}

/// One delivery of a message to a consumer group; settle it with [`Delivery::ack`] or
/// [`Delivery::retry`]. A delivery dropped unsettled is delivered again after the transport's
/// acknowledgement timeout.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How many times it has been delivered to this group (1 the first time), when known.
    pub attempt: u64,
    settle: Option<Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery settled by `settle` (for transports).
    pub fn new(
        message: Message,
        attempt: u64,
        settle: impl FnOnce(
            Settlement,
        ) -> Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send>>
        + Send
        + 'static,
    ) -> Self {
        Self {
            message,
            attempt,
            settle: Some(Box::new(settle)),
        }
    }

    /// Done with it: it will not be delivered to this group again.
    pub async fn ack(mut self) -> Result<(), TransportError> {
        match self.settle.take() {
            Some(settle) => settle(Settlement::Ack).await,
            None => Ok(()),
        }
    }

    /// Not done: deliver it again after `delay`.
    pub async fn retry(mut self, delay: Duration) -> Result<(), TransportError> {
        match self.settle.take() {
            Some(settle) => settle(Settlement::Retry(delay)).await,
            None => Ok(()),
        }
    }
}

/// The deliveries of a subscription, in the order the transport hands them out.
#[derive(Debug)]
pub struct Deliveries {
    receiver: mpsc::Receiver<Result<Delivery, TransportError>>,
}

impl Deliveries {
    /// A stream fed by a transport's task through `receiver`.
    pub fn new(receiver: mpsc::Receiver<Result<Delivery, TransportError>>) -> Self {
        Self { receiver }
    }

    /// The next delivery; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        self.receiver.recv().await
    }

    /// The next delivery if one is ready now, without waiting (to gather a batch).
    pub fn try_next(&mut self) -> Option<Result<Delivery, TransportError>> {
        self.receiver.try_recv().ok()
    }
}

/// A message transport: the embedded HTTP push or NATS JetStream, behind one interface that
/// one conformance suite checks.
pub trait Transport: Send + Sync + 'static {
    /// Publishes `message`; returns once the transport has taken responsibility for it (the
    /// broker's acknowledgement), so that the outbox can mark it published. Publishing the same
    /// message id again within the transport's deduplication window delivers it once.
    fn publish(&self, message: &Message)
    -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Delivers every message of `topics` to consumer group `group`: each message to one member
    /// of the group, at least once, until acknowledged. Groups see every message independently.
    fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
    ) -> impl Future<Output = Result<Deliveries, TransportError>> + Send;
}
