//! `flotilla sagas`: the sagas of the order service, listed and shown, from its database.
//!
//! Both styles live in `<data_dir>/order.db`, opened read-only (a running system is fine):
//!
//! * **orchestrated** sagas (`place_order`, `cancel_order`) are rows of `saga_instances`: their
//!   status (`RUNNING`, `COMPENSATING`, `COMPLETED`, `FAILED`), the step under way, the reason of
//!   a failure, and their log (each transition, timed); the commands they sent are in
//!   `saga_commands` (step, action or compensation, when);
//! * **choreographed** sagas are the facts the order service heard of each (`saga_facts`: the
//!   other services' events, timed) and, while one runs, its business deadline
//!   (`saga_deadlines`); its outcome is its order's (`APPROVED`, `REJECTED`, `CANCELLED`).
//!
//! | command | what |
//! | --- | --- |
//! | `flotilla sagas list [--status S] [--style S] [--limit N] [--json]` | newest first; `--status` is `running`, `compensating`, `completed` or `failed` |
//! | `flotilla sagas show ID [--json]` | one saga (an order's id shows its place-order saga, `cancel-<id>` its cancellation): its timeline, the commands or facts, timings |

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use serde::Serialize;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

/// `flotilla sagas …`.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// List the sagas, newest first.
    List {
        /// Only sagas in this state.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Only sagas of this style.
        #[arg(long, value_enum)]
        style: Option<Style>,
        /// At most this many (1 to 10,000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Data directory of the system.
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one saga: its steps and compensations (or facts), with their times.
    Show {
        /// The saga's id (for the place-order saga, its order's id; `cancel-<order id>` for a
        /// cancellation).
        id: String,
        /// Data directory of the system.
        #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
        data_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A saga's state, as `--status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Steps are under way.
    Running,
    /// A step failed; the steps done are being undone.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Failed, and compensated.
    Failed,
}

impl Status {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "RUNNING" => Some(Status::Running),
            "COMPENSATING" => Some(Status::Compensating),
            "COMPLETED" => Some(Status::Completed),
            "FAILED" => Some(Status::Failed),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Compensating => "COMPENSATING",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
        }
    }
}

/// A saga's style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// Run by the order service's orchestrator.
    Orchestration,
    /// Services reacting to each other's events.
    Choreography,
}

/// A saga as `list` shows it.
#[derive(Debug, Serialize)]
struct Listed {
    saga_id: String,
    style: Style,
    saga: String,
    status: Status,
    /// The order's status, from the read model (`None` if it has not caught up).
    order_status: Option<String>,
    /// Orchestration: the step under way or last run; choreography: the facts heard.
    progress: i64,
    reason: Option<String>,
    started_at: String,
    updated_at: String,
    duration_ms: i64,
}

/// One line of a saga's timeline.
#[derive(Debug, Serialize)]
struct Entry {
    at: String,
    /// Milliseconds since the saga started.
    after_ms: i64,
    what: String,
}

/// A saga as `show` shows it.
#[derive(Debug, Serialize)]
struct Shown {
    #[serde(flatten)]
    saga: Listed,
    /// Its transitions (orchestration) or the facts heard (choreography), oldest first.
    timeline: Vec<Entry>,
    /// The commands it sent (orchestration): step, `ACTION` or `COMPENSATION`, message id.
    commands: Vec<Command>,
}

#[derive(Debug, Serialize)]
struct Command {
    at: String,
    step: i64,
    phase: String,
    message_id: String,
}

/// Runs `flotilla sagas …`.
pub async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::List {
            status,
            style,
            limit,
            data_dir,
            json,
        } => {
            let pool = open(&data_dir).await?;
            let mut sagas = Vec::new();
            if style != Some(Style::Choreography) {
                sagas.extend(orchestrated(&pool, status, limit).await?);
            }
            if style != Some(Style::Orchestration) {
                sagas.extend(choreographed(&pool, status, limit).await?);
            }
            sagas.sort_by(|a, b| b.started_at.cmp(&a.started_at));
            sagas.truncate(limit as usize);
            if json {
                println!("{}", serde_json::to_string_pretty(&sagas)?);
            } else {
                print!("{}", table(&sagas));
            }
            Ok(())
        }
        Action::Show { id, data_dir, json } => {
            let pool = open(&data_dir).await?;
            let shown = show(&pool, &id)
                .await?
                .with_context(|| format!("no saga `{id}` in {}", data_dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print!("{}", text(&shown));
            }
            Ok(())
        }
    }
}

