//! The orchestrator as the consumer of its reply topic.

use flotilla_messaging::Message;
use flotilla_messaging::inbox::{Handler, HandlerError, HandlerResult};

use super::definition::Handled;
use super::orchestrator::Orchestrator;
use crate::{Error, Saga};

/// The orchestrator as the consumer of its reply topic
/// ([`flotilla_messaging::inbox::Consumer`]): each reply is applied in the consumer's
/// transaction, with the inbox row that makes a redelivered reply a no-op.
#[derive(Debug)]
pub struct Replies<S>(pub std::sync::Arc<Orchestrator<S>>);

impl<S: Saga> Handler for Replies<S> {
    fn handle(&self, db: &rusqlite::Connection, message: &Message) -> HandlerResult {
        let orchestrator = &self.0;
        match orchestrator.on_reply(db, message) {
            Ok(handled) => {
                if handled != Handled::Applied {
                    tracing::debug!(saga = orchestrator.saga.name(), message_id = %message.id, ?handled, "reply not applied");
                }
                Ok(Vec::new())
            }
            Err(Error::Database(error)) => Err(HandlerError::Database(error)),
            Err(error) => Err(HandlerError::Reject(error.to_string())),
        }
    }
}
