//! `flotilla up` itself, as a user runs it: for the tests of what only the binary does (its
//! ready line, its signals, `flotilla status` beside it).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `flotilla up` process.
pub struct Up {
    /// The supervisor process.
    pub supervisor: Child,
    data_dir: flotilla_testkit::TempData,
}

impl Up {
    /// Starts `flotilla up ARGS…` on a free gateway port in a temporary data directory and
    /// waits for its ready line (at most 60 s).
    pub fn start(extra: &[&str]) -> Up {
        let data_dir = flotilla_testkit::TempData::new();
        let log = std::fs::File::create(data_dir.path().join("system.log")).expect("log file");
        let mut supervisor = Command::new(crate::flotilla())
            .arg("up")
            .args(["--gateway-port", "0"])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--log-format", "json", "--stop-timeout-ms", "5000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("flotilla up starts");
        let stdout = supervisor.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "no ready line within 60 s; log:\n{}",
                    crate::tail(&data_dir.path().join("system.log"))
                )
            });
        assert!(
            line.starts_with("flotilla ready in "),
            "unexpected first line: {line}"
        );
        Up {
            supervisor,
            data_dir,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Sends `signal` and waits (at most 20 s) for the supervisor to exit; returns its success.
    pub fn stop(&mut self, signal: Signal) -> bool {
        let pid = Pid::from_raw(self.supervisor.id() as i32);
        kill(pid, signal).expect("signal");
        crate::eventually_blocking(
            Duration::from_secs(20),
            "the supervisor stops",
            || match self.supervisor.try_wait().expect("wait") {
                Some(status) => Ok(status.success()),
                None => Err("still running"),
            },
        )
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.supervisor.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.supervisor.id() as i32), Signal::SIGTERM);
            let _ = self.supervisor.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- system log ---\n{}",
                crate::tail(&self.data_dir.path().join("system.log"))
            );
        }
    }
}
