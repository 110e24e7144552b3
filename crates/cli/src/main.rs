//! `flotilla`: one binary for every role of the platform.
//!
//! * `flotilla` or `flotilla up`: the supervisor runs the whole system ([`up`], a caller of
//!   [`flotilla_supervisor`]);
//! * `flotilla run ROLE`: one component (idp, registry, gateway, order, payment, inventory,
//!   shipping);
//! * `flotilla status`: the instances the registry knows;
//! * `flotilla token --user alice`: a development access token (the last line printed);
//! * `flotilla projections rebuild order`: rebuilds the order's read models from its events;
//! * `flotilla check`: the system's invariants, computed from the services' databases;
//! * `flotilla bench orders`: completed sagas per second and time to final state, under load;
//! * `flotilla dlq list` / `flotilla dlq replay`: the messages the outbox relays gave up on,
//!   listed and put back for delivery ([`dlq`]).

mod bench;
mod check;
mod dlq;
mod sagas;
mod settings;
mod up;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_inventory::PARTICIPANT as INVENTORY;
use flotilla_payment::PARTICIPANT as PAYMENT;
use flotilla_shipping::PARTICIPANT as SHIPPING;
use serde::Serialize;

use crate::settings::Settings;

/// Flotilla: a microservices platform and reference system.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system: registry, gateway and the four services (the default).
    Up(up::UpOptions),
    /// Run one component.
    Run(RunOptions),
    /// List the instances the registry knows.
    Status(StatusOptions),
    /// Print a development access token, signed with the identity provider's keys in the data
    /// directory (the running provider publishes the same keys); the last line is the token.
    Token(TokenOptions),
    /// Check the system's invariants (money, stock, every order ended) from the databases.
    Check(CheckOptions),
    /// Measure a running system under load.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Manage the read models kept from event stores.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// List and replay dead letters: messages the outbox relays gave up on.
    Dlq {
        #[command(subcommand)]
        action: dlq::Action,
    },
    /// List the order service's sagas, or show one: steps, compensations, facts, timings.
    Sagas {
        #[command(subcommand)]
        action: sagas::Action,
    },
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Place orders at a fixed rate through the gateway; report completed sagas per second and
    /// the p50/p99 time from the order to its final state.
    Orders(BenchOptions),
}

