//! Choreography helpers: sagas without a coordinator.
//!
//! In a choreographed saga every participant publishes the facts it established as events, and
//! the others react to them: the inventory reserves stock when an order is created, the payment
//! service authorizes when stock is reserved, and so on. Nobody holds the saga's state, so a
//! service that must decide an outcome from several facts (the order: approved once payment is
//! captured *and* stock committed; rejected once every compensation is done) keeps a ledger of
//! the facts it observed, per saga, in its own database: [`record`] adds one in the
//! transaction of the consumer that received it, [`facts`] reads them all back.
//!
//! Facts may arrive in any order (they come from different services' outboxes) and more than
//! once (redelivery): the ledger keeps the first detail of each fact, and a decision made from
//! the whole set is the same whatever the order of arrival.
//!
//! What choreography gives up, compared with [`crate::Orchestrator`]: no single place knows a
//! saga's progress, and no coordinator's timer notices a participant that never answers
//! (reliable messaging makes every fact arrive eventually, but maybe much later). A service that
//! wants a business deadline sets one with [`set_deadline`] in the transaction that starts the
//! saga, clears it with [`clear_deadline`] when the saga ends, and acts on those [`due`] (the
//! order service publishes a fact the participants undo their work on).

use flotilla_kit::clock;
use std::collections::BTreeMap;

use flotilla_sqlite::{execute, query, query_at_most, sqlx_error};
use serde_json::Value;

use crate::Error;

/// Records that `fact` (with `detail`) happened in saga `saga_id`, in the caller's transaction
/// (on its borrowed SQLite handle, [`flotilla_sqlite::direct`]); false if it had been
/// recorded before (the first detail is kept).
pub fn record(
    db: &rusqlite::Connection,
    saga_id: &str,
    fact: &str,
    detail: &Value,
) -> Result<bool, Error> {
    let now = clock::now_micros();
    let inserted = execute(
        db,
        "INSERT INTO saga_facts (saga_id, fact, detail, observed_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (saga_id, fact) DO NOTHING",
        &[&saga_id, &fact, &serde_json::to_string(detail)?, &now],
    )
    .map_err(sqlx_error)?;
    Ok(inserted == 1)
}

/// Every fact recorded for saga `saga_id`, in the caller's transaction (on its borrowed SQLite
/// handle).
pub fn facts(db: &rusqlite::Connection, saga_id: &str) -> Result<Facts, Error> {
    let rows: Vec<(String, String)> = query(
        db,
        "SELECT fact, detail FROM saga_facts WHERE saga_id = $1",
        &[&saga_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(sqlx_error)?;
    let mut facts = BTreeMap::new();
    for (fact, detail) in rows {
        facts.insert(fact, serde_json::from_str(&detail)?);
    }
    Ok(Facts(facts))
}

/// Sets saga `saga_id`'s deadline to `at` (microseconds since the Unix epoch), in the caller's
/// transaction; replaces an earlier one.
pub fn set_deadline(db: &rusqlite::Connection, saga_id: &str, at: i64) -> Result<(), Error> {
    execute(
        db,
        "INSERT INTO saga_deadlines (saga_id, deadline) VALUES ($1, $2)
         ON CONFLICT (saga_id) DO UPDATE SET deadline = excluded.deadline",
        &[&saga_id, &at],
    )
    .map_err(sqlx_error)?;
    Ok(())
}

/// Removes saga `saga_id`'s deadline (it ended, or its deadline was acted on), in the caller's
/// transaction; false if it had none.
pub fn clear_deadline(db: &rusqlite::Connection, saga_id: &str) -> Result<bool, Error> {
    let removed = execute(
        db,
        "DELETE FROM saga_deadlines WHERE saga_id = $1",
        &[&saga_id],
    )
    .map_err(sqlx_error)?;
    Ok(removed == 1)
}

/// The sagas whose deadline is `now` or earlier, earliest first, at most `max`.
pub fn due(db: &rusqlite::Connection, now: i64, max: usize) -> Result<Vec<String>, Error> {
    query_at_most(
        db,
        "SELECT saga_id FROM saga_deadlines WHERE deadline <= $1 ORDER BY deadline",
        &[&now],
        max,
        |row| row.get(0),
    )
    .map_err(|e| Error::Database(sqlx_error(e)))
}

/// The facts observed of one saga.
///
/// ```
/// use flotilla_saga::choreography::Facts;
/// let facts = Facts::from_iter([("PaymentRefused", serde_json::json!({"reason": "credit"}))]);
/// assert!(facts.has("PaymentRefused"));
/// assert!(!facts.all(&["PaymentRefused", "StockReleased"]));
/// assert_eq!(facts.text("PaymentRefused", "reason"), Some("credit"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts(BTreeMap<String, Value>);

impl Facts {
    /// Whether `fact` was observed.
    pub fn has(&self, fact: &str) -> bool {
        self.0.contains_key(fact)
    }

    /// Whether every one of `facts` was observed.
    pub fn all(&self, facts: &[&str]) -> bool {
        facts.iter().all(|fact| self.has(fact))
    }

    /// The detail recorded with `fact`.
    pub fn detail(&self, fact: &str) -> Option<&Value> {
        self.0.get(fact)
    }

    /// The text field `field` of `fact`'s detail.
    pub fn text(&self, fact: &str, field: &str) -> Option<&str> {
        self.detail(fact)?.get(field)?.as_str()
    }

    /// The facts' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl<S: Into<String>> FromIterator<(S, Value)> for Facts {
    fn from_iter<I: IntoIterator<Item = (S, Value)>>(iter: I) -> Self {
        Facts(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}