/// Opens the order service's database, read-only (never creates it).
async fn open(data_dir: &Path) -> anyhow::Result<SqlitePool> {
    let path = data_dir.join("order.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(false)
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    SqlitePool::connect_with(options).await.with_context(|| {
        format!(
            "cannot open {} (has the system run in {}?)",
            path.display(),
            data_dir.display()
        )
    })
}

// The queries below are put together from the constants of this module only (no input): the
// values always go through bind parameters, hence `AssertSqlSafe`.
type InstanceRow = (
    String,
    String,
    String,
    i64,
    Option<String>,
    i64,
    i64,
    Option<String>,
);

const INSTANCE_COLUMNS: &str = "i.saga_id, i.saga_type, i.status, i.step, i.reason, i.created_at, i.updated_at,
     (SELECT status FROM order_summaries
      WHERE order_id = CASE WHEN i.saga_id LIKE 'cancel-%' THEN substr(i.saga_id, 8) ELSE i.saga_id END)";

fn orchestrated_saga(row: InstanceRow) -> Option<Listed> {
    let (saga_id, saga, status, step, reason, created, updated, order_status) = row;
    Some(Listed {
        saga_id,
        style: Style::Orchestration,
        saga,
        status: Status::parse(&status)?,
        order_status,
        progress: step,
        reason,
        started_at: rfc3339(created),
        updated_at: rfc3339(updated),
        duration_ms: (updated - created) / 1_000,
    })
}

async fn orchestrated(
    pool: &SqlitePool,
    status: Option<Status>,
    limit: u32,
) -> anyhow::Result<Vec<Listed>> {
    let sql = format!(
        "SELECT {INSTANCE_COLUMNS} FROM saga_instances i
         WHERE ($1 IS NULL OR i.status = $1) ORDER BY i.created_at DESC LIMIT $2"
    );
    let rows: Vec<InstanceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(status.map(Status::as_str))
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().filter_map(orchestrated_saga).collect())
}

type FactsRow = (String, i64, i64, i64, bool, Option<String>);

/// A choreographed saga's state: running while its deadline is kept, else its order's outcome.
fn choreographed_status(running: bool, order_status: Option<&str>) -> Status {
    match (running, order_status) {
        (true, _) | (false, None | Some("PENDING")) => Status::Running,
        (false, Some("REJECTED")) => Status::Failed,
        (false, Some(_)) => Status::Completed,
    }
}

fn choreographed_saga(row: FactsRow) -> Listed {
    let (saga_id, facts, first, last, running, order_status) = row;
    Listed {
        status: choreographed_status(running, order_status.as_deref()),
        saga: "place_order".to_owned(),
        style: Style::Choreography,
        progress: facts,
        reason: None,
        started_at: rfc3339(first),
        updated_at: rfc3339(last),
        duration_ms: (last - first) / 1_000,
        order_status,
        saga_id,
    }
}

const FACT_COLUMNS: &str = "f.saga_id, COUNT(*), MIN(f.observed_at), MAX(f.observed_at),
     EXISTS (SELECT 1 FROM saga_deadlines d WHERE d.saga_id = f.saga_id),
     (SELECT status FROM order_summaries WHERE order_id = f.saga_id)";

async fn choreographed(
    pool: &SqlitePool,
    status: Option<Status>,
    limit: u32,
) -> anyhow::Result<Vec<Listed>> {
    let sql = format!(
        "SELECT {FACT_COLUMNS} FROM saga_facts f GROUP BY f.saga_id
         ORDER BY MIN(f.observed_at) DESC"
    );
    let rows: Vec<FactsRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(choreographed_saga)
        .filter(|saga| status.is_none_or(|wanted| saga.status == wanted))
        .take(limit as usize)
        .collect())
}