#[derive(Debug, clap::Args)]
struct BenchOptions {
    /// The gateway of the running system.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The bearer token of the orders; by default an `admin` token signed with the identity
    /// provider's keys in `--data-dir` (as `flotilla token --user admin` prints).
    #[arg(long, env = "FLOTILLA_TOKEN")]
    token: Option<String>,
    /// Data directory of the running system.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
    data_dir: PathBuf,
    /// Orders per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Do not wait for each saga (`Prefer: wait`): send, then watch the system's databases in
    /// this data directory until no order is pending, and report the sustained rate.
    #[arg(long)]
    sustained: Option<PathBuf>,
    /// The saga style of every order (`X-Saga-Style`).
    #[arg(long, value_enum, default_value_t = StyleArg::Orchestration)]
    style: StyleArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A saga style on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum StyleArg {
    Orchestration,
    Choreography,
}

impl From<StyleArg> for flotilla_order::SagaStyle {
    fn from(style: StyleArg) -> Self {
        match style {
            StyleArg::Orchestration => Self::Orchestration,
            StyleArg::Choreography => Self::Choreography,
        }
    }
}

#[derive(Debug, clap::Args)]
struct CheckOptions {
    /// Data directory of the system (a running one is fine: the databases are read only).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
    data_dir: PathBuf,
    /// Every order must have ended (after recovery): an order in flight is a violation.
    #[arg(long)]
    settled: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ProjectionsAction {
    /// Empty a service's read models and replay its whole event log into them, in one
    /// transaction (safe while the service runs: readers see the old rows until it commits).
    Rebuild(RebuildOptions),
}

/// The services whose read models are projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Projected {
    /// The order service: `order_summaries` and `revenue_per_day`.
    Order,
}

#[derive(Debug, clap::Args)]
struct RebuildOptions {
    /// The service.
    service: Projected,
    /// Directory of the embedded databases.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Settings file (TOML); `FLOTILLA_*` variables and flags override it.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
}

/// The components `flotilla run` can start.
pub use flotilla_supervisor::Role;

#[derive(Debug, clap::Args)]
struct RunOptions {
    /// The component to run.
    role: Role,
    /// Address to listen on (port 0: the OS chooses).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Base URL of the registry.
    #[arg(long)]
    registry_url: Option<String>,
    /// Directory of the embedded databases.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Settings file (TOML); `FLOTILLA_*` variables and flags override it.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
}

/// Flags of `flotilla run`, as a settings layer: absent flags leave the lower layers alone.
#[derive(Debug, Serialize)]
struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<std::net::SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["user", "client"])))]
struct TokenOptions {
    /// A user of the seed file (`alice`, `bob`, `carol`, `admin`), or any name with `--role`.
    #[arg(long)]
    user: Option<String>,
    /// A machine client of the seed file (`operator`, `gateway`, `order`, …).
    #[arg(long)]
    client: Option<String>,
    /// A role instead of the seed's (repeat for several).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// A scope instead of the seed's (repeat for several).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Seconds the token lives (at most the provider's `token_lifetime_ms`).
    #[arg(long)]
    lifetime: Option<u64>,
    /// Data directory of the system (where the provider keeps its keys).
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
    data_dir: PathBuf,
    /// Settings file (TOML); `FLOTILLA_*` variables and flags override it.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct StatusOptions {
    /// Base URL of the registry; by default the one of the system running in `--data-dir`.
    #[arg(long, env = "FLOTILLA_REGISTRY_URL")]
    registry_url: Option<String>,
    /// Data directory of a running `flotilla up`.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// mimalloc instead of glibc's malloc: allocation and freeing took about 15 % of the order
/// service's CPU under load (`perf record` at 250 sagas/s), much of it in glibc's chunk
/// consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The async runtime: tokio's multi-thread scheduler, one worker per core (or
/// `TOKIO_WORKER_THREADS`) — but with one worker, the current-thread scheduler, which runs the
/// whole process on the main thread. The multi-thread scheduler with one worker still runs the
/// main future and the tasks on two threads, and that costs: the gateway spent 23 % less CPU a
/// request on the current-thread scheduler (38 against 49 µs, `docs/benchmarks.md`).
///
/// The gateway makes its own workers, one current-thread runtime per core
/// ([`flotilla_kit::Routers::per_worker`]): its main thread runs worker 0 and the control tasks
/// (discovery, registration, replays) on the current-thread scheduler too.
fn runtime_builder(command: Option<&Command>) -> tokio::runtime::Builder {
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|n| n.trim() == "1");
    let gateway = matches!(command, Some(Command::Run(options)) if options.role == Role::Gateway);
    if one_worker || gateway {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match runtime_builder(cli.command.as_ref()).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flotilla: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // No subcommand means `up`, with its flags taken from the environment and defaults.
    let Some(command) = cli
        .command
        .or_else(|| Cli::parse_from(["flotilla", "up"]).command)
    else {
        return std::process::ExitCode::FAILURE;
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Up(options) => up::up(options).await,
            Command::Run(options) => run(options).await,
            Command::Status(options) => status(options).await,
            Command::Token(options) => token(options),
            Command::Check(options) => check_command(options).await,
            Command::Bench {
                what: BenchWhat::Orders(options),
            } => bench_command(options).await,
            Command::Projections {
                action: ProjectionsAction::Rebuild(options),
            } => rebuild(options).await,
            Command::Dlq { action } => dlq::run(action).await,
            Command::Sagas { action } => sagas::run(action).await,
        }
    });
    // A blocking read of standard input (the supervised child's watch on its parent) cannot be
    // cancelled: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flotilla: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(options: RunOptions) -> anyhow::Result<()> {
    let flags = Flags {
        listen: options.listen,
        registry_url: options.registry_url,
        data_dir: options.data_dir,
    };
    let settings = Settings::load(options.config.as_deref(), flags)?;
    flotilla_kit::telemetry::init(settings.server.log_format, &settings.server.log_level);
    // Before any component registers a metric: handles taken earlier would record nothing.
    flotilla_kit::metrics::handle();
    let shutdown = flotilla_kit::shutdown::signal(settings.server.supervised);
    // The gateway's workers each bind a socket beside this one (`SO_REUSEPORT`).
    let listener = if options.role == Role::Gateway {
        flotilla_kit::bind_shared(settings.server.listen)
    } else {
        tokio::net::TcpListener::bind(settings.server.listen).await
    }
    .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
    if settings.server.supervised {
        // The supervisor learns the address from this line (the port may be the OS's choice).
        flotilla_supervisor::announce(listener.local_addr()?);
    }
    let role = options.role;
    let result = match role {
        Role::Idp => flotilla_identity::process::run(settings.idp(), listener, shutdown).await,
        Role::Registry => {
            flotilla_registry::server::run(settings.registry(), listener, shutdown).await
        }
        Role::Gateway => flotilla_gateway::run(settings.gateway(), listener, shutdown).await,
        Role::Order => flotilla_order::run(settings.order(), listener, shutdown).await,
        // The saga participants, each one declaration run by messaging's scaffold.
        Role::Payment => PAYMENT.run(settings.service(), listener, shutdown).await,
        Role::Inventory => INVENTORY.run(settings.service(), listener, shutdown).await,
        Role::Shipping => SHIPPING.run(settings.service(), listener, shutdown).await,
    };
    result.with_context(|| format!("{} failed", role.name()))?;
    tracing::info!(role = role.name(), "stopped");
    Ok(())
}

