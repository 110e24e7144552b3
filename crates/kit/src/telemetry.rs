//! Structured logs with `tracing`: pretty on a terminal, one JSON object per line otherwise.
//!
//! Lines are written by a thread of their own, in batches: a request logs without a system
//! call, and many lines go out in one write, as nginx's buffered access log does. A line is
//! written at most 10 ms after it was logged ([`flush`] writes the rest at exit); a process
//! killed outright loses at most those 10 ms of lines.

use std::io::{IsTerminal, Write as _};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global subscriber. `filter` uses `EnvFilter` syntax (`info`,
/// `flotilla_registry=debug,info`); `RUST_LOG`, when set, wins. Calling it twice is harmless.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Auto => !terminal,
        LogFormat::Pretty => false,
        LogFormat::Json => true,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Queued);
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

/// A batch is written at the latest this long after its first line.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(10);
/// A batch this large is written at once.
const BATCH_BYTES: usize = 64 * 1024;

/// The lines not yet written, and the writer thread waiting for the first of a batch.
struct Buffer {
    lines: Mutex<Vec<u8>>,
    started: Condvar,
}

/// The buffer, with its writer thread started on first use; `None` if the thread could not be
/// started (lines are then written where they are logged).
fn buffer() -> Option<&'static Buffer> {
    static BUFFER: OnceLock<Option<&'static Buffer>> = OnceLock::new();
    *BUFFER.get_or_init(|| {
        let buffer: &'static Buffer = Box::leak(Box::new(Buffer {
            lines: Mutex::new(Vec::with_capacity(BATCH_BYTES)),
            started: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || write_batches(buffer))
            .ok()
            .map(|_| buffer)
    })
}

fn lock(buffer: &Buffer) -> MutexGuard<'_, Vec<u8>> {
    buffer
        .lines
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: sleeps until a batch starts, lets it gather for [`BATCH_WAIT`] (or until
/// it is [`BATCH_BYTES`] long), then writes it in one call.
fn write_batches(buffer: &'static Buffer) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        let mut lines = lock(buffer);
        while lines.is_empty() {
            lines = buffer
                .started
                .wait(lines)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if lines.len() < BATCH_BYTES {
            drop(lines);
            std::thread::sleep(BATCH_WAIT);
            lines = lock(buffer);
        }
        std::mem::swap(&mut *lines, &mut batch);
        drop(lines);
        let _ = Stderr.write_all(&batch);
        batch.clear();
    }
}

/// Writes every line logged so far: call it before the process exits.
pub fn flush() {
    if let Some(buffer) = buffer() {
        let mut lines = lock(buffer);
        let _ = Stderr.write_all(&lines);
        lines.clear();
    }
}

/// A line for the buffer.
struct Queued;

impl std::io::Write for Queued {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(buffer) = buffer() else {
            let _ = Stderr.write_all(buf);
            return Ok(buf.len());
        };
        let mut lines = lock(buffer);
        let first = lines.is_empty();
        lines.extend_from_slice(buf);
        let full = lines.len() >= BATCH_BYTES;
        drop(lines);
        // One wake-up per batch: when it starts, and when it fills early.
        if first || full {
            buffer.started.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
