//! A running system: its addresses, its instances, and the means to kill, pause, restart one
//! instance or stop the whole.
//!
//! It does not start the system ([`crate::Builder`] does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::child::Slot;
use crate::printer::Printer;
use crate::{Error, REGISTRY_FILE, Role};

/// One instance of a component, as the supervisor sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its role.
    pub role: Role,
    /// 1-based, among the instances of its role.
    pub index: usize,
    /// The prefix of its log lines: `inventory`, or `inventory.2` when there are several.
    pub label: String,
    /// The id of its current process; none while it is being restarted.
    pub pid: Option<u32>,
    /// The address its current process announced; none until it listens.
    pub address: Option<SocketAddr>,
}

/// A running system, started by [`crate::Builder::start`]. Stop it with [`System::stop`];
/// dropped without that, it kills every child (SIGKILL).
#[derive(Debug)]
pub struct System {
    pub(crate) slots: Vec<Arc<Slot>>,
    pub(crate) printer: Printer,
    pub(crate) registry_url: String,
    pub(crate) identity_url: String,
    pub(crate) registry_task: JoinSet<()>,
    pub(crate) services: JoinSet<()>,
    pub(crate) stop_registry: CancellationToken,
    pub(crate) stop_services: CancellationToken,
    data_dir: PathBuf,
    gateway: SocketAddr,
    ready_in: Duration,
    stopped: bool,
}

impl System {
    pub(crate) fn new(printer: Printer, data_dir: PathBuf) -> Self {
        Self {
            slots: Vec::new(),
            printer,
            registry_url: String::new(),
            identity_url: String::new(),
            registry_task: JoinSet::new(),
            services: JoinSet::new(),
            stop_registry: CancellationToken::new(),
            stop_services: CancellationToken::new(),
            data_dir,
            gateway: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_in: Duration::ZERO,
            stopped: false,
        }
    }

    pub(crate) fn ready(&mut self, gateway: SocketAddr, ready_in: Duration) {
        self.gateway = gateway;
        self.ready_in = ready_in;
    }

    /// The gateway's address, the system's one public address.
    pub fn gateway_address(&self) -> SocketAddr {
        self.gateway
    }

    /// The gateway's base URL (`http://127.0.0.1:PORT`).
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// The registry's base URL (also in `registry.url` in the data directory).
    pub fn registry_url(&self) -> &str {
        &self.registry_url
    }

    /// The identity provider's base URL (also in `identity.url` in the data directory).
    pub fn identity_url(&self) -> &str {
        &self.identity_url
    }

    /// The data directory (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The time from the start to readiness.
    pub fn ready_in(&self) -> Duration {
        self.ready_in
    }

    /// The one line `flotilla up` prints once ready.
    pub fn ready_line(&self) -> String {
        format!(
            "flotilla ready in {} ms: gateway http://127.0.0.1:{} · registry {} · identity {} · {} processes · data {}",
            self.ready_in.as_millis(),
            self.gateway.port(),
            self.registry_url,
            self.identity_url,
            self.slots.len(),
            self.data_dir.display(),
        )
    }

    /// Every instance, the identity provider and the registry first, then the services, the
    /// gateway last.
    pub fn instances(&self) -> Vec<Instance> {
        self.slots.iter().map(|slot| instance(slot)).collect()
    }

    /// Instance `index` (1-based) of `role`.
    pub fn instance(&self, role: Role, index: usize) -> Result<Instance, Error> {
        self.slot(role, index).map(|slot| instance(slot))
    }

    /// Kills the current process of an instance with SIGKILL; the supervisor restarts it with
    /// backoff, as any child that exits.
    pub fn kill(&self, role: Role, index: usize) -> Result<Instance, Error> {
        self.signal(role, index, Signal::SIGKILL)
    }

    /// Stops (SIGSTOP) the current process of an instance: it stalls, its sockets stay open.
    pub fn pause(&self, role: Role, index: usize) -> Result<Instance, Error> {
        self.signal(role, index, Signal::SIGSTOP)
    }

    /// Lets a paused instance run again (SIGCONT).
    pub fn resume(&self, role: Role, index: usize) -> Result<Instance, Error> {
        self.signal(role, index, Signal::SIGCONT)
    }

    /// Stops an instance as at the end (SIGTERM, then SIGKILL after the grace) and starts it
    /// again at once.
    pub fn restart(&self, role: Role, index: usize) -> Result<(), Error> {
        self.slot(role, index)?.request_restart();
        Ok(())
    }

    /// Stops the whole system: the gateway and the services first, then the registry (each
    /// SIGTERM, then SIGKILL after the grace), and removes `registry.url`.
    pub async fn stop(mut self) {
        self.printer.emit("flotilla: stopping");
        self.stop_services.cancel();
        while self.services.join_next().await.is_some() {}
        self.stop_registry.cancel();
        while self.registry_task.join_next().await.is_some() {}
        let _ = std::fs::remove_file(self.data_dir.join(REGISTRY_FILE));
        self.printer.emit("flotilla: stopped");
        self.stopped = true;
    }

    fn slot(&self, role: Role, index: usize) -> Result<&Arc<Slot>, Error> {
        self.slots
            .iter()
            .find(|slot| slot.role == role && slot.index == index)
            .ok_or(Error::NoInstance { role, index })
    }

    fn signal(&self, role: Role, index: usize, signal: Signal) -> Result<Instance, Error> {
        let slot = self.slot(role, index)?;
        let found = instance(slot);
        let pid = found
            .pid
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| Error::NotRunning(found.label.clone()))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|source| {
            Error::Signal {
                label: found.label.clone(),
                source,
            }
        })?;
        Ok(found)
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stop_services.cancel();
        self.stop_registry.cancel();
        // The keepers may not run again (their runtime may be going away): kill now.
        for slot in &self.slots {
            if let Some(pid) = slot.live().pid.and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(self.data_dir.join(REGISTRY_FILE));
    }
}

fn instance(slot: &Slot) -> Instance {
    let live = slot.live();
    Instance {
        role: slot.role,
        index: slot.index,
        label: slot.tag.label.clone(),
        pid: live.pid,
        address: live.address,
    }
}
