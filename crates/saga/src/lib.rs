//! Sagas that survive crashes: an orchestration engine, and helpers for choreography
//! ([`choreography`]).
//!
//! A [`Saga`] is a list of [`Step`]s, each with an action (a command to a participant), an
//! optional compensation (the command that undoes it), a timeout and a number of attempts. An
//! [`Orchestrator`] keeps every instance in the orchestrator's own database and moves it **in
//! the same transaction** as the commands it sends (written to the messaging outbox) and as the
//! saga's own effects ([`Saga::on_transition`]: the order's events, say):
//!
//! ```text
//!  start ──▶ step 0 ──ok──▶ step 1 ──ok──▶ … ──ok──▶ COMPLETED
//!               │              │
//!               │           fails, or times out `attempts` times
//!               │              ▼
//!               │        COMPENSATING: the compensations of the steps that succeeded,
//!               │        latest first, each retried until it succeeds ──▶ FAILED
//!               └─ fails ──▶ FAILED (nothing to undo)
//! ```
//!
//! Steps after the saga's point of no return (its *pivot*) are [`Step::retriable`]: they are
//! sent again until they succeed and never start a compensation (capturing a payment that was
//! authorized, committing stock that was reserved). A saga may run those last steps together
//! ([`Saga::concurrent_tail`]): their commands go out at once and the saga completes when the
//! last of them has succeeded.
//!
//! * **Replies** come back as messages (request-reply over the messaging crate): a payload with
//!   `"ok": true` (and the participant's data) or `"ok": false` and a `"reason"`, as the
//!   participants build them (`flotilla_contracts::succeeded` and `refused`). They are matched
//!   to the command they answer (`causation_id`): a reply to an earlier attempt of the current
//!   step counts (participants are idempotent), a reply to another step or phase is stale and
//!   ignored, so redelivered or late replies never move a saga twice.
//! * **Timeouts and crash recovery** are one mechanism: every unfinished instance has a
//!   deadline; [`Orchestrator::tick`] resends the command of every instance past its deadline.
//!   After a crash nothing else is needed: the instances, their deadlines and the unsent
//!   commands are all in the database.
//! * **Idempotency**: every command carries `idempotency_key` = `<saga id>:<step>:<phase>`, the
//!   same for every attempt, so that a participant applies it once.
//!
//! [`SagaStyle`] names the two ways to coordinate (this engine, or choreography).

pub mod choreography;
mod engine;
mod style;

pub use engine::{Command, Handled, Orchestrator, Replies, Status, Step, Transition};
pub use style::SagaStyle;

/// Registers the HELP text and unit of every saga metric (call it once the process's recorder
/// exists).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "saga_transitions_total",
        metrics::Unit::Count,
        "Saga transitions, by saga and transition (started, step_succeeded, step_failed, compensated, completed, failed)"
    );
}

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::SqlitePool;

use flotilla_messaging::Message;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The schema could not be set up.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Messaging failed (an invalid topic...).
    #[error(transparent)]
    Messaging(#[from] flotilla_messaging::Error),
    /// Saga data could not be encoded or decoded.
    #[error("saga data: {0}")]
    Data(#[from] serde_json::Error),
    /// No saga instance has this id.
    #[error("no saga `{0}`")]
    NotFound(String),
    /// A saga with this id exists already.
    #[error("saga `{0}` exists already")]
    Exists(String),
    /// The saga's own effect failed.
    #[error("saga transition failed: {0}")]
    Transition(String),
}

/// A saga definition.
pub trait Saga: Send + Sync + 'static {
    /// The saga's own data (the order, its amounts, the ids participants answered with).
    type Data: Serialize + DeserializeOwned + Send + Sync;

    /// Its name, stored with each instance.
    fn name(&self) -> &'static str;

    /// Its steps, in order.
    fn steps(&self) -> &[Step<Self::Data>];

    /// The topic participants reply on.
    fn reply_topic(&self) -> &str;

    /// Whether the retriable steps that end the saga (two or more, after its pivot) are sent
    /// together rather than one after the other: none of them can fail for good, so when the
    /// participants need no order between them, the saga ends as soon as the slowest answers
    /// instead of after all of them in turn. A reply to any of them counts for that step; the
    /// saga completes when every one has succeeded; at the deadline the ones not done yet are
    /// sent again. False by default; ignored for a saga of 64 steps or more.
    fn concurrent_tail(&self) -> bool {
        false
    }

    /// Called in the transaction of every transition, to apply the saga's own effects (append
    /// the order's events, say); the messages it returns are written to the outbox too. It runs
    /// on the orchestrator's borrowed SQLite handle ([`flotilla_sqlite::direct`]): direct
    /// calls, inside the transaction, without a round trip per statement.
    fn on_transition(
        &self,
        db: &rusqlite::Connection,
        saga_id: &str,
        data: &Self::Data,
        transition: &Transition,
    ) -> Result<Vec<Message>, Error>;

    /// Called once a move the orchestrator made on its own, at a deadline, has committed (a
    /// command sent again, or a step failed for want of an answer, and what followed), with the
    /// instance's id: whoever waits for the saga can look again. Moves made by replies are the
    /// consumer's to report ([`flotilla_messaging::inbox::Handler::committed`]). Nothing by
    /// default.
    fn timed_out(&self, saga_id: &str) {
        let _ = saga_id;
    }
}

/// Creates the saga tables in the orchestrator's database if needed (migrations recorded in
/// `_saga_migrations`).
pub async fn migrate(pool: &SqlitePool) -> Result<(), Error> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_saga_migrations");
    migrator.run(pool).await?;
    Ok(())
}

/// Gauge: orchestrated sagas not finished (running or compensating), by `saga`.
pub const UNFINISHED: &str = "saga_unfinished";
/// Gauge (seconds): age of the oldest unfinished orchestrated saga, by `saga` (0 when none): a
/// saga stuck shows here.
pub const OLDEST_UNFINISHED: &str = "saga_oldest_unfinished_seconds";

/// Reads [`UNFINISHED`] and [`OLDEST_UNFINISHED`] from `pool` (the orchestrator's database)
/// every `every`, for the sagas named in `sagas`, until `shutdown`.
pub async fn watch_unfinished(
    pool: SqlitePool,
    sagas: &'static [&'static str],
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use metrics::{Unit, describe_gauge};
    describe_gauge!(
        UNFINISHED,
        Unit::Count,
        "Orchestrated sagas running or compensating, by saga"
    );
    describe_gauge!(
        OLDEST_UNFINISHED,
        Unit::Seconds,
        "Age of the oldest orchestrated saga still running or compensating, by saga (0 when none)"
    );
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let rows: Result<Vec<(String, i64, i64)>, sqlx::Error> = sqlx::query_as(
            "SELECT saga_type, COUNT(*), MIN(created_at) FROM saga_instances
             WHERE status IN ('RUNNING', 'COMPENSATING') GROUP BY saga_type",
        )
        .fetch_all(&pool)
        .await;
        let Ok(rows) = rows else {
            continue;
        };
        let now = flotilla_kit::clock::now_micros();
        for saga in sagas {
            let (count, oldest) = rows
                .iter()
                .find(|(name, _, _)| name == saga)
                .map_or((0, None), |(_, count, oldest)| (*count, Some(*oldest)));
            let age = oldest.map_or(0.0, |created| {
                now.saturating_sub(created).max(0) as f64 / 1e6
            });
            metrics::gauge!(UNFINISHED, "saga" => *saga).set(count as f64);
            metrics::gauge!(OLDEST_UNFINISHED, "saga" => *saga).set(age);
        }
    }
}
