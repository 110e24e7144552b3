//! A saga participant, declared: a service that owns a database, serves a few routes, handles
//! the commands an orchestrator sends it and reacts to the other services' facts.
//!
//! A service writes one [`Participant`] (its name, database, routes, command topic, command
//! handler and reactions) and gets the rest from it: the database opened, seeded and migrated
//! ([`Participant::open`]), the consumer that sends each message to the right handler
//! ([`Participant::consumer`]), and the service run with its messaging, its routes and its
//! registration until shutdown ([`Participant::run`]). Its routes, views of its database, answer
//! with [`list`] (every row a query selects, as [`Items`]) and [`find`] (one row, or a problem).
//!
//! ```text
//!  commands topic ──▶ commands handler ─┐
//!  other topics   ──▶ reactions handler ┴─▶ one consumer (inbox, effect, outbox: one commit)
//! ```
//!
//! It does not know the system's contracts (which topics exist, who consumes them): the
//! declaration names the function that says them, as a [`Wiring`]. Nor what a service stores:
//! the migrations, seed rows and statements are the service's.

use std::path::Path;

use axum::{Json, Router};
use flotilla_kit::{Problem, ServerSettings};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, SqlitePool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::inbox::{ByTopic, Handler};
use crate::runtime::{self, Options, Wiring};
use crate::settings::ServiceConfig;

/// A saga participant: what it is called, stores, serves and handles.
///
/// `C` handles its commands, `R` its reactions to other services' facts, `T` is a row of its
/// seed. Declared once, as a `static`, by each participant service.
#[derive(Debug)]
pub struct Participant<C, R, T: 'static> {
    /// Its name: in the registry, as the consumer group (and key in the inbox), and of its
    /// database file (`<data_dir>/<name>.db`).
    pub name: &'static str,
    /// Its own schema (`sqlx::migrate!`), applied before the seed and the messaging tables.
    pub migrations: Migrator,
    /// What its database starts with.
    pub seed: Seed<T>,
    /// Its HTTP routes, on its database.
    pub routes: fn(SqlitePool) -> Router,
    /// The topic of the commands sent to it: they go to [`Participant::commands`].
    pub commands_topic: &'static str,
    /// Handles the commands (orchestration) and answers each on its `reply_to` topic.
    pub commands: C,
    /// Handles every other topic it consumes: the other services' facts (choreography).
    pub reactions: R,
    /// Who consumes what, for the participant named: its transport's subscriptions and topics,
    /// as the system's contracts say (`flotilla_contracts::wiring`).
    pub wiring: fn(&str) -> Wiring,
}

/// The rows a participant's database starts with: written once, when `table` has none.
#[derive(Debug)]
pub struct Seed<T: 'static> {
    /// The table seeded: when it holds a row, nothing is written.
    pub table: &'static str,
    /// The rows, a JSON array (the service's seed file, embedded with `include_str!`).
    pub rows: &'static str,
    /// Writes one row.
    pub insert: fn(&rusqlite::Connection, &T) -> rusqlite::Result<usize>,
}

impl<C, R, T> Participant<C, R, T>
where
    C: Handler + Clone,
    R: Handler + Clone,
    T: DeserializeOwned,
{
    /// The participant's consumer: messages on its commands topic go to its commands handler,
    /// all others to its reactions.
    pub fn consumer(&self) -> ByTopic<C, R> {
        ByTopic::new(
            self.commands_topic,
            self.commands.clone(),
            self.reactions.clone(),
        )
    }

    /// Opens its database under `settings`' data directory: its migrations, then its seed if
    /// the table is empty, then the messaging tables (outbox, inbox), while other instances
    /// starting at the same time wait.
    pub async fn open(&self, settings: &ServerSettings) -> Result<SqlitePool, sqlx::Error> {
        open(
            &settings.database_path(self.name),
            &self.migrations,
            &self.seed,
        )
        .await
    }

    /// Runs the service on `listener` until `shutdown`: opens its database, starts its
    /// messaging as its [`Participant::wiring`] says ([`runtime::start`]), serves its routes
    /// plus the transport's, registered under its name; then closes the database.
    pub async fn run(
        &self,
        config: ServiceConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        // The probes answer from the start, saying which step is under way.
        let health = flotilla_kit::Health::new();
        let starting = flotilla_discovery::starting(&config.instance, &listener, &health)?;
        health.starting("opening the database: migrations, seed");
        let pool = self
            .open(&config.instance.server)
            .await
            .map_err(std::io::Error::other)?;
        let messaging = runtime::start(
            Options {
                settings: &config.messaging,
                discovery: config.instance.discovery(&shutdown),
                group: self.name,
                wiring: (self.wiring)(self.name),
                pool: pool.clone(),
                handler: self.consumer(),
                health: health.clone(),
            },
            &shutdown,
        )
        .await
        .map_err(std::io::Error::other)?;
        starting.stop();
        let result = flotilla_discovery::serve_routes(
            self.name,
            &config.instance,
            listener,
            (self.routes)(pool.clone()),
            messaging.routes,
            health,
            shutdown,
        )
        .await;
        pool.close().await;
        result
    }
}

