//! The dead letters: the messages the relay gave up on, listed and put back for delivery.

use flotilla_kit::clock;
use sqlx::SqlitePool;

use crate::Error;

/// A dead letter, as listed by [`dead_letters`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    /// Its outbox sequence number.
    pub seq: i64,
    /// The message's id.
    pub message_id: String,
    /// Its topic.
    pub topic: String,
    /// Its type (`ReserveStock`, …).
    pub message_type: String,
    /// Its key.
    pub key: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last failure.
    pub last_error: String,
    /// When it was given up, in microseconds since the Unix epoch.
    pub dead_at: i64,
}

/// The dead letters, oldest first.
pub async fn dead_letters(pool: &SqlitePool) -> Result<Vec<DeadLetter>, Error> {
    Ok(sqlx::query_as(
        "SELECT seq, message_id, topic, COALESCE(json_extract(envelope, '$.message_type'), '') AS message_type,
                key, attempts, last_error, dead_at
         FROM messaging_dead_letters ORDER BY seq",
    )
    .fetch_all(pool)
    .await?)
}

/// Puts dead letter `seq` back in the outbox (attempts reset), to be published again; false if
/// there is no such dead letter.
pub async fn replay_dead_letter(pool: &SqlitePool, seq: i64) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    let moved = sqlx::query(
        "INSERT INTO messaging_outbox (message_id, topic, key, envelope, created_at)
         SELECT message_id, topic, key, envelope, $1 FROM messaging_dead_letters WHERE seq = $2",
    )
    .bind(clock::now_micros())
    .bind(seq)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM messaging_dead_letters WHERE seq = $1")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(moved == 1)
}

/// What [`replay_dead_letters`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Replay {
    /// The dead letters that had these seqs are back in the outbox, in this order (each under a
    /// new seq).
    Done(Vec<i64>),
    /// These seqs are not dead letters: nothing was replayed.
    Unknown(Vec<i64>),
}

/// Puts dead letters back in the outbox, attempts reset, to be published again by the relay:
/// those whose seq is in `seqs`, or every one if `seqs` is `None`.
///
/// All or nothing: one transaction, and if any of `seqs` is not a dead letter nothing changes
/// and [`Replay::Unknown`] names them. The letters go back in their seq order, so the messages of
/// one key keep their order among themselves; they go after any message enqueued meanwhile.
///
/// ```no_run
/// # async fn operator(pool: sqlx::SqlitePool) -> Result<(), flotilla_messaging::Error> {
/// use flotilla_messaging::outbox::{self, Replay};
/// match outbox::replay_dead_letters(&pool, Some(&[3, 7])).await? {
///     Replay::Done(seqs) => println!("{} back in the outbox", seqs.len()),
///     Replay::Unknown(seqs) => eprintln!("not dead letters: {seqs:?}; nothing replayed"),
/// }
/// # Ok(())
/// # }
/// ```
pub async fn replay_dead_letters(pool: &SqlitePool, seqs: Option<&[i64]>) -> Result<Replay, Error> {
    // The write lock from the start: no letter is buried between reading and moving them.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let dead: Vec<i64> = sqlx::query_scalar("SELECT seq FROM messaging_dead_letters ORDER BY seq")
        .fetch_all(&mut *tx)
        .await?;
    let chosen = match seqs {
        None => dead,
        Some(seqs) => {
            let mut seqs = seqs.to_vec();
            seqs.sort_unstable();
            seqs.dedup();
            let unknown: Vec<i64> = seqs
                .iter()
                .copied()
                .filter(|seq| dead.binary_search(seq).is_err())
                .collect();
            if !unknown.is_empty() {
                return Ok(Replay::Unknown(unknown)); // dropping `tx` rolls back (nothing written)
            }
            seqs
        }
    };
    let now = clock::now_micros();
    for seq in &chosen {
        sqlx::query(
            "INSERT INTO messaging_outbox (message_id, topic, key, envelope, created_at)
             SELECT message_id, topic, key, envelope, $1 FROM messaging_dead_letters WHERE seq = $2",
        )
        .bind(now)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM messaging_dead_letters WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Replay::Done(chosen))
}
