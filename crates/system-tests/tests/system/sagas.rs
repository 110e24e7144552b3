//! Sagas in both styles over HTTP push: every path, kill -9 of each service, a participant that
//! stalls past the order's deadline.

use std::time::Duration;

use flotilla_system_tests::scenarios::{every_path_in_both_styles, sagas_survive_kill_9};
use flotilla_system_tests::{Role, System, assert_rejected, eventually, order};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_survive_kill_9_of_the_orchestrator_and_of_each_participant() {
    sagas_survive_kill_9("orchestration", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn choreographed_sagas_survive_kill_9_of_each_service() {
    sagas_survive_kill_9("choreography", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_saga_styles_place_reject_and_cancel_orders_through_the_gateway() {
    let system = System::start().await;
    every_path_in_both_styles(&system).await;
    flotilla_sagas_lists_and_shows_them(&system);
}

/// `flotilla sagas list` and `show` on the system `every_path_in_both_styles` left: approved,
/// rejected and cancelled orders in both styles.
fn flotilla_sagas_lists_and_shows_them(system: &System) {
    let json = |args: &[&str]| -> serde_json::Value {
        let output = system.flotilla(args);
        assert!(output.status.success(), "flotilla {args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).expect("JSON")
    };
    let all = json(&["sagas", "list", "--limit", "1000", "--json"]);
    let all = all.as_array().expect("a list");
    let count = |style: &str, saga: &str, status: &str| {
        all.iter()
            .filter(|s| s["style"] == style && s["saga"] == saga && s["status"] == status)
            .count()
    };
    for style in ["orchestration", "choreography"] {
        assert!(
            count(style, "place_order", "COMPLETED") >= 1,
            "{style}: {all:?}"
        );
        assert!(
            count(style, "place_order", "FAILED") >= 3,
            "{style}: {all:?}"
        );
    }
    assert!(
        count("orchestration", "cancel_order", "COMPLETED") >= 1,
        "{all:?}"
    );
    assert!(
        all.iter().any(|s| s["order_status"] == "CANCELLED"),
        "{all:?}"
    );

    // The filters select, they do not invent.
    let failed = json(&[
        "sagas",
        "list",
        "--status",
        "failed",
        "--style",
        "choreography",
        "--json",
    ]);
    let failed = failed.as_array().expect("a list");
    assert!(!failed.is_empty());
    assert!(
        failed
            .iter()
            .all(|s| s["status"] == "FAILED" && s["style"] == "choreography"),
        "{failed:?}"
    );

    // A rejected orchestrated saga shows its failed step and its compensation, timed; a
    // rejected choreographed one the facts heard, the refusal and the release among them.
    let rejected = all
        .iter()
        .find(|s| {
            s["style"] == "orchestration"
                && s["status"] == "FAILED"
                && s["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("credit limit"))
        })
        .expect("an orchestrated saga refused for credit, after its stock was reserved");
    let id = rejected["saga_id"].as_str().expect("id");
    let shown = json(&["sagas", "show", id, "--json"]);
    let timeline: Vec<&str> = shown["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["what"].as_str())
        .collect();
    assert!(
        timeline.iter().any(|e| e.contains("failed:")),
        "{timeline:?}"
    );
    assert!(
        timeline.iter().any(|e| e.ends_with("compensated")),
        "{timeline:?}"
    );
    assert!(
        shown["commands"]
            .as_array()
            .expect("commands")
            .iter()
            .any(|c| c["phase"] == "COMPENSATION"),
        "{shown}"
    );
    let rejected = failed[0]["saga_id"].as_str().expect("id");
    let shown = json(&["sagas", "show", rejected, "--json"]);
    let facts = shown["timeline"].to_string();
    assert!(facts.contains("Refused"), "{facts}");
    let missing = system.flotilla(&["sagas", "show", "no-such-saga"]);
    assert!(!missing.status.success(), "an unknown saga is an error");
}

/// Choreographed, through the real processes: the payment service stalls (`SIGSTOP`) while an
/// order waits for its authorization; at the order's deadline (1.5 s here) the order service
/// expires it and shipping refuses it; once the payment service runs again it voids nothing
/// and refuses the late authorization, the stock is released and the order ends REJECTED for
/// its deadline, every invariant holding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_choreographed_order_expires_while_a_participant_stalls() {
    let system = System::start_env(&[
        ("FLOTILLA_SAGA_STYLE", "choreography"),
        ("FLOTILLA_CHOREOGRAPHY_DEADLINE_MS", "1500"),
    ])
    .await;
    let wait = [("prefer", "wait=8")];
    let first = system.post_order(&order("alice", "MS-002", 1), &wait).await;
    assert_eq!(first.body["status"], "APPROVED", "{}", first.body);

    let payment = system.pid_of("payment").await;
    let paused = system.supervisor.pause(Role::Payment, 1).expect("SIGSTOP");
    assert_eq!(
        paused.pid.and_then(|p| i32::try_from(p).ok()),
        Some(payment)
    );
    let placed = system.post_order(&order("alice", "MS-002", 1), &[]).await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let order_id = placed.body["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    // Shipping refuses the expired order while the payment service sleeps.
    let shipping = system.database("shipping").await;
    let refusal = eventually(Duration::from_secs(15), "the order expired", || async {
        let refusal: Option<String> =
            sqlx::query_scalar("SELECT reason FROM shipment_refusals WHERE order_id = $1")
                .bind(&order_id)
                .fetch_optional(&shipping)
                .await
                .expect("refusals");
        refusal.ok_or("no refusal yet")
    })
    .await;
    shipping.close().await;
    assert!(refusal.contains("did not complete within"), "{refusal}");
    let pending = system.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(
        pending.body["status"], "PENDING",
        "rejected only once the payment has answered: {}",
        pending.body
    );

    system.supervisor.resume(Role::Payment, 1).expect("SIGCONT");
    let ended = system.final_state(&format!("/v1/orders/{order_id}")).await;
    assert_rejected(&ended, "did not complete within", "a stalled saga");
    let check = system.flotilla(&["check", "--settled"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
