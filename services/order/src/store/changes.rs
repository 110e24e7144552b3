//! Who waits for which order: a request with `Prefer: wait=N` sleeps until the order's consumer
//! commits the change that ends the order's saga, instead of polling the event store.
//!
//! A saga's last step marks its order [`Changes::ending`] inside the transaction; after each
//! commit the consumer calls [`Changes::committed`] ([`crate::Inbox`]'s `committed`), which wakes
//! the order's waiters if it was marked (a mark left by a transaction that rolled back only
//! causes a spare look). A waiter takes [`Changes::watch`] *before* loading the order, so a
//! change committed between its load and its sleep still wakes it. Changes made by another instance of
//! the service (`--scale order=2`) are not seen here: waiters also look again after
//! [`FALLBACK_POLL`], then after twice as long each time, up to [`FALLBACK_POLL_MAX`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

/// When a waiter first looks at its order again without a wake-up; each look doubles the wait,
/// up to [`FALLBACK_POLL_MAX`]. The look only covers another instance's commits: within an
/// instance the consumer wakes waiters. At 250 ms, under 500 sagas/s with waiting clients, the
/// looks of the sagas that took longer loaded the one connection enough to tip the service
/// into a queue that never drained (docs/benchmarks.md, "Third pass").
pub const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// The longest wait between a waiter's looks without a wake-up.
pub const FALLBACK_POLL_MAX: Duration = Duration::from_secs(2);

/// The orders waited for, each with what wakes its waiters.
#[derive(Debug, Default)]
pub struct Changes {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
    ending: Mutex<HashSet<String>>,
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
    /// let changes = flotilla_order::store::changes::Changes::default();
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

    /// Order `order_id`'s saga ends in the transaction under way: its waiters are woken once
    /// that commits ([`Changes::committed`]).
    pub fn ending(&self, order_id: &str) {
        // Marked whether or not anybody waits yet: a waiter may start before the commit.
        self.ending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(order_id.to_owned());
    }

    /// A change of `order_id` committed: wake its waiters if it ended the order's saga.
    ///
    /// ```
    /// use futures_util::FutureExt as _;
    /// let changes = flotilla_order::store::changes::Changes::default();
    /// let watch = changes.watch("o-1");
    /// let mut woken = std::pin::pin!(watch.notify.notified());
    /// woken.as_mut().enable();
    /// changes.committed("o-1");
    /// assert!(woken.as_mut().now_or_never().is_none(), "a step, not the end");
    /// changes.ending("o-1");
    /// changes.committed("o-1");
    /// assert!(woken.now_or_never().is_some());
    /// ```
    pub fn committed(&self, order_id: &str) {
        let ended = self
            .ending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(order_id);
        if ended {
            self.changed(order_id);
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
