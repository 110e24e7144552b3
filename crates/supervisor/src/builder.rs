//! The options of a system and its start: the identity provider and the registry first, then
//! the services and the gateway, then the wait until every instance is registered and passing.
//!
//! It does not keep the children running (`child` does) nor drive the running system
//! ([`System`] does).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_kit::client;
use tokio_util::sync::CancellationToken;

use crate::child::{Slot, Spawner};
use crate::printer::{Printer, Tag};
use crate::system::System;
use crate::{Error, IDENTITY_FILE, REGISTRY_FILE, Role};

/// The prefix colours of the children, in the order they start.
const COLOURS: &[&str] = &["36", "33", "35", "32", "34", "31", "96", "93", "95", "92"];

/// The format of the children's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Lines prefixed with their process (coloured if asked).
    #[default]
    Pretty,
    /// One JSON object per line, with a `process` field.
    Json,
}

impl LogFormat {
    /// The value of `FLOTILLA_LOG_FORMAT` the children get.
    fn name(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

/// How to start a system: every option has a default but the binary and the data directory.
#[derive(Debug, Clone)]
pub struct Builder {
    exe: PathBuf,
    data_dir: PathBuf,
    gateway_port: u16,
    scale: BTreeMap<Role, usize>,
    log_format: LogFormat,
    colour: bool,
    log_file: Option<PathBuf>,
    stop_timeout: Duration,
    ready_timeout: Duration,
    environment: Vec<(String, String)>,
    interrupt: CancellationToken,
}

impl Builder {
    /// A system of the `flotilla` binary at `exe` (its children run `exe run ROLE`), with its
    /// databases and files in `data_dir` (created if missing).
    pub fn new(exe: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            exe: exe.into(),
            data_dir: data_dir.into(),
            gateway_port: 0,
            scale: BTreeMap::new(),
            log_format: LogFormat::Pretty,
            colour: false,
            log_file: None,
            stop_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_secs(60),
            environment: Vec::new(),
            interrupt: CancellationToken::new(),
        }
    }

    /// The gateway's port; 0 (the default) lets the OS choose.
    pub fn gateway_port(mut self, port: u16) -> Self {
        self.gateway_port = port;
        self
    }

    /// Runs `count` instances (1 to 16) of the service `role` (1 by default).
    pub fn scale(mut self, role: Role, count: usize) -> Self {
        self.scale.insert(role, count);
        self
    }

    /// The format of the children's lines (pretty by default).
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.log_format = format;
        self
    }

    /// Colours the prefixes of pretty lines written to standard error (off by default).
    pub fn colour(mut self, colour: bool) -> Self {
        self.colour = colour;
        self
    }

