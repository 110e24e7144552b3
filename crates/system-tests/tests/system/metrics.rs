//! Every process's `/metrics` passes `promtool check metrics` (Prometheus's own linter: HELP
//! text on every metric, counter and unit naming), after an order has run through the system so
//! that every metric has samples; and it carries the process metrics.
//!
//! `promtool` comes from `FLOTILLA_PROMTOOL`, or the `PATH`; `.ci/run` provides it (Debian's
//! `prometheus` package, unpacked). Without it the test fails under CI and skips elsewhere.

use std::io::Write;
use std::process::{Command, Stdio};

use flotilla_system_tests::{System, order};
use http::StatusCode;

/// The promtool to run, if there is one.
fn promtool() -> Option<String> {
    let candidate = std::env::var("FLOTILLA_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let found = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    found.then_some(candidate)
}

/// `promtool check metrics` on `text`: its verdict and what it said.
fn check(promtool: &str, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("metrics written to promtool");
    let output = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_metrics_pass_promtool() {
    let Some(promtool) = promtool() else {
        let _: Option<()> = flotilla_testkit::skip(
            "no promtool (Debian's prometheus package); set FLOTILLA_PROMTOOL or put it on the PATH",
        );
        return;
    };
    let system = System::start().await;
    let placed = system
        .post_order(&order("alice", "KB-001", 1), &[("prefer", "wait=8")])
        .await;
    assert_eq!(placed.status, StatusCode::OK, "{}", placed.body);
    for service in ["gateway", "order", "payment", "inventory", "shipping"] {
        let text = system.metrics_of(service).await;
        // The process metrics, with real values.
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{service} lacks {family}: {text}"
            );
        }
        let resident = flotilla_system_tests::sample(&text, "process_resident_memory_bytes", &[]);
        assert!(
            resident > 1_000_000.0,
            "{service}: {resident} bytes resident"
        );
        assert!(
            flotilla_system_tests::sample(&text, "process_open_fds", &[]) >= 3.0,
            "{service}"
        );
        let (passed, said) = check(&promtool, &text);
        assert!(
            passed && said.trim().is_empty(),
            "{service}: promtool check metrics: {said}"
        );
    }
}
