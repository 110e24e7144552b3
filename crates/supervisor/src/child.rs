//! One child process kept running: started as `flotilla run ROLE`, its lines forwarded, its
//! address read from its announcement, restarted with backoff when it exits, stopped with
//! SIGTERM then SIGKILL.
//!
//! It does not decide what runs or in which order (the builder does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Role;
use crate::printer::{Printer, Tag};

/// The first wait before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long was healthy: its next restart waits [`FIRST_BACKOFF`] again.
const HEALTHY: Duration = Duration::from_secs(30);

/// What the supervisor knows of a child's current process.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Live {
    /// The process id, while a process runs.
    pub pid: Option<u32>,
    /// The address the current process announced.
    pub address: Option<SocketAddr>,
    /// The address the first process announced: a restarted registry or gateway binds it again.
    pub first: Option<SocketAddr>,
}

/// One child the supervisor keeps running.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Its role.
    pub role: Role,
    /// 1-based, among the instances of its role.
    pub index: usize,
    /// How its lines are tagged.
    pub tag: Tag,
    /// `--listen` of its first start (the registry and the gateway); services take none.
    pub listen: Option<SocketAddr>,
    live: Mutex<Live>,
    restart: Notify,
}

impl Slot {
    pub fn new(role: Role, index: usize, tag: Tag, listen: Option<SocketAddr>) -> Arc<Self> {
        Arc::new(Self {
            role,
            index,
            tag,
            listen,
            live: Mutex::default(),
            restart: Notify::new(),
        })
    }

    fn live_mut(&self) -> MutexGuard<'_, Live> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known of its current process.
    pub fn live(&self) -> Live {
        *self.live_mut()
    }

    /// Asks the keeper to stop the current process and start a new one at once.
    pub fn request_restart(&self) {
        self.restart.notify_one();
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec!["run".to_owned(), self.role.name().to_owned()];
        // Only a child started on a given address (the registry, the gateway) binds its first
        // address again; a restarted service takes a new port, as a new instance under a new
        // id, and the prober takes the dead one's address out of rotation.
        if let Some(listen) = self.listen {
            let listen = self.live().first.unwrap_or(listen);
            args.extend(["--listen".to_owned(), listen.to_string()]);
        }
        args
    }
}

/// Starts, watches, restarts and stops children.
#[derive(Debug, Clone)]
pub(crate) struct Spawner {
    pub exe: PathBuf,
    pub environment: Vec<(String, String)>,
    /// The platform secret of this start: the identity provider gets it, every other child
    /// the client secret derived from it for its role ([`Spawner::identity`]).
    pub platform_secret: String,
    pub printer: Printer,
    pub stop_timeout: Duration,
}

impl Spawner {
    /// The identity variables of a child of `role`: the provider's platform secret, or the
    /// child's own client (its role's name) with the secret derived for it. No child learns
    /// another's secret.
    pub(crate) fn identity(&self, role: Role) -> Vec<(&'static str, String)> {
        match role {
            Role::Idp => vec![(
                "FLOTILLA_IDENTITY__PLATFORM_SECRET",
                self.platform_secret.clone(),
            )],
            Role::Registry => Vec::new(),
            _ => vec![
                ("FLOTILLA_IDENTITY__CLIENT_ID", role.name().to_owned()),
                (
                    "FLOTILLA_IDENTITY__CLIENT_SECRET",
                    flotilla_identity::credentials::derive_client_secret(
                        &self.platform_secret,
                        role.name(),
                    ),
                ),
            ],
        }
    }

    fn spawn(&self, slot: &Arc<Slot>) -> std::io::Result<Child> {
        let mut command = Command::new(&self.exe);
        command
            .args(slot.args())
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .envs(self.identity(slot.role))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Their own process group: a Ctrl-C at the terminal reaches the supervisor only,
            // which then stops the children in order (services before the registry).
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        {
            let mut live = slot.live_mut();
            live.pid = child.id();
            live.address = None;
        }
        if let Some(stdout) = child.stdout.take() {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            tokio::spawn(
                self.printer
                    .clone()
                    .forward(slot.tag.clone(), stdout, Some(sender)),
            );
            let slot = slot.clone();
            let pid = child.id();
            tokio::spawn(async move {
                if let Ok(address) = receiver.await {
                    let mut live = slot.live_mut();
                    if live.pid == pid {
                        live.address = Some(address);
                        live.first.get_or_insert(address);
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(self.printer.clone().forward(slot.tag.clone(), stderr, None));
        }
        Ok(child)
    }

    /// Keeps `slot` running until `stop`, restarting it with backoff when it exits.
    pub async fn keep(self, slot: Arc<Slot>, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut child = match self.spawn(&slot) {
                Ok(child) => child,
                Err(error) => {
                    self.printer.say(
                        &slot.tag,
                        &format!("cannot start: {error}; retrying in {backoff:?}"),
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            // Held open for the child's whole life: the child stops when it closes. (Taken out
            // of `child` because `Child::wait` closes the stdin it holds.)
            let _stdin = child.stdin.take();
            let since = Instant::now();
            tokio::select! {
                status = child.wait() => {
                    slot.live_mut().pid = None;
                    if stop.is_cancelled() {
                        return;
                    }
                    if since.elapsed() > HEALTHY {
                        backoff = FIRST_BACKOFF;
                    }
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    self.printer.say(&slot.tag, &format!("exited ({status}); restarting in {} ms", backoff.as_millis()));
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                _ = slot.restart.notified() => {
                    self.printer.say(&slot.tag, "restarting on request");
                    self.stop(&slot, child).await;
                    backoff = FIRST_BACKOFF;
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
                    &slot.tag,
                    &format!("did not stop within {:?}; killing it", self.stop_timeout),
                );
                let _ = child.kill().await;
            }
        }
        slot.live_mut().pid = None;
    }
}
