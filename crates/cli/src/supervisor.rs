//! `flotilla up`: the supervisor that runs the whole system on one machine.
//!
//! It starts the registry first (on a free port it picks), then the four services (on ports the
//! OS picks; they register themselves) and the gateway (on `--gateway-port`), each as a child
//! process of this same binary (`flotilla run ROLE`). It waits until every instance is
//! registered and passing, then prints one line with the gateway's URL and the time it took.
//!
//! While running it prefixes (and, on a terminal, colours) each child's log lines, and restarts
//! a child that exits with a growing backoff (250 ms doubling to 10 s, reset after 30 s of good
//! health), saying so. On Ctrl-C or SIGTERM it stops the gateway and the services first, then
//! the registry: SIGTERM, then SIGKILL after the grace period. Children also watch their
//! standard input, which the supervisor holds open: if the supervisor itself is killed, they
//! stop on their own, so no process outlives it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_kit::client;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{LogFormatArg, Role};

/// Writes a line to standard error, ignoring a closed stream (`eprintln!` would panic).
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Options of `flotilla up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpOptions {
    /// Port of the gateway, the system's one public address.
    #[arg(long, env = "FLOTILLA_GATEWAY_PORT", default_value_t = 8080)]
    pub gateway_port: u16,
    /// Directory of the embedded databases and of the running system's files.
    #[arg(long, env = "FLOTILLA_DATA_DIR", default_value = ".flotilla")]
    pub data_dir: PathBuf,
    /// Instances of a service, as SERVICE=N (repeatable; services: order, payment, inventory,
    /// shipping; N from 1 to 16).
    #[arg(long = "scale", env = "FLOTILLA_SCALE", value_delimiter = ',', value_parser = parse_scale)]
    pub scale: Vec<(Role, usize)>,
    /// Log format of the children's lines.
    #[arg(
        long,
        env = "FLOTILLA_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormatArg,
    /// Time a child is given to stop after SIGTERM before SIGKILL, in milliseconds.
    #[arg(long, env = "FLOTILLA_STOP_TIMEOUT_MS", default_value_t = 10_000)]
    pub stop_timeout_ms: u64,
    /// Longest wait for the whole system to become ready, in seconds.
    #[arg(long, default_value_t = 60)]
    pub ready_timeout_s: u64,
}

fn parse_scale(value: &str) -> Result<(Role, usize), String> {
    let (service, count) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}` is not SERVICE=N"))?;
    let role = match service {
        "order" => Role::Order,
        "payment" => Role::Payment,
        "inventory" => Role::Inventory,
        "shipping" => Role::Shipping,
        other => {
            return Err(format!(
                "`{other}` cannot be scaled: use order, payment, inventory or shipping"
            ));
        }
    };
    let count: usize = count
        .parse()
        .map_err(|_| format!("`{count}` is not a number of instances"))?;
    if !(1..=16).contains(&count) {
        return Err(format!(
            "{service}={count}: the number of instances must be 1 to 16"
        ));
    }
    Ok((role, count))
}

/// The file, in the data directory, where a running system's registry URL is written.
const REGISTRY_FILE: &str = "registry.url";

/// The registry URL of the system running with `data_dir`, if any.
pub fn registry_url_of(data_dir: &Path) -> anyhow::Result<String> {
    let url = std::fs::read_to_string(data_dir.join(REGISTRY_FILE))?;
    Ok(url.trim().to_owned())
}

/// One child process the supervisor keeps running.
#[derive(Debug, Clone)]
struct Slot {
    role: Role,
    /// `inventory.2`.
    label: String,
    args: Vec<String>,
    colour: &'static str,
}

const COLOURS: &[&str] = &["36", "33", "35", "32", "34", "31", "96", "93", "95", "92"];

