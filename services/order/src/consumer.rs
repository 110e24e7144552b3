//! The order service's consumer: one handler for every message the order receives, dispatched
//! by topic to the sagas (replies, facts) and the notifications.

use std::sync::Arc;

use crate::sagas::Sagas;
use crate::sagas::cancel::CancelOrderSaga;
use crate::sagas::choreography;
use crate::sagas::place::PlaceOrderSaga;
use crate::store::changes::Changes;
use crate::store::notifications;

/// The order's consumer: replies to the orchestrated sagas' commands (place-order, then
/// cancel-order), the notifications, and the participants' facts (choreography). After each
/// commit it wakes the requests waiting for the order ([`crate::store::changes`]).
#[derive(Debug, Clone)]
pub struct Inbox {
    place: Arc<flotilla_saga::Orchestrator<PlaceOrderSaga>>,
    cancel: Arc<flotilla_saga::Orchestrator<CancelOrderSaga>>,
    facts: choreography::Listener,
    changes: Arc<Changes>,
}

impl Inbox {
    /// The consumer of `sagas`' replies, facts and notifications.
    pub fn new(sagas: &Sagas) -> Self {
        Self {
            place: sagas.place_order.clone(),
            cancel: sagas.cancel_order.clone(),
            facts: choreography::Listener::new(sagas.db.events.clone(), sagas.changes.clone()),
            changes: sagas.changes.clone(),
        }
    }
}

impl flotilla_messaging::inbox::Handler for Inbox {
    // A group of replies and facts runs on the borrowed handle in one round trip.
    fn handle(
        &self,
        db: &rusqlite::Connection,
        message: &flotilla_messaging::Message,
    ) -> Result<Vec<flotilla_messaging::Message>, flotilla_messaging::inbox::HandlerError> {
        use flotilla_messaging::inbox::HandlerError;
        use flotilla_saga::Handled;
        let failed = |error: flotilla_saga::Error| match error {
            flotilla_saga::Error::Database(error) => HandlerError::Database(error),
            other => HandlerError::Reject(other.to_string()),
        };
        match message.topic.as_str() {
            flotilla_contracts::ORDER_SAGA_REPLIES => {
                let handled = match self.place.on_reply(db, message).map_err(failed)? {
                    Handled::Unknown => self.cancel.on_reply(db, message).map_err(failed)?,
                    handled => handled,
                };
                if handled != Handled::Applied {
                    tracing::debug!(message_id = %message.id, ?handled, "reply not applied");
                }
                Ok(Vec::new())
            }
            flotilla_contracts::ORDER_NOTIFICATIONS => {
                notifications::Notifications.handle(db, message)
            }
            _ => self.facts.handle(db, message),
        }
    }

    fn committed(&self, message: &flotilla_messaging::Message) {
        // Replies are keyed by saga id: the order's id, or `cancel-<order id>`.
        let key = message.key.as_str();
        self.changes
            .committed(key.strip_prefix("cancel-").unwrap_or(key));
    }
}
