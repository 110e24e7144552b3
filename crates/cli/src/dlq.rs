//! `flotilla dlq`: the dead letters of the services' outboxes — messages the relay gave up on
//! after its maximum attempts, or at once when the transport refused them — listed and put back.
//!
//! Each service keeps its own dead letters in its own database (`<data_dir>/<service>.db`,
//! table `messaging_dead_letters`); this module opens those databases directly, like
//! `flotilla check`, so it works on a running system: a replayed letter is back in the outbox,
//! and the service's running relay publishes it on its next pass (or the service does at its
//! next start). It never creates a database: a service that has not run in the data directory
//! yet has none, and is skipped with a note.
//!
//! Not here: the outbox, the relay and what dead-letters a message
//! ([`flotilla_messaging::outbox`]).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{ArgGroup, Subcommand, ValueEnum};
use flotilla_messaging::outbox::{self, DeadLetter, Replay};
use serde::Serialize;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

/// The services with an outbox, hence dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// The order service.
    Order,
    /// The payment service.
    Payment,
    /// The inventory service.
    Inventory,
    /// The shipping service.
    Shipping,
}

impl Service {
    /// Every service, in the order listings show them.
    pub const ALL: [Service; 4] = [
        Service::Order,
        Service::Payment,
        Service::Inventory,
        Service::Shipping,
    ];

    /// Its name, as on the command line and in its database's file name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Order => "order",
            Service::Payment => "payment",
            Service::Inventory => "inventory",
            Service::Shipping => "shipping",
        }
    }

    /// Its database in `data_dir`.
    fn database(self, data_dir: &Path) -> PathBuf {
        data_dir.join(format!("{}.db", self.name()))
    }
}

/// What `flotilla dlq` does.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// List the dead letters of every service (or one): service, seq, topic, key, attempts,
    /// message id and last error.
    List(ListOptions),
    /// Put dead letters back in a service's outbox, attempts reset, for its relay to publish
    /// again: the given seqs (all or none: an unknown seq changes nothing), or `--all`.
    Replay(ReplayOptions),
}

/// Flags of `flotilla dlq list`.
#[derive(Debug, clap::Args)]
pub struct ListOptions {
    /// Only this service's dead letters.
    #[arg(long)]
    service: Option<Service>,
    /// Data directory of the system (a running one is fine: the databases are read only).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
    data_dir: PathBuf,
    /// Print JSON (an array of dead letters) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Flags of `flotilla dlq replay`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("which").required(true).args(["seqs", "all"])))]
pub struct ReplayOptions {
    /// The service whose dead letters to replay.
    #[arg(long)]
    service: Service,
    /// Seqs of the dead letters, as `flotilla dlq list` shows them.
    seqs: Vec<i64>,
    /// Replay every dead letter of the service.
    #[arg(long)]
    all: bool,
    /// Data directory of the system (a running one is fine).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
    data_dir: PathBuf,
}

/// A dead letter and the service whose outbox it belongs to.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// The service.
    pub service: &'static str,
    /// The letter.
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// What [`list`] found.
#[derive(Debug)]
pub struct Listing {
    /// The dead letters, by service, then oldest first.
    pub letters: Vec<Listed>,
    /// The services asked for that have no database in the data directory yet.
    pub missing: Vec<(Service, PathBuf)>,
}

/// Runs `flotilla dlq ACTION`: data to stdout, notes to stderr.
pub async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::List(options) => {
            let services = match options.service {
                Some(service) => vec![service],
                None => Service::ALL.to_vec(),
            };
            let listing = list(&options.data_dir, &services).await?;
            for (service, path) in &listing.missing {
                eprintln!(
                    "flotilla: no {} database at {} yet (the service has not run there): skipped",
                    service.name(),
                    path.display()
                );
            }
            if options.json {
                println!("{}", serde_json::to_string_pretty(&listing.letters)?);
            } else if listing.letters.is_empty() {
                println!("no dead letters");
            } else {
                print!("{}", table(&listing.letters));
            }
            Ok(())
        }
        Action::Replay(options) => {
            let seqs = (!options.all).then_some(options.seqs.as_slice());
            let service = options.service.name();
            let replayed = replay(&options.data_dir, options.service, seqs).await?;
            if replayed.is_empty() {
                println!("{service} has no dead letters: nothing replayed");
            } else {
                let seqs: Vec<String> = replayed.iter().map(i64::to_string).collect();
                println!(
                    "replayed {} dead letter(s) of {service} (seq {}): back in its outbox for its relay to publish",
                    replayed.len(),
                    seqs.join(", ")
                );
            }
            Ok(())
        }
    }
}