/// Runs the whole system until Ctrl-C or SIGTERM.
pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = std::env::current_exe().context("cannot find the flotilla executable")?;
    std::fs::create_dir_all(&options.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            options.data_dir.display()
        )
    })?;
    let data_dir = std::fs::canonicalize(&options.data_dir)?;
    let printer = Printer {
        json: options.log_format == LogFormatArg::Json,
        colour: options.log_format == LogFormatArg::Pretty && std::io::stderr().is_terminal(),
    };
    let gateway =
        std::net::TcpListener::bind(("127.0.0.1", options.gateway_port)).with_context(|| {
            format!(
                "the gateway port {} is taken (use --gateway-port)",
                options.gateway_port
            )
        })?;
    let gateway_port = gateway.local_addr()?.port();
    drop(gateway);
    let registry_port = free_port()?;
    let registry_url = format!("http://127.0.0.1:{registry_port}");

    let mut environment = vec![
        ("FLOTILLA_SUPERVISED", "true".to_owned()),
        ("FLOTILLA_REGISTRY_URL", registry_url.clone()),
        ("FLOTILLA_DATA_DIR", data_dir.display().to_string()),
        (
            "FLOTILLA_LOG_FORMAT",
            match options.log_format {
                LogFormatArg::Pretty => "pretty".to_owned(),
                LogFormatArg::Json => "json".to_owned(),
            },
        ),
    ];
    // The services' messages to each other carry a secret of this start's, unless one is set
    // (the children inherit it then).
    if std::env::var_os("FLOTILLA_MESSAGING__PUSH_TOKEN").is_none() {
        environment.push(("FLOTILLA_MESSAGING__PUSH_TOKEN", push_token()));
    }
    let spawner = Spawner {
        exe,
        environment,
        printer,
        stop_timeout: Duration::from_millis(options.stop_timeout_ms),
    };

    let shutdown = flotilla_kit::shutdown::signal(false);
    let stop_registry = CancellationToken::new();
    let stop_services = CancellationToken::new();

    // 1. The registry, first: everyone else registers with it.
    let mut registry_task = JoinSet::new();
    registry_task.spawn(spawner.clone().keep(
        Slot {
            role: Role::Registry,
            label: "registry".into(),
            args: vec![
                "run".into(),
                "registry".into(),
                "--listen".into(),
                format!("127.0.0.1:{registry_port}"),
            ],
            colour: COLOURS[0],
        },
        stop_registry.clone(),
    ));
    let http = client::client();
    let deadline = started + Duration::from_secs(options.ready_timeout_s);
    wait(&shutdown, deadline, "the registry", || async {
        matches!(client::send(&http, http::Method::GET, &format!("{registry_url}/readyz"), None::<&()>, Duration::from_millis(500)).await, Ok((s, _)) if s.is_success())
    })
    .await?;
    std::fs::write(data_dir.join(REGISTRY_FILE), format!("{registry_url}\n"))?;

    // 2. The services and the gateway.
    let scale: BTreeMap<&str, usize> = options
        .scale
        .iter()
        .map(|(role, n)| (role.name(), *n))
        .collect();
    let mut expected: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut services = JoinSet::new();
    let mut colour = 1;
    for role in [Role::Inventory, Role::Payment, Role::Shipping, Role::Order] {
        let count = scale.get(role.name()).copied().unwrap_or(1);
        expected.insert(role.name(), count);
        for n in 1..=count {
            services.spawn(spawner.clone().keep(
                Slot {
                    role,
                    label: if count == 1 {
                        role.name().to_owned()
                    } else {
                        format!("{}.{n}", role.name())
                    },
                    args: vec!["run".into(), role.name().into()],
                    colour: COLOURS[colour % COLOURS.len()],
                },
                stop_services.clone(),
            ));
            colour += 1;
        }
    }
    expected.insert("gateway", 1);
    services.spawn(spawner.clone().keep(
        Slot {
            role: Role::Gateway,
            label: "gateway".into(),
            args: vec![
                "run".into(),
                "gateway".into(),
                "--listen".into(),
                format!("127.0.0.1:{gateway_port}"),
            ],
            colour: COLOURS[colour % COLOURS.len()],
        },
        stop_services.clone(),
    ));

    let catalog_url = format!("{registry_url}/v1/registry/services");
    let ready = wait(&shutdown, deadline, "every service", || async {
        let Ok(catalog) = client::json::<serde_json::Value>(
            &http,
            http::Method::GET,
            &catalog_url,
            None::<&()>,
            Duration::from_millis(500),
        )
        .await
        else {
            return false;
        };
        expected.iter().all(|(service, count)| {
            let passing = catalog["services"][*service]
                .as_array()
                .map(|instances| {
                    instances
                        .iter()
                        .filter(|i| i["status"] == "passing")
                        .count()
                })
                .unwrap_or(0);
            passing >= *count
        })
    })
    .await;
    match ready {
        Ok(()) => {
            let instances: usize = expected.values().sum();
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stdout(),
                "flotilla ready in {} ms: gateway http://127.0.0.1:{gateway_port} · registry {registry_url} · {} processes · data {}",
                started.elapsed().as_millis(),
                instances + 1,
                data_dir.display(),
            );
            shutdown.cancelled().await;
        }
        Err(error) if !shutdown.is_cancelled() => {
            emit!("flotilla: {error:#}; stopping");
        }
        Err(_) => {}
    }

    // 3. Stop: the services and the gateway first, the registry last.
    emit!("flotilla: stopping");
    stop_services.cancel();
    while services.join_next().await.is_some() {}
    stop_registry.cancel();
    while registry_task.join_next().await.is_some() {}
    let _ = std::fs::remove_file(data_dir.join(REGISTRY_FILE));
    emit!("flotilla: stopped");
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        bail!("the system did not become ready")
    }
}