fn token(options: TokenOptions) -> anyhow::Result<()> {
    let idp = identity_provider(options.config.as_deref(), &options.data_dir)?;
    let credentials = idp.credentials();
    let (subject, account) = match (&options.user, &options.client) {
        (Some(user), _) => (user, credentials.user(user)),
        (None, Some(client)) => (client, credentials.client(client)),
        (None, None) => anyhow::bail!("say whose token: --user NAME or --client ID"),
    };
    let mut grant = match account {
        Some(account) => flotilla_identity::Grant::for_account(account),
        None if options.roles.is_empty() => anyhow::bail!(
            "`{subject}` is not in the seed file: give its roles with --role (a development \
             token may name anyone)"
        ),
        None => flotilla_identity::Grant {
            subject: subject.clone(),
            client_id: options.client.clone(),
            ..Default::default()
        },
    };
    if !options.roles.is_empty() {
        // Roles of one's own: the scopes those roles grant, unless --scope says otherwise.
        grant.scopes = options
            .roles
            .iter()
            .filter_map(|role| credentials.role_scopes(role))
            .flatten()
            .cloned()
            .collect();
        grant.scopes.sort();
        grant.scopes.dedup();
        grant.roles.clone_from(&options.roles);
    }
    if !options.scopes.is_empty() {
        grant.scopes.clone_from(&options.scopes);
    }
    grant.lifetime = options.lifetime.map(std::time::Duration::from_secs);
    let token = idp.issue(grant.clone())?;
    eprintln!(
        "token for {subject}: roles {}; scopes {}; valid {} s; key {}",
        grant.roles.join(" "),
        if grant.scopes.is_empty() {
            "-".to_owned()
        } else {
            grant.scopes.join(" ")
        },
        token.expires_in,
        token.kid
    );
    eprintln!("use it as: curl -H \"Authorization: Bearer $TOKEN\" …");
    println!("{}", token.access_token);
    Ok(())
}

/// The identity provider of the system in `data_dir` (its settings from `config` and the
/// environment), to sign development tokens with the keys it publishes.
fn identity_provider(
    config: Option<&std::path::Path>,
    data_dir: &std::path::Path,
) -> anyhow::Result<flotilla_identity::Idp> {
    let flags = Flags {
        listen: None,
        registry_url: None,
        data_dir: Some(data_dir.to_path_buf()),
    };
    Ok(Settings::load(config, flags)?.idp().open()?)
}

async fn bench_command(options: BenchOptions) -> anyhow::Result<()> {
    let (rate, seconds, style) = (options.rate, options.duration, options.style);
    let token = match &options.token {
        Some(token) => token.clone(),
        None => {
            let idp = identity_provider(None, &options.data_dir)?;
            let admin = idp
                .credentials()
                .user("admin")
                .with_context(|| "the seed file has no user `admin`: give a token with --token")?;
            idp.issue(flotilla_identity::Grant::for_account(admin))?
                .access_token
        }
    };
    let duration = std::time::Duration::from_secs(seconds);
    // Both reports open with the load offered.
    let offer = |offered| format!("{offered} {style:?} orders offered at {rate}/s for {seconds} s");
    if let Some(data_dir) = &options.sustained {
        let figures = bench::sustained(
            &options.gateway,
            &token,
            data_dir,
            rate,
            duration,
            style.into(),
        )
        .await?;
        return print_json_or(options.json, &figures, || {
            println!(
                "{}, {} accepted: all ended after {:.1} s, {:.0} sagas/s sustained; {:?}",
                offer(figures.offered),
                figures.accepted,
                figures.seconds,
                figures.sagas_per_second,
                figures.orders
            );
        });
    }
    let figures = bench::orders(&options.gateway, &token, rate, duration, style.into()).await?;
    print_json_or(options.json, &figures, || {
        println!(
            "{}: {} sagas completed ({} approved), {} failed",
            offer(figures.offered),
            figures.completed,
            figures.approved,
            figures.failed
        );
        println!(
            "{:.0} completed sagas/s · time to final state p50 {:.1} ms, p99 {:.1} ms",
            figures.sagas_per_second, figures.p50_ms, figures.p99_ms
        );
    })
}

