//! The supervisor: runs the whole system on one machine, as child processes of the `flotilla`
//! binary, and hands back a [`System`] to watch and drive it.
//!
//! `flotilla up` is a thin caller of this crate, and so are the whole-system tests
//! (`crates/system-tests`): both start the system with the same code.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_supervisor::Error> {
//! use flotilla_supervisor::{Builder, Role};
//! let system = Builder::new("target/debug/flotilla", "/tmp/flotilla")
//!     .gateway_port(0)
//!     .scale(Role::Inventory, 2)
//!     .start()
//!     .await?;
//! println!("gateway at {}", system.gateway_url());
//! system.kill(Role::Inventory, 1)?; // SIGKILL: the supervisor restarts it with backoff
//! system.stop().await;
//! # Ok(()) }
//! ```
//!
//! What it does, in order ([`Builder::start`]):
//!
//! 1. starts the identity provider (`flotilla run idp --listen 127.0.0.1:0`); the child binds,
//!    then reports the address it got on its standard output ([`announce`]), so no port is
//!    chosen by binding and dropping a socket; once it is ready, its URL is written to
//!    `identity.url` in the data directory (for people and scripts that ask it for tokens),
//!    and every later child is told it (`FLOTILLA_IDENTITY__URL`);
//! 2. starts the registry the same way; once it is ready, its URL is written to
//!    `registry.url` ([`registry_url_of`] reads it back for `flotilla status`);
//! 3. starts the four services (port 0, they register themselves) and the gateway (on the
//!    gateway port, or port 0), each told the registry's URL, a push token of this start and
//!    that it is supervised;
//! 4. waits until every instance is registered and passing.
//!
//! While running it prefixes (and, on a terminal, colours) each child's log lines, and
//! restarts a child that exits with a growing backoff (250 ms doubling to 10 s, reset after
//! 30 s of good health), saying so; a restarted registry or gateway binds the address it had.
//! [`System::stop`] stops the gateway and the services first, then the registry and the
//! identity provider: SIGTERM,
//! then SIGKILL after the grace period. Children also watch their standard input, which the
//! supervisor holds open: if the supervisor itself is killed, they stop on their own, so no
//! process outlives it.
//!
//! It does not parse command lines (the binary does), run any component itself, or know the
//! services' APIs: it speaks only to the registry's catalogue and the children's probes.
//!
//! Layout: `builder` ([`Builder`]: options and the start sequence), [`system`] (the handle),
//! `child` (starting, watching and restarting one child), `printer` (the children's lines).

mod builder;
mod child;
mod printer;
pub mod system;

pub use builder::{Builder, LogFormat};
pub use system::{Instance, System};

use std::net::SocketAddr;
use std::path::Path;

/// The components of the system, each run as `flotilla run ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Role {
    /// The identity provider.
    Idp,
    /// The service registry.
    Registry,
    /// The API gateway.
    Gateway,
    /// The order service.
    Order,
    /// The payment service.
    Payment,
    /// The inventory service.
    Inventory,
    /// The shipping service.
    Shipping,
}

impl Role {
    /// The role's name, as on the command line and in the registry.
    pub fn name(self) -> &'static str {
        match self {
            Role::Idp => "idp",
            Role::Registry => "registry",
            Role::Gateway => "gateway",
            Role::Order => "order",
            Role::Payment => "payment",
            Role::Inventory => "inventory",
            Role::Shipping => "shipping",
        }
    }

    /// The services, which can run several instances each, in the order they are started.
    pub const SERVICES: [Role; 4] = [Role::Inventory, Role::Payment, Role::Shipping, Role::Order];
}

