//! The whole-system tests' harness: systems started by the supervisor library
//! ([`flotilla_supervisor`]), the same code as `flotilla up`, on ports the OS chooses, in a
//! temporary data directory, and the means to talk to them over HTTP and look into their
//! databases. The tests themselves are in `tests/system/`, one file (module) per area, all in
//! one test executable.
//!
//! Waits are bounded and say what they last saw ([`flotilla_testkit`]): no fixed sleep stands
//! for an assertion.
//!
//! Layout: [`binary`] (finding and building `flotilla`), [`client`] (HTTP calls),
//! [`system`] (a running system), [`up`] (`flotilla up` as a process, for its signals),
//! [`nats`] (a stream of a test's own), [`scenarios`] (runs several areas share), [`procfs`]
//! (processes and their children).

pub mod binary;
pub mod client;
pub mod nats;
pub mod procfs;
pub mod scenarios;
pub mod system;
pub mod up;

pub use binary::flotilla;
pub use client::{Answer, Gateway};
pub use flotilla_supervisor::Role;
pub use flotilla_testkit::{eventually, eventually_blocking, eventually_every, holds_for};
pub use system::System;

use std::path::Path;

use serde_json::{Value, json};

/// A token for the seed file's user `user`, signed with the keys of the identity provider of
/// the system running in `data_dir` (what `flotilla token --user USER` prints).
pub fn token(data_dir: &Path, user: &str) -> String {
    let mut config = flotilla_identity::process::IdpConfig::default();
    config.server.data_dir = data_dir.to_path_buf();
    let idp = config.open().expect("the system's identity provider keys");
    let account = idp
        .credentials()
        .user(user)
        .unwrap_or_else(|| panic!("`{user}` is in the seed file"));
    idp.issue(flotilla_identity::Grant::for_account(account))
        .expect("a token")
        .access_token
}

/// An order of `quantity` × `sku` for `customer`, shipped to Paris.
pub fn order(customer: &str, sku: &str, quantity: i64) -> Value {
    json!({
        "customer_id": customer,
        "items": [{"sku": sku, "quantity": quantity}],
        "ship_to": {"name": "Alice Martin", "street": "1 rue de la Paix", "city": "Paris", "postal_code": "75002", "country": "FR"}
    })
}

/// Asserts that `order` (an order as the API shows it) was rejected for a reason that contains
/// `reason`; `context` prefixes the failure message.
pub fn assert_rejected(order: &Value, reason: &str, context: &str) {
    assert_eq!(order["status"], "REJECTED", "{context}: {order}");
    assert!(
        order["reason"].as_str().is_some_and(|r| r.contains(reason)),
        "{context}: the reason should contain {reason:?}: {order}"
    );
}

/// Asserts that `answer` is a problem+json of type `/problems/KIND`, complete.
pub fn assert_problem(name: &str, answer: &Answer, kind: &str) {
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{name}"
    );
    assert_eq!(
        answer.body["type"],
        format!("/problems/{kind}"),
        "{name}: {:?}",
        answer.body
    );
    assert_eq!(answer.body["status"], answer.status.as_u16(), "{name}");
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{name}"
    );
    assert!(
        answer.body["request_id"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{name}"
    );
}

/// The sum of a counter's samples whose labels contain every one of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The last 60 lines of the file at `path` (a system's log).
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