    /// Appends every line to the file at `path` instead of standard error.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// The time a child is given to stop after SIGTERM before SIGKILL (10 s by default).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The longest wait for the whole system to become ready (60 s by default).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Sets the variable `name` (a `FLOTILLA_*` setting) for every child.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.environment.push((name.into(), value.into()));
        self
    }

    /// A token that, once cancelled, interrupts the wait for readiness ([`Error::Interrupted`]).
    pub fn interrupt(mut self, token: CancellationToken) -> Self {
        self.interrupt = token;
        self
    }

    /// Starts the system and waits until every instance is registered and passing. On an error
    /// after the first child started, everything started is stopped before it returns.
    pub async fn start(self) -> Result<System, Error> {
        let started = Instant::now();
        let data_dir = self.prepare_data_dir()?;
        let printer = match &self.log_file {
            Some(path) => {
                Printer::file(self.log_format == LogFormat::Json, path).map_err(|source| {
                    Error::File {
                        path: path.display().to_string(),
                        source,
                    }
                })?
            }
            None => Printer::stderr(self.log_format == LogFormat::Json, self.colour),
        };
        let scale = self.checked_scale()?;
        if self.gateway_port != 0 {
            // A fixed port: say at once that it is taken, rather than restart the gateway.
            std::net::TcpListener::bind(("127.0.0.1", self.gateway_port)).map_err(|source| {
                Error::GatewayPortTaken {
                    port: self.gateway_port,
                    source,
                }
            })?;
        }
        let deadline = started + self.ready_timeout;
        let mut spawner = Spawner {
            exe: self.exe.clone(),
            environment: self.environment(&data_dir),
            platform_secret: std::env::var("FLOTILLA_IDENTITY__PLATFORM_SECRET")
                .ok()
                .filter(|secret| !secret.is_empty())
                .unwrap_or_else(push_token),
            printer: printer.clone(),
            stop_timeout: self.stop_timeout,
        };
        let mut system = System::new(printer, data_dir.clone());
        let http = client::client();

        // 1. The identity provider, first: every process that checks tokens is told where it
        //    is.
        let idp = Slot::new(
            Role::Idp,
            1,
            tag(Role::Idp, "idp".into(), 0),
            Some(localhost(0)),
        );
        system.start_platform(&spawner, idp.clone());
        let identity_url = match ready_platform(&self.interrupt, deadline, &http, &idp).await {
            Ok(address) => format!("http://{address}"),
            Err(error) => return Err(system.abandon(error).await),
        };
        if let Err(error) = write_url(&data_dir, IDENTITY_FILE, &identity_url) {
            return Err(system.abandon(error).await);
        }
        spawner
            .environment
            .push(("FLOTILLA_IDENTITY__URL".into(), identity_url.clone()));
        system.identity_url.clone_from(&identity_url);

        // 2. The registry: everyone else registers with it.
        let registry = Slot::new(
            Role::Registry,
            1,
            tag(Role::Registry, "registry".into(), 0),
            Some(localhost(0)),
        );
        system.start_platform(&spawner, registry.clone());
        let registry_url = match ready_platform(&self.interrupt, deadline, &http, &registry).await {
            Ok(address) => format!("http://{address}"),
            Err(error) => return Err(system.abandon(error).await),
        };
        system.registry_url.clone_from(&registry_url);
        if let Err(error) = write_url(&data_dir, REGISTRY_FILE, &registry_url) {
            return Err(system.abandon(error).await);
        }

        // 3. The services and the gateway.
        spawner
            .environment
            .push(("FLOTILLA_REGISTRY_URL".into(), registry_url.clone()));
        let mut expected: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut colour = 1;
        for role in Role::SERVICES {
            let count = scale.get(&role).copied().unwrap_or(1);
            expected.insert(role.name(), count);
            for n in 1..=count {
                let label = if count == 1 {
                    role.name().to_owned()
                } else {
                    format!("{}.{n}", role.name())
                };
                system.start_service(&spawner, Slot::new(role, n, tag(role, label, colour), None));
                colour += 1;
            }
        }
        expected.insert(Role::Gateway.name(), 1);
        let gateway = Slot::new(
            Role::Gateway,
            1,
            tag(Role::Gateway, "gateway".into(), colour),
            Some(localhost(self.gateway_port)),
        );
        system.start_service(&spawner, gateway.clone());

        let catalog_url = format!("{registry_url}/v1/registry/services");
        let ready = wait(&self.interrupt, deadline, "every service", || async {
            if gateway.live().address.is_none() {
                return false;
            }
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
        if let Err(error) = ready {
            return Err(system.abandon(error).await);
        }
        let Some(gateway_address) = gateway.live().address else {
            return Err(system.abandon(not_ready("the gateway")).await);
        };
        system.ready(gateway_address, started.elapsed());
        Ok(system)
    }

    fn prepare_data_dir(&self) -> Result<PathBuf, Error> {
        let failed = |source| Error::DataDir {
            path: self.data_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.data_dir).map_err(failed)?;
        std::fs::canonicalize(&self.data_dir).map_err(failed)
    }

    fn checked_scale(&self) -> Result<BTreeMap<Role, usize>, Error> {
        for (role, count) in &self.scale {
            crate::check_scale(*role, *count).map_err(Error::Scale)?;
        }
        Ok(self.scale.clone())
    }

    /// The variables every child gets: supervised, the data directory, the log format, a push
    /// token of this start's (unless one is set), then the caller's.
    fn environment(&self, data_dir: &Path) -> Vec<(String, String)> {
        let mut environment = vec![
            ("FLOTILLA_SUPERVISED".to_owned(), "true".to_owned()),
            (
                "FLOTILLA_DATA_DIR".to_owned(),
                data_dir.display().to_string(),
            ),
            (
                "FLOTILLA_LOG_FORMAT".to_owned(),
                self.log_format.name().to_owned(),
            ),
        ];
        // The services' messages to each other carry a secret of this start's, unless one is
        // set (the children inherit it then).
        const PUSH_TOKEN: &str = "FLOTILLA_MESSAGING__PUSH_TOKEN";
        if std::env::var_os(PUSH_TOKEN).is_none()
            && !self.environment.iter().any(|(name, _)| name == PUSH_TOKEN)
        {
            environment.push((PUSH_TOKEN.to_owned(), push_token()));
        }
        environment.extend(self.environment.iter().cloned());
        environment
    }
}

impl System {
    /// Starts the identity provider or the registry: stopped last.
    fn start_platform(&mut self, spawner: &Spawner, slot: Arc<Slot>) {
        self.slots.push(slot.clone());
        self.registry_task
            .spawn(spawner.clone().keep(slot, self.stop_registry.clone()));
    }

    fn start_service(&mut self, spawner: &Spawner, slot: Arc<Slot>) {
        self.slots.push(slot.clone());
        self.services
            .spawn(spawner.clone().keep(slot, self.stop_services.clone()));
    }

    /// Stops what started after a failed start, saying why unless interrupted; returns `error`.
    async fn abandon(self, error: Error) -> Error {
        if !matches!(error, Error::Interrupted { .. }) {
            self.printer.emit(&format!("flotilla: {error}; stopping"));
        }
        self.stop().await;
        error
    }
}

fn tag(role: Role, label: String, colour: usize) -> Tag {
    Tag {
        label,
        role: role.name(),
        colour: COLOURS[colour % COLOURS.len()],
    }
}

/// Waits until the platform process of `slot` (the identity provider, the registry) answers
/// its `/readyz`; its address.
async fn ready_platform(
    interrupt: &CancellationToken,
    deadline: Instant,
    http: &client::Client,
    slot: &Arc<Slot>,
) -> Result<SocketAddr, Error> {
    let what = format!("the {}", slot.role.name());
    wait(interrupt, deadline, &what, || async {
        let Some(address) = slot.live().address else {
            return false;
        };
        let url = format!("http://{address}/readyz");
        matches!(client::send(http, http::Method::GET, &url, None::<&()>, Duration::from_millis(500)).await, Ok((s, _)) if s.is_success())
    })
    .await?;
    slot.live().address.ok_or_else(|| not_ready(&what))
}

/// Writes `url` to the file `name` of the data directory, for the commands that find the
/// running system there.
fn write_url(data_dir: &Path, name: &str, url: &str) -> Result<(), Error> {
    let path = data_dir.join(name);
    std::fs::write(&path, format!("{url}\n")).map_err(|source| Error::File {
        path: path.display().to_string(),
        source,
    })
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn not_ready(what: &str) -> Error {
    Error::NotReady {
        what: what.to_owned(),
    }
}

/// Polls `ready` every 20 ms until it holds, `interrupt` fires or `deadline` passes.
async fn wait<F, Fut>(
    interrupt: &CancellationToken,
    deadline: Instant,
    what: &str,
    mut ready: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        if ready().await {
            return Ok(());
        }
        if interrupt.is_cancelled() {
            return Err(Error::Interrupted {
                what: what.to_owned(),
            });
        }
        if Instant::now() >= deadline {
            return Err(not_ready(what));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new secret (the services' pushes to each other, the platform secret): 32 random bytes,
/// in hex.
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
    fn only_services_scale_from_1_to_16() {
        let builder = |role, count| Builder::new("flotilla", "data").scale(role, count);
        assert!(builder(Role::Order, 16).checked_scale().is_ok());
        assert!(builder(Role::Gateway, 2).checked_scale().is_err());
        assert!(builder(Role::Registry, 1).checked_scale().is_err());
        assert!(builder(Role::Order, 0).checked_scale().is_err());
        assert!(builder(Role::Order, 17).checked_scale().is_err());
    }
}