/// The dead letters of `services` in `data_dir`, skipping (and naming) those without a database;
/// an error if none of them has one (most likely the wrong data directory).
pub async fn list(data_dir: &Path, services: &[Service]) -> anyhow::Result<Listing> {
    let mut listing = Listing {
        letters: Vec::new(),
        missing: Vec::new(),
    };
    for &service in services {
        let path = service.database(data_dir);
        if !path.exists() {
            listing.missing.push((service, path));
            continue;
        }
        let pool = open(&path, true).await?;
        let letters = outbox::dead_letters(&pool)
            .await
            .with_context(|| format!("cannot read the dead letters in {}", path.display()));
        pool.close().await;
        listing
            .letters
            .extend(letters?.into_iter().map(|letter| Listed {
                service: service.name(),
                letter,
            }));
    }
    if listing.missing.len() == services.len() {
        match listing.missing.as_slice() {
            [(service, path)] => anyhow::bail!(
                "no {} database at {} (give --data-dir)",
                service.name(),
                path.display()
            ),
            _ => anyhow::bail!(
                "no service database in {} (give --data-dir)",
                data_dir.display()
            ),
        }
    }
    Ok(listing)
}

/// Puts the dead letters `seqs` of `service` (all of them if `None`) back in its outbox, in one
/// transaction; returns the seqs replayed. An error, with nothing changed, if any of `seqs` is
/// not a dead letter of the service.
pub async fn replay(
    data_dir: &Path,
    service: Service,
    seqs: Option<&[i64]>,
) -> anyhow::Result<Vec<i64>> {
    let path = service.database(data_dir);
    anyhow::ensure!(
        path.exists(),
        "no {} database at {} (give --data-dir)",
        service.name(),
        path.display()
    );
    let pool = open(&path, false).await?;
    let replay = outbox::replay_dead_letters(&pool, seqs)
        .await
        .with_context(|| format!("cannot replay the dead letters in {}", path.display()));
    pool.close().await;
    match replay? {
        Replay::Done(seqs) => Ok(seqs),
        Replay::Unknown(unknown) => {
            let unknown: Vec<String> = unknown.iter().map(i64::to_string).collect();
            anyhow::bail!(
                "{} has no dead letter with seq {}: nothing replayed (see `flotilla dlq list --service {}`)",
                service.name(),
                unknown.join(", "),
                service.name()
            )
        }
    }
}

/// Opens an existing database (never creates one), waiting for the running service's locks.
async fn open(path: &Path, read_only: bool) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .read_only(read_only)
        .busy_timeout(std::time::Duration::from_secs(10));
    SqlitePool::connect_with(options)
        .await
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The letters as a table with a header, columns as wide as their widest cell.
fn table(letters: &[Listed]) -> String {
    const HEADER: [&str; 9] = [
        "SERVICE",
        "SEQ",
        "TOPIC",
        "TYPE",
        "KEY",
        "ATTEMPTS",
        "DEAD AT",
        "MESSAGE ID",
        "LAST ERROR",
    ];
    let rows: Vec<[String; 9]> = letters
        .iter()
        .map(|Listed { service, letter }| {
            [
                (*service).to_owned(),
                letter.seq.to_string(),
                letter.topic.clone(),
                letter.message_type.clone(),
                letter.key.clone(),
                letter.attempts.to_string(),
                dead_at(letter.dead_at),
                letter.message_id.clone(),
                // One line per letter, whatever the error said.
                letter.last_error.replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            match column {
                0 => line.push_str(&format!("{cell:<width$}")),
                // Numbers right-aligned.
                1 | 4 => line.push_str(&format!("  {cell:>width$}")),
                _ => line.push_str(&format!("  {cell:<width$}")),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A dead letter's time (microseconds since the epoch) as RFC 3339, UTC, to the second.
fn dead_at(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns_and_keeps_one_line_per_letter() {
        let letters = [7, 12].map(|seq| Listed {
            service: "payment",
            letter: DeadLetter {
                seq,
                message_id: format!("id-{seq}"),
                topic: "saga.replies".into(),
                message_type: "ReserveStockSucceeded".into(),
                key: "order-1".into(),
                attempts: 20,
                last_error: "transport unavailable:\nno subscriber".into(),
                dead_at: 1_796_000_000_000_000,
            },
        });
        let table = table(&letters);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("SERVICE  SEQ  TOPIC"), "{table}");
        assert!(
            lines[1].starts_with("payment    7  saga.replies"),
            "{table}"
        );
        assert!(
            lines[2].ends_with("transport unavailable: no subscriber"),
            "{table}"
        );
    }
}
