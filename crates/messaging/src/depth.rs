//! How far a service's messaging is behind, as gauges read from its database every few
//! seconds: the outbox's unpublished messages and the age of the oldest, and the dead letters
//! waiting for an operator. The alert rules of `deploy/prometheus/` watch them.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

/// Gauge: outbox messages not yet published.
pub const OUTBOX_PENDING: &str = "messaging_outbox_pending";
/// Gauge (seconds): age of the oldest unpublished outbox message (0 when there is none): the
/// relay's lag.
pub const OUTBOX_OLDEST: &str = "messaging_outbox_oldest_pending_seconds";
/// Gauge: dead letters waiting (`flotilla dlq list`).
pub const DEAD_LETTERS: &str = "messaging_dead_letters";

/// How often the gauges are read.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Registers the gauges' HELP text and units.
pub fn describe() {
    use metrics::{Unit, describe_gauge};
    describe_gauge!(
        OUTBOX_PENDING,
        Unit::Count,
        "Outbox messages not yet published"
    );
    describe_gauge!(
        OUTBOX_OLDEST,
        Unit::Seconds,
        "Age of the oldest unpublished outbox message (the relay's lag), 0 when none"
    );
    describe_gauge!(
        DEAD_LETTERS,
        Unit::Count,
        "Dead letters waiting for an operator (flotilla dlq)"
    );
}

/// Reads the gauges from `pool` every [`INTERVAL`] until `shutdown`.
pub async fn run(pool: SqlitePool, shutdown: CancellationToken) {
    describe();
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = read(&pool).await {
            tracing::debug!(%error, "reading the outbox's depth failed");
        }
    }
}

async fn read(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MIN(created_at) FROM messaging_outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    let (dead,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messaging_dead_letters")
        .fetch_one(pool)
        .await?;
    let now = flotilla_kit::clock::now_micros();
    let lag = oldest.map_or(0.0, |created| {
        (now.saturating_sub(created)).max(0) as f64 / 1e6
    });
    metrics::gauge!(OUTBOX_PENDING).set(pending as f64);
    metrics::gauge!(OUTBOX_OLDEST).set(lag);
    metrics::gauge!(DEAD_LETTERS).set(dead as f64);
    Ok(())
}