/// Polls `ready` every 20 ms until it holds, `shutdown` fires or `deadline` passes.
async fn wait<F, Fut>(
    shutdown: &CancellationToken,
    deadline: Instant,
    what: &str,
    mut ready: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if ready().await {
            return Ok(());
        }
        if shutdown.is_cancelled() {
            bail!("interrupted while waiting for {what}");
        }
        if Instant::now() >= deadline {
            bail!("{what} did not become ready in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts, watches, restarts and stops children.
#[derive(Debug, Clone)]
struct Spawner {
    exe: PathBuf,
    environment: Vec<(&'static str, String)>,
    printer: Printer,
    stop_timeout: Duration,
}

impl Spawner {
    fn spawn(&self, slot: &Slot) -> std::io::Result<Child> {
        let mut command = Command::new(&self.exe);
        command
            .args(&slot.args)
            .envs(self.environment.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Their own process group: a Ctrl-C at the terminal reaches the supervisor only,
            // which then stops the children in order (services before the registry).
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(self.printer.forward(slot.clone(), stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(self.printer.forward(slot.clone(), stderr));
        }
        Ok(child)
    }

    /// Keeps `slot` running until `stop`, restarting it with backoff when it exits.
    async fn keep(self, slot: Slot, stop: CancellationToken) {
        const FIRST: Duration = Duration::from_millis(250);
        const MAX: Duration = Duration::from_secs(10);
        const HEALTHY: Duration = Duration::from_secs(30);
        let mut backoff = FIRST;
        loop {
            let mut child = match self.spawn(&slot) {
                Ok(child) => child,
                Err(error) => {
                    self.printer.say(
                        &slot,
                        &format!("cannot start: {error}; retrying in {backoff:?}"),
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX);
                    continue;
                }
            };
            // Held open for the child's whole life: the child stops when it closes. (Taken out
            // of `child` because `Child::wait` closes the stdin it holds.)
            let _stdin = child.stdin.take();
            let since = Instant::now();
            tokio::select! {
                status = child.wait() => {
                    if stop.is_cancelled() {
                        return;
                    }
                    if since.elapsed() > HEALTHY {
                        backoff = FIRST;
                    }
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    self.printer.say(&slot, &format!("exited ({status}); restarting in {} ms", backoff.as_millis()));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX);
                }
                _ = stop.cancelled() => {
                    self.stop(&slot, child).await;
                    return;
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL if the child has not exited within the stop timeout.
    async fn stop(&self, slot: &Slot, mut child: Child) {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(self.stop_timeout, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                self.printer.say(
                    slot,
                    &format!("did not stop within {:?}; killing it", self.stop_timeout),
                );
                let _ = child.kill().await;
            }
        }
    }
}

/// Writes children's lines, prefixed (pretty) or tagged (JSON), to standard error.
#[derive(Debug, Clone, Copy)]
struct Printer {
    json: bool,
    colour: bool,
}

impl Printer {
    async fn forward(self, slot: Slot, stream: impl AsyncRead + Unpin) {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            self.line(&slot, &line);
        }
    }

    fn line(&self, slot: &Slot, line: &str) {
        if self.json {
            let mut value = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => {
                    let mut map = serde_json::Map::new();
                    map.insert("message".into(), line.into());
                    map
                }
            };
            value.insert("process".into(), slot.label.clone().into());
            emit!("{}", serde_json::Value::Object(value));
        } else if self.colour {
            emit!("\x1b[{}m{:>12} |\x1b[0m {line}", slot.colour, slot.label);
        } else {
            emit!("{:>12} | {line}", slot.label);
        }
    }

    /// A line from the supervisor about a child.
    fn say(&self, slot: &Slot, message: &str) {
        if self.json {
            let value = serde_json::json!({"process": "supervisor", "child": slot.label, "role": slot.role.name(), "message": message});
            emit!("{value}");
        } else {
            emit!("{:>12} | supervisor: {} {message}", "flotilla", slot.label);
        }
    }
}

/// A new secret for the services' pushes to each other: 32 random bytes, in hex.
fn push_token() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_makes_a_new_push_token() {
        let (a, b) = (push_token(), push_token());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn scale_flags_are_checked() {
        assert_eq!(parse_scale("inventory=2"), Ok((Role::Inventory, 2)));
        assert!(parse_scale("inventory").is_err());
        assert!(parse_scale("gateway=2").is_err());
        assert!(parse_scale("registry=2").is_err());
        assert!(parse_scale("order=0").is_err());
        assert!(parse_scale("order=17").is_err());
        assert!(parse_scale("order=-1").is_err());
    }
}