/// Prints `value` as JSON with `json`, else as `text` prints it.
fn print_json_or(json: bool, value: &impl Serialize, text: impl FnOnce()) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text();
    }
    Ok(())
}

async fn check_command(options: CheckOptions) -> anyhow::Result<()> {
    let report = check::check(&options.data_dir, options.settled).await?;
    print_json_or(options.json, &report, || {
        let counts: Vec<String> = report
            .orders
            .iter()
            .map(|(status, n)| format!("{status} {n}"))
            .collect();
        println!("orders: {}", counts.join(", "));
        if report.in_flight > 0 && !options.settled {
            println!(
                "{} order(s) in flight or moving while checked: not judged",
                report.in_flight
            );
        }
        for violation in &report.violations {
            println!("violation: {violation}");
        }
        if report.violations.is_empty() {
            println!("all invariants hold");
        }
    })?;
    anyhow::ensure!(
        report.violations.is_empty(),
        "{} invariant violation(s)",
        report.violations.len()
    );
    Ok(())
}

async fn rebuild(options: RebuildOptions) -> anyhow::Result<()> {
    let flags = Flags {
        listen: None,
        registry_url: None,
        data_dir: options.data_dir,
    };
    let settings = Settings::load(options.config.as_deref(), flags)?;
    let Projected::Order = options.service;
    let path = settings.server.database_path(flotilla_order::SERVICE);
    anyhow::ensure!(
        path.exists(),
        "no order database at {} (give --data-dir)",
        path.display()
    );
    let started = std::time::Instant::now();
    let rebuilt = flotilla_order::rebuild_projections(&settings.order())
        .await
        .with_context(|| format!("cannot rebuild the read models of {}", path.display()))?;
    for (projection, events) in rebuilt {
        println!("{projection}: rebuilt from {events} events");
    }
    println!("done in {} ms", started.elapsed().as_millis());
    Ok(())
}

async fn status(options: StatusOptions) -> anyhow::Result<()> {
    let registry = match options.registry_url {
        Some(url) => url,
        None => flotilla_supervisor::registry_url_of(&options.data_dir).with_context(|| {
            format!(
                "no running system found in {} (give --registry-url)",
                options.data_dir.display()
            )
        })?,
    };
    let registry = registry.trim_end_matches('/').to_owned();
    let url = format!("{registry}/v1/registry/services");
    let catalog: serde_json::Value = flotilla_kit::client::json(
        &flotilla_kit::client::client(),
        http::Method::GET,
        &url,
        None::<&()>,
        std::time::Duration::from_secs(2),
    )
    .await?;
    let instances: Vec<serde_json::Value> = catalog["services"]
        .as_object()
        .into_iter()
        .flat_map(|services| services.iter())
        .flat_map(|(service, instances)| {
            instances
                .as_array()
                .into_iter()
                .flatten()
                .map(move |instance| status_row(service, instance))
        })
        .collect();
    if options.json {
        let status = serde_json::json!({
            "registry": { "address": registry },
            "index": catalog["index"],
            "instances": instances,
        });
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("registry {registry}");
    println!(
        "{:<10} {:<42} {:<22} {:<22} {:<9} {:>8}",
        "SERVICE", "INSTANCE", "ADDRESS", "ADMIN", "STATUS", "PID"
    );
    let text = |row: &serde_json::Value, key: &str| row[key].as_str().unwrap_or("-").to_owned();
    for row in &instances {
        println!(
            "{:<10} {:<42} {:<22} {:<22} {:<9} {:>8}",
            text(row, "service"),
            text(row, "id"),
            text(row, "address"),
            text(row, "admin_address"),
            text(row, "status"),
            text(row, "pid"),
        );
    }
    Ok(())
}

/// One instance of the registry's catalog as `flotilla status` shows it: its public address
/// (`address`) and its admin listener's (`admin_address`: `/metrics`, `/admin/*`).
fn status_row(service: &str, instance: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "service": service,
        "id": instance["id"],
        "address": instance["address"],
        "admin_address": instance["metadata"]["admin_address"],
        "status": instance["status"],
        "pid": instance["metadata"]["pid"],
        "version": instance["metadata"]["version"],
        "metadata": instance["metadata"],
    })
}