/// A list of rows: the body of a participant's list routes (`{"items": [...]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// A list route's answer: every row `sql` selects from `pool`, its parameters bound to `binds`
/// in order; a database failure is an internal problem.
pub async fn list<T>(
    pool: &SqlitePool,
    sql: &'static str,
    binds: &[&str],
) -> Result<Json<Items<T>>, Problem>
where
    T: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    let query = binds
        .iter()
        .fold(sqlx::query_as::<_, T>(sql), |query, bind| query.bind(*bind));
    let items = query
        .fetch_all(pool)
        .await
        .map_err(|e| Problem::internal(&e))?;
    Ok(Json(Items { items }))
}

/// A lookup route's answer: the row `sql` selects from `pool` for `key` (its one parameter), or
/// the problem `missing` makes (a 404) when there is none; a database failure is an internal
/// problem.
pub async fn find<T>(
    pool: &SqlitePool,
    sql: &'static str,
    key: &str,
    missing: impl FnOnce() -> Problem,
) -> Result<Json<T>, Problem>
where
    T: for<'r> FromRow<'r, SqliteRow> + Send + Unpin,
{
    sqlx::query_as::<_, T>(sql)
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(|e| Problem::internal(&e))?
        .map(Json)
        .ok_or_else(missing)
}

/// Opens the database at `path` with `migrations`, writes `seed` if its table is empty, and
/// creates the messaging tables ([`crate::migrate`]).
async fn open<T: DeserializeOwned>(
    path: &Path,
    migrations: &Migrator,
    seed: &Seed<T>,
) -> Result<SqlitePool, sqlx::Error> {
    let opening = flotilla_sqlite::open(path, migrations).await?;
    let rows: Vec<T> =
        serde_json::from_str(seed.rows).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let count = format!("SELECT COUNT(*) FROM {}", seed.table);
    let mut tx = opening.pool().begin().await?;
    let written = flotilla_sqlite::direct(&mut tx, |db| {
        let count = flotilla_sqlite::query_optional(db, &count, &[], |row| row.get::<_, i64>(0))
            .map_err(flotilla_sqlite::sqlx_error)?;
        if count.unwrap_or(0) > 0 {
            return Ok(0);
        }
        for row in &rows {
            (seed.insert)(db, row).map_err(flotilla_sqlite::sqlx_error)?;
        }
        Ok::<_, sqlx::Error>(rows.len())
    })
    .await?;
    tx.commit().await?;
    if written > 0 {
        tracing::info!(table = seed.table, rows = written, "seeded");
    }
    crate::migrate(opening.pool())
        .await
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    Ok(opening.ready())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_seed_is_written_once_before_the_messaging_tables() {
        let data = flotilla_testkit::TempData::new();
        let schema = data.path().join("migrations");
        std::fs::create_dir(&schema).expect("migrations dir");
        std::fs::write(
            schema.join("0001_numbers.sql"),
            "CREATE TABLE numbers (n INTEGER NOT NULL) STRICT;",
        )
        .expect("migration");
        let migrations = Migrator::new(schema).await.expect("migrator");
        let seed = Seed::<i64> {
            table: "numbers",
            rows: "[1, 2, 3]",
            insert: |db, n| {
                flotilla_sqlite::execute(db, "INSERT INTO numbers (n) VALUES ($1)", &[n])
            },
        };
        let path = data.path().join("participant.db");
        for _ in 0..2 {
            let pool = open(&path, &migrations, &seed).await.expect("open");
            let (count, sum): (i64, i64) = sqlx::query_as("SELECT COUNT(*), SUM(n) FROM numbers")
                .fetch_one(&pool)
                .await
                .expect("numbers");
            assert_eq!(
                (count, sum),
                (3, 6),
                "seeded once, not again at the next start"
            );
            let (outbox,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messaging_outbox")
                .fetch_one(&pool)
                .await
                .expect("the messaging tables");
            assert_eq!(outbox, 0);
            pool.close().await;
        }
    }
}
