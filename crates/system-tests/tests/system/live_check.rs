//! `flotilla check` on a live system, while sagas run.

use std::process::Command;
use std::time::Duration;

use flotilla_system_tests::{System, flotilla, order};
use http::StatusCode;
use serde_json::{Value, json};

/// `flotilla check` on a live system judges only the orders that stood still while it read the
/// four databases: while sagas run in both styles (approvals, both natural failures,
/// cancellations), every live report holds, judges orders and counts others in flight. It used
/// to read the databases one after the other and report every order that moved in between (50
/// to 90 violations a run at 300 orders/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_check_finds_nothing_wrong_while_sagas_run() {
    let system = System::start().await;
    // Six clients wait for each saga's end (and cancel some approved orders); four more place
    // orders without waiting, so that many sagas are in flight at once.
    const WAITING: usize = 6;
    const EACH: usize = 25;
    const HURRIED: usize = 4;
    let mut clients: Vec<_> = (0..WAITING)
        .map(|worker| {
            let client = system.api.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    let style = if (worker + n) % 2 == 0 {
                        "orchestration"
                    } else {
                        "choreography"
                    };
                    let mut body = match n % 5 {
                        0 => order("carol", "MS-002", 1),
                        _ => order("alice", "MS-002", 1),
                    };
                    if n % 7 == 3 {
                        body["ship_to"]["country"] = json!("AQ");
                    }
                    let headers = [("prefer", "wait=8"), ("x-saga-style", style)];
                    let placed = client.post_order(&body, &headers).await;
                    assert_eq!(placed.status, StatusCode::OK, "{}", placed.body);
                    if n % 3 == 1 && placed.body["status"] == "APPROVED" {
                        let id = placed.body["order_id"].as_str().expect("order id");
                        let cancelled = client
                            .post(&format!("/v1/orders/{id}/cancel"), "", &headers)
                            .await;
                        assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
                    }
                }
            })
        })
        .collect();
    clients.extend((0..HURRIED).map(|worker| {
        let client = system.api.clone();
        tokio::spawn(async move {
            for n in 0..2 * EACH {
                let style = if (worker + n) % 2 == 0 {
                    "orchestration"
                } else {
                    "choreography"
                };
                let placed = client
                    .post_order(&order("bob", "KB-001", 1), &[("x-saga-style", style)])
                    .await;
                assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }));
    let data_dir = system.data_dir().to_owned();
    let running = || clients.iter().any(|client| !client.is_finished());
    let mut reports = Vec::new();
    while running() {
        let dir = data_dir.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(flotilla())
                .args(["check", "--json", "--data-dir"])
                .arg(dir)
                .output()
                .expect("flotilla check runs")
        })
        .await
        .expect("check");
        let report: Value =
            serde_json::from_str(&String::from_utf8_lossy(&output.stdout)).expect("a JSON report");
        assert_eq!(report["violations"], json!([]), "a live check: {report}");
        assert!(output.status.success(), "{report}");
        reports.push(report);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for client in clients {
        client.await.expect("client");
    }
    let judged = |report: &Value| {
        let all: u64 = report["orders"]
            .as_object()
            .map(|counts| counts.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        all.saturating_sub(report["in_flight"].as_u64().unwrap_or(0))
    };
    assert!(
        reports
            .iter()
            .any(|report| report["in_flight"].as_u64().unwrap_or(0) > 0 && judged(report) > 0),
        "some live check ran while orders were in flight and judged others: {reports:?}"
    );
    // The sagas of the orders placed without waiting end soon after.
    let report = system
        .settled(Duration::from_secs(30), Duration::from_millis(200))
        .await;
    assert_eq!(report["in_flight"], 0, "{report}");
    for status in ["APPROVED", "REJECTED", "CANCELLED"] {
        assert!(
            report["orders"][status].as_u64().unwrap_or(0) > 0,
            "{report}"
        );
    }
}
