//! `flotilla up`: its flags, and the call to the supervisor library ([`flotilla_supervisor`]),
//! which runs the whole system on one machine until Ctrl-C or SIGTERM.
//!
//! This module owns the command line (flags, the ready line on standard output, the exit
//! status); what runs, in which order, and how children are watched, restarted and stopped is
//! the library's.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use flotilla_supervisor::{Builder, Error, LogFormat, Role};

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
    #[arg(long = "scale", env = "FLOTILLA_SCALE", value_delimiter = ',', value_parser = flotilla_supervisor::parse_scale)]
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

/// Runs the whole system until Ctrl-C or SIGTERM.
pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the flotilla executable")?;
    let shutdown = flotilla_kit::shutdown::signal(false);
    let (log_format, colour) = match options.log_format {
        LogFormatArg::Pretty => (LogFormat::Pretty, std::io::stderr().is_terminal()),
        LogFormatArg::Json => (LogFormat::Json, false),
    };
    let mut builder = Builder::new(exe, &options.data_dir)
        .gateway_port(options.gateway_port)
        .log_format(log_format)
        .colour(colour)
        .stop_timeout(Duration::from_millis(options.stop_timeout_ms))
        .ready_timeout(Duration::from_secs(options.ready_timeout_s))
        .interrupt(shutdown.clone());
    for (role, count) in options.scale {
        builder = builder.scale(role, count);
    }
    match builder.start().await {
        Ok(system) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{}", system.ready_line());
            shutdown.cancelled().await;
            system.stop().await;
            Ok(())
        }
        // Ctrl-C or SIGTERM during the start: what started was stopped, as asked.
        Err(Error::Interrupted { .. }) => Ok(()),
        Err(Error::NotReady { .. }) => bail!("the system did not become ready"),
        Err(error) => Err(error.into()),
    }
}

/// The log format flag of `flotilla up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Coloured, prefixed lines on a terminal; plain prefixed lines otherwise.
    Pretty,
    /// One JSON object per line, with a `process` field.
    Json,
}

impl From<LogFormatArg> for flotilla_kit::settings::LogFormat {
    fn from(format: LogFormatArg) -> Self {
        match format {
            LogFormatArg::Pretty => flotilla_kit::settings::LogFormat::Pretty,
            LogFormatArg::Json => flotilla_kit::settings::LogFormat::Json,
        }
    }
}
