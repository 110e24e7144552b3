//! Every process's `/metrics` passes `promtool check metrics` (Prometheus's own linter: HELP
//! text on every metric, counter and unit naming), after an order has run through the system so
//! that every metric has samples; it carries the process metrics and the gauges the alerts
//! watch; the registry lists every admin listener as Prometheus service discovery targets; and
//! `deploy/prometheus/` (scrape configuration, alert rules and their unit tests) passes
//! `promtool check config`, `check rules` and `test rules`.
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
        let watched: &[&str] = match service {
            "order" => &[
                "saga_oldest_unfinished_seconds",
                "messaging_outbox_oldest_pending_seconds",
                "messaging_dead_letters",
            ],
            "payment" | "inventory" | "shipping" => &[
                "messaging_outbox_pending",
                "messaging_outbox_oldest_pending_seconds",
                "messaging_dead_letters",
            ],
            _ => &["resilience_breaker_state", "gateway_route_requests_total"],
        };
        for family in watched {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{service} lacks {family}, which an alert watches: {text}"
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
    // The registry lists every admin listener for Prometheus to scrape.
    let targets = system
        .call(
            http::Method::GET,
            &format!("{}/v1/registry/prometheus", system.registry),
            &[],
            None,
        )
        .await;
    assert_eq!(targets.status, StatusCode::OK);
    let groups = targets.body.as_array().expect("target groups");
    for service in ["gateway", "order", "payment", "inventory", "shipping"] {
        let admin = system.admin_address_of(service).await;
        assert!(
            groups
                .iter()
                .any(|group| group["labels"]["service"] == service
                    && group["targets"][0] == admin.as_str()
                    && group["labels"]["instance_id"].is_string()),
            "{service} at {admin} in {}",
            targets.body
        );
    }
}

#[test]
fn the_scrape_configuration_and_the_alert_rules_pass_promtool() {
    let Some(promtool) = promtool() else {
        let _: Option<()> = flotilla_testkit::skip(
            "no promtool (Debian's prometheus package); set FLOTILLA_PROMTOOL or put it on the PATH",
        );
        return;
    };
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "rules.yml"],
        &["test", "rules", "rules.test.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(&deploy)
            .output()
            .expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
