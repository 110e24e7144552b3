//! Structured logs with `tracing`: pretty on a terminal, one JSON object per line otherwise.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global subscriber. `filter` uses `EnvFilter` syntax (`info`,
/// `flotilla_registry=debug,info`); `RUST_LOG`, when set, wins. Calling it twice is harmless.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = is_json(format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_ansi(terminal).compact().try_init()
    };
}

/// Whether logs in `format` are JSON lines: `auto` means JSON unless stderr is a terminal.
pub fn is_json(format: LogFormat) -> bool {
    match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Pretty => false,
        LogFormat::Json => true,
    }
}

/// Standard error that never fails: when the reader is gone (the supervisor died), lines are
/// dropped instead of making `tracing` report the failure with `eprintln!`, which panics on a
/// broken pipe and would take the task that logged with it (the shutdown task, for one).
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