async fn show(pool: &SqlitePool, id: &str) -> anyhow::Result<Option<Shown>> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM saga_instances i WHERE i.saga_id = $1");
    let instance: Option<InstanceRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    if let Some(saga) = instance.and_then(orchestrated_saga) {
        let started = micros(&saga.started_at);
        let log: Vec<(i64, String)> = sqlx::query_as(
            "SELECT entry.value ->> 'at', entry.value ->> 'entry' FROM saga_instances,
                 json_each(saga_instances.log) AS entry
             WHERE saga_id = $1 ORDER BY entry.key",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        let commands: Vec<(String, i64, String, i64)> = sqlx::query_as(
            "SELECT message_id, step, phase, sent_at FROM saga_commands
             WHERE saga_id = $1 ORDER BY sent_at, step",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        return Ok(Some(Shown {
            timeline: log
                .into_iter()
                .map(|(at, what)| entry(at, started, what))
                .collect(),
            commands: commands
                .into_iter()
                .map(|(message_id, step, phase, at)| Command {
                    at: rfc3339(at),
                    step,
                    phase,
                    message_id,
                })
                .collect(),
            saga,
        }));
    }
    let sql =
        format!("SELECT {FACT_COLUMNS} FROM saga_facts f WHERE f.saga_id = $1 GROUP BY f.saga_id");
    let facts: Option<FactsRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let Some(row) = facts else {
        return Ok(None);
    };
    let saga = choreographed_saga(row);
    let started = micros(&saga.started_at);
    let heard: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT observed_at, fact, detail FROM saga_facts WHERE saga_id = $1
         ORDER BY observed_at, fact",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(Shown {
        timeline: heard
            .into_iter()
            .map(|(at, fact, detail)| {
                let what = if detail == "null" || detail == "{}" {
                    fact
                } else {
                    format!("{fact} {detail}")
                };
                entry(at, started, what)
            })
            .collect(),
        commands: Vec::new(),
        saga,
    }))
}

fn entry(at: i64, started: i64, what: String) -> Entry {
    Entry {
        at: rfc3339(at),
        after_ms: (at - started) / 1_000,
        what,
    }
}

/// Microseconds since the epoch as RFC 3339, UTC.
fn rfc3339(micros: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// RFC 3339 back to microseconds (0 if unreadable).
fn micros(text: &str) -> i64 {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|at| (at.unix_timestamp_nanos() / 1_000) as i64)
        .unwrap_or(0)
}

fn table(sagas: &[Listed]) -> String {
    let mut out = format!(
        "{:<38} {:<13} {:<12} {:<12} {:<9} {:>8} {:>9}  {}\n",
        "SAGA", "STYLE", "TYPE", "STATUS", "ORDER", "PROGRESS", "MS", "STARTED"
    );
    for saga in sagas {
        let style = match saga.style {
            Style::Orchestration => "orchestration",
            Style::Choreography => "choreography",
        };
        out.push_str(&format!(
            "{:<38} {:<13} {:<12} {:<12} {:<9} {:>8} {:>9}  {}\n",
            saga.saga_id,
            style,
            saga.saga,
            saga.status.as_str(),
            saga.order_status.as_deref().unwrap_or("-"),
            saga.progress,
            saga.duration_ms,
            saga.started_at,
        ));
    }
    out
}

fn text(shown: &Shown) -> String {
    let saga = &shown.saga;
    let mut out = format!(
        "saga {} ({:?}, {}): {} after {} ms; order {}\n",
        saga.saga_id,
        saga.style,
        saga.saga,
        saga.status.as_str(),
        saga.duration_ms,
        saga.order_status.as_deref().unwrap_or("-"),
    );
    if let Some(reason) = &saga.reason {
        out.push_str(&format!("reason: {reason}\n"));
    }
    out.push_str("timeline:\n");
    for entry in &shown.timeline {
        out.push_str(&format!("  +{:>6} ms  {}\n", entry.after_ms, entry.what));
    }
    if !shown.commands.is_empty() {
        out.push_str("commands sent:\n");
        for command in &shown.commands {
            out.push_str(&format!(
                "  {}  step {} {:<12} {}\n",
                command.at, command.step, command.phase, command.message_id
            ));
        }
    }
    out
}
