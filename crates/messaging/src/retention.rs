//! Retention: how long the outbox keeps a published message and the inbox a processed message's
//! id, and the pruning that removes them afterwards.
//!
//! Without it both tables grow with every message for as long as the service runs (at 500
//! orders a second the order service writes 3,000 outbox rows and 3,000 inbox rows a second).
//!
//! * **Outbox:** a published row is kept for [`Retention::outbox`] (1 h by default: it is what
//!   an operator inspects, and what the tools show), then deleted. Rows go in their `seq` order,
//!   and the pruning stops at the first row still pending or published within the window: the
//!   ones after a message still backing off wait for it (it is published or dead-lettered
//!   within minutes).
//! * **Inbox:** a processed message's id is kept for [`Retention::inbox`] (7 days by default),
//!   which must exceed the longest time a message can come again: the relay's retries end in
//!   minutes, a broker's redeliveries within its acknowledgement wait. Message ids are UUIDv7,
//!   whose text sorts by creation time, so the ids older than the window are a range of the
//!   inbox's key; a row goes only when its id *and* its processing are older than the window
//!   (an id of another kind that sorts low is still kept for the whole window after it was
//!   processed).
//!
//! Each round deletes at most [`PRUNED_AT_ONCE`] rows per transaction, on the service's own
//! connection, off the hot paths ([`run`] every [`Retention::interval`]).

use flotilla_kit::clock;
use std::time::Duration;

use flotilla_sqlite::{execute, sqlx_error, transaction};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Rows deleted in one transaction at most.
pub const PRUNED_AT_ONCE: usize = 1000;

/// How long messages are kept once done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long a published outbox row is kept. Default 1 h.
    pub outbox: Duration,
    /// How long a processed message's id is kept in the inbox. Default 7 days.
    pub inbox: Duration,
    /// How often [`run`] prunes. Default 10 s.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            outbox: Duration::from_secs(3600),
            inbox: Duration::from_secs(7 * 24 * 3600),
            interval: Duration::from_secs(10),
        }
    }
}

/// What one [`prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Published outbox rows.
    pub outbox: u64,
    /// Inbox rows.
    pub inbox: u64,
}

/// The lowest UUIDv7 text of the millisecond `at`: every v7 id made before `at` sorts below it.
///
/// ```
/// let midnight = time::OffsetDateTime::from_unix_timestamp(1_795_651_200).unwrap(); // 2026-11-26
/// let id = flotilla_messaging::retention::lowest_v7_at(midnight);
/// assert_eq!(id, "01a21526-e400-7000-8000-000000000000");
/// assert!(uuid::Uuid::now_v7().to_string().as_str() > id.as_str());
/// ```
pub fn lowest_v7_at(at: OffsetDateTime) -> String {
    let ms = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0) & 0xffff_ffff_ffff;
    format!(
        "{:08x}-{:04x}-7000-8000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// Prunes, as of `now`, the published outbox rows and `consumer`'s inbox rows older than
/// `retention` says, [`PRUNED_AT_ONCE`] rows a transaction, until none is left.
pub async fn prune(
    pool: &SqlitePool,
    consumer: &str,
    retention: &Retention,
    now: OffsetDateTime,
) -> Result<Pruned, Error> {
    let mut pruned = Pruned::default();
    let published_before = clock::micros(now - retention.outbox);
    loop {
        let deleted = transaction(pool, |db| prune_outbox(db, published_before)).await?;
        pruned.outbox += deleted;
        if deleted < PRUNED_AT_ONCE as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let cutoff = now - retention.inbox;
    let (below, processed_before) = (lowest_v7_at(cutoff), clock::micros(cutoff));
    loop {
        let deleted = transaction(pool, |db| {
            let deleted = execute(
                db,
                "DELETE FROM messaging_inbox WHERE consumer = $1 AND message_id IN (
                     SELECT message_id FROM messaging_inbox
                     WHERE consumer = $1 AND message_id < $2 AND processed_at < $3
                     LIMIT 1000)",
                &[&consumer, &below, &processed_before],
            )
            .map_err(sqlx_error)?;
            Ok::<_, Error>(u64::try_from(deleted).unwrap_or(0))
        })
        .await?;
        pruned.inbox += deleted;
        if deleted < PRUNED_AT_ONCE as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    if pruned.outbox > 0 {
        metrics::counter!("messaging_outbox_pruned_total").increment(pruned.outbox);
    }
    if pruned.inbox > 0 {
        metrics::counter!("messaging_inbox_pruned_total").increment(pruned.inbox);
    }
    Ok(pruned)
}

/// Deletes the outbox rows at its start that were published before `published_before`, at most
/// [`PRUNED_AT_ONCE`], stopping at the first that was not.
fn prune_outbox(db: &rusqlite::Connection, published_before: i64) -> Result<u64, Error> {
    let last = {
        let mut statement = db
            .prepare_cached("SELECT seq, published_at FROM messaging_outbox ORDER BY seq")
            .map_err(sqlx_error)?;
        let mut rows = statement.raw_query();
        let (mut last, mut taken) = (None, 0);
        while taken < PRUNED_AT_ONCE
            && let Some(row) = rows.next().map_err(sqlx_error)?
        {
            let published: Option<i64> = row.get(1).map_err(sqlx_error)?;
            if published.is_none_or(|at| at >= published_before) {
                break;
            }
            last = Some(row.get::<_, i64>(0).map_err(sqlx_error)?);
            taken += 1;
        }
        last
    };
    let Some(last) = last else {
        return Ok(0);
    };
    // Every row up to `last` was read above, in this transaction: all prunable.
    let deleted = execute(db, "DELETE FROM messaging_outbox WHERE seq <= $1", &[&last])
        .map_err(sqlx_error)?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// Runs [`prune`] every [`Retention::interval`] until `shutdown`.
pub async fn run(
    pool: SqlitePool,
    consumer: String,
    retention: Retention,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retention.interval) => {}
        }
        match prune(&pool, &consumer, &retention, OffsetDateTime::now_utc()).await {
            Ok(pruned) if pruned != Pruned::default() => {
                tracing::debug!(
                    outbox = pruned.outbox,
                    inbox = pruned.inbox,
                    "pruned messages past retention"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not prune the outbox and inbox"),
        }
    }
}
