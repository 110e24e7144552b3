//! Who waits for which order: a request with `Prefer: wait=N` sleeps until the order's consumer
//! commits a change to that order, instead of polling the event store.
//!
//! The consumer calls [`Changes::changed`] after each commit ([`crate::Inbox`]'s
//! `committed`); a waiter takes [`Changes::watch`] *before* loading the order, so a change
//! committed between its load and its sleep still wakes it. Changes made by another instance of
//! the service (`--scale order=2`) are not seen here: waiters also look again every
//! [`FALLBACK_POLL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// How often a waiter looks at its order even without a wake-up.
pub const FALLBACK_POLL: Duration = Duration::from_millis(250);

/// The orders waited for, each with what wakes its waiters.
#[derive(Debug, Default)]
pub struct Changes {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A waiter's hold on an order; dropping it forgets the order once nobody else waits for it.
#[derive(Debug)]
pub struct Watch<'a> {
    changes: &'a Changes,
    order_id: String,
    /// Notified on each change of the order.
    pub notify: Arc<Notify>,
}

impl Changes {
    /// Starts waiting for changes of `order_id`.
    pub fn watch(&self, order_id: &str) -> Watch<'_> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let notify = waiting.entry(order_id.to_owned()).or_default().clone();
        Watch {
            changes: self,
            order_id: order_id.to_owned(),
            notify,
        }
    }

    /// Order `order_id` changed: wake its waiters.
    ///
    /// ```
    /// use futures_util::FutureExt as _;
    /// let changes = flotilla_order::changes::Changes::default();
    /// {
    ///     let watch = changes.watch("o-1");
    ///     let mut woken = std::pin::pin!(watch.notify.notified());
    ///     woken.as_mut().enable();
    ///     changes.changed("o-2");
    ///     assert!(woken.as_mut().now_or_never().is_none(), "another order changed");
    ///     changes.changed("o-1");
    ///     assert!(woken.now_or_never().is_some(), "o-1 changed after the watch began");
    ///     assert_eq!(changes.watched(), 1);
    /// }
    /// assert_eq!(changes.watched(), 0, "forgotten once nobody waits");
    /// ```
    pub fn changed(&self, order_id: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(notify) = waiting.get(order_id) {
            notify.notify_waiters();
        }
    }

    /// How many orders are waited for.
    pub fn watched(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .changes
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // This watch and the map hold one reference each when nobody else waits.
        if Arc::strong_count(&self.notify) <= 2 {
            waiting.remove(&self.order_id);
        }
    }
}