/// Why the system could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory cannot be created or resolved.
    #[error("cannot create the data directory {path}")]
    DataDir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The gateway's fixed port is taken.
    #[error("the gateway port {port} is taken (use --gateway-port)")]
    GatewayPortTaken {
        /// The port.
        port: u16,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A service's number of instances is out of range (1 to 16), or a role cannot be scaled.
    #[error("{0}")]
    Scale(String),
    /// A file of the running system cannot be written.
    #[error("cannot write {path}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The system did not become ready before the ready timeout (everything started was
    /// stopped again).
    #[error("{what} did not become ready in time")]
    NotReady {
        /// What was waited for.
        what: String,
    },
    /// The interrupt token fired while waiting for readiness (everything started was stopped
    /// again).
    #[error("interrupted while waiting for {what}")]
    Interrupted {
        /// What was waited for.
        what: String,
    },
    /// No such instance.
    #[error("no instance {index} of {role:?}")]
    NoInstance {
        /// The role.
        role: Role,
        /// The 1-based index.
        index: usize,
    },
    /// The instance has no process right now (it is being restarted).
    #[error("{0} has no process right now")]
    NotRunning(String),
    /// A signal could not be sent.
    #[error("cannot signal {label}")]
    Signal {
        /// The instance.
        label: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
}

/// The most instances of one service.
pub const MAX_INSTANCES: usize = 16;

/// Parses `SERVICE=N` (the `--scale` flag and `FLOTILLA_SCALE`): a service (order, payment,
/// inventory, shipping) and a number of instances from 1 to [`MAX_INSTANCES`].
pub fn parse_scale(value: &str) -> Result<(Role, usize), String> {
    let (service, count) = value
        .split_once('=')
        .ok_or_else(|| format!("`{value}` is not SERVICE=N"))?;
    let role = <Role as clap::ValueEnum>::from_str(service, false)
        .ok()
        .filter(|role| Role::SERVICES.contains(role))
        .ok_or_else(|| not_scalable(service))?;
    let count: usize = count
        .parse()
        .map_err(|_| format!("`{count}` is not a number of instances"))?;
    check_scale(role, count)?;
    Ok((role, count))
}

/// Whether `count` instances of `role` can run.
fn check_scale(role: Role, count: usize) -> Result<(), String> {
    if !Role::SERVICES.contains(&role) {
        return Err(not_scalable(role.name()));
    }
    if !(1..=MAX_INSTANCES).contains(&count) {
        return Err(format!(
            "{}={count}: the number of instances must be 1 to {MAX_INSTANCES}",
            role.name()
        ));
    }
    Ok(())
}

fn not_scalable(service: &str) -> String {
    format!("`{service}` cannot be scaled: use order, payment, inventory or shipping")
}

/// The file, in the data directory, where a running system's registry URL is written.
pub const REGISTRY_FILE: &str = "registry.url";

/// The file, in the data directory, where a running system's identity provider URL is written.
pub const IDENTITY_FILE: &str = "identity.url";

/// The registry URL of the system running with `data_dir`, if any.
pub fn registry_url_of(data_dir: &Path) -> std::io::Result<String> {
    let url = std::fs::read_to_string(data_dir.join(REGISTRY_FILE))?;
    Ok(url.trim().to_owned())
}

/// The start of the line a supervised child writes on its standard output once it listens;
/// the supervisor reads the address after it and does not print the line.
pub const LISTENING: &str = "@flotilla-listening ";

/// Said by a supervised child once its listener is bound: reports `address` to the supervisor
/// (one line on standard output, [`LISTENING`] and the address).
pub fn announce(address: SocketAddr) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{LISTENING}{address}");
    let _ = stdout.flush();
}

/// The address in a line of a child's standard output, if it is an announcement.
fn announced(line: &str) -> Option<SocketAddr> {
    line.strip_prefix(LISTENING)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn an_announcement_is_recognised_and_nothing_else() {
        assert_eq!(
            announced("@flotilla-listening 127.0.0.1:4321"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4321)))
        );
        assert_eq!(announced("listening on 127.0.0.1:4321"), None);
        assert_eq!(announced("@flotilla-listening soon"), None);
    }
}
