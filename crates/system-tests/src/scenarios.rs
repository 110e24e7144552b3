//! Runs that several areas share: every saga path in both styles (HTTP push and NATS), and
//! sagas surviving kill -9 of each service (both styles, both transports).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::{Role, System, assert_problem, assert_rejected, eventually, eventually_every, order};

/// In each style (chosen per request with `X-Saga-Style`): an order that passes, one over the
/// credit limit, one to an unserviceable destination, the cancellation of the approved one and
/// a refused style; then `flotilla check --settled`.
pub async fn every_path_in_both_styles(system: &System) {
    let bad = system
        .post_order(&order("alice", "KB-001", 1), &[("x-saga-style", "both")])
        .await;
    assert_problem("an unknown saga style", &bad, "invalid-saga-style");
    for style in ["orchestration", "choreography"] {
        let wait = [("prefer", "wait=8"), ("x-saga-style", style)];
        let approved = system.post_order(&order("alice", "KB-001", 1), &wait).await;
        assert_eq!(
            approved.status,
            StatusCode::OK,
            "{style}: {}",
            approved.body
        );
        assert_eq!(approved.body["status"], "APPROVED", "{style}");
        assert_eq!(approved.headers["x-saga-style"], style);
        let credit = system.post_order(&order("carol", "KB-001", 1), &wait).await;
        assert_rejected(&credit.body, "credit limit", style);
        let mut far = order("bob", "MS-002", 2);
        far["ship_to"]["country"] = json!("AQ");
        let far = system.post_order(&far, &wait).await;
        assert_rejected(&far.body, "Antarctica", style);
        let short = system
            .post_order(&order("alice", "MN-003", 1000), &wait)
            .await;
        assert_eq!(short.body["status"], "REJECTED", "{style}: {}", short.body);

        let id = approved.body["order_id"].as_str().expect("order id");
        let cancelled = system
            .post(
                &format!("/v1/orders/{id}/cancel"),
                r#"{"reason": "changed my mind"}"#,
                &wait,
            )
            .await;
        assert_eq!(
            cancelled.status,
            StatusCode::OK,
            "{style}: {}",
            cancelled.body
        );
        assert_eq!(cancelled.body["status"], "CANCELLED", "{style}");
        assert_eq!(cancelled.body["reason"], "changed my mind");
        let again = system
            .post(&format!("/v1/orders/{id}/cancel"), "", &wait)
            .await;
        assert_eq!(again.status, StatusCode::OK, "cancelling twice is harmless");
        let rejected = far.body["order_id"].as_str().expect("order id");
        let refused = system
            .post(&format!("/v1/orders/{rejected}/cancel"), "", &wait)
            .await;
        assert_problem(
            "cancelling a rejected order",
            &refused,
            "order-not-cancellable",
        );

        // The fire-and-forget notifications arrive (no one waits for them).
        eventually(
            Duration::from_secs(10),
            &format!("{style}: notifications"),
            || async {
                let list = system.get(&format!("/v1/orders/{id}/notifications")).await;
                let kinds: Vec<&str> = list.body["notifications"]
                    .as_array()
                    .map(|all| all.iter().filter_map(|n| n["kind"].as_str()).collect())
                    .unwrap_or_default();
                if kinds == ["OrderConfirmed", "OrderCancelled"] {
                    Ok(())
                } else {
                    Err(list.body.clone())
                }
            },
        )
        .await;
    }
    let output = system.flotilla(&["check", "--settled"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// 200 orders in flight in saga style `style` (the setting, for every order), while each
/// service is killed with SIGKILL in turn; `extra` settings choose the transport.
pub async fn sagas_survive_kill_9(style: &str, extra: &[(&'static str, String)]) {
    let mut environment = vec![("FLOTILLA_SAGA_STYLE", style)];
    environment.extend(extra.iter().map(|(name, value)| (*name, value.as_str())));
    let system = System::start_env(&environment).await;
    const ORDERS: usize = 200;
    const WORKERS: usize = 8;
    // 200 orders from 8 clients at once, each pausing 150 ms between its orders so that the
    // kills below land while sagas are in flight: alice's and bob's, carol's (credit refused)
    // and some to AQ (destination refused), one line each. The clients run at most a little
    // ahead of the next kill (`allowed`): orders keep being placed while a service restarts
    // (the order service prices from its cached catalog even while the inventory is down), so
    // without the gate they could all be placed before the last kill.
    let placed = Arc::new(AtomicUsize::new(0));
    let ahead = ORDERS / 12;
    let allowed = Arc::new(AtomicUsize::new(ORDERS / 6 + ahead));
    let placing: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let probe = system.api.clone();
            let (placed, allowed) = (placed.clone(), allowed.clone());
            tokio::spawn(async move {
                let mut accepted = 0;
                for n in (worker..ORDERS).step_by(WORKERS) {
                    while placed.load(Ordering::SeqCst) >= allowed.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let mut body = match n % 5 {
                        0 => order("carol", "MS-002", 1),
                        1 => order("bob", "KB-001", 1),
                        _ => order("alice", "MS-002", 1),
                    };
                    if n % 7 == 0 {
                        body["ship_to"]["country"] = json!("AQ");
                    }
                    // A client that retries with its idempotency key while the services are
                    // down (the gateway's breaker fails fast meanwhile): each order once.
                    let key = format!("crash-{n}");
                    eventually_every(
                        Duration::from_secs(60),
                        Duration::from_millis(200),
                        &format!("order {n} accepted"),
                        || async {
                            let answer =
                                probe.post_order(&body, &[("idempotency-key", &key)]).await;
                            if answer.status == StatusCode::ACCEPTED {
                                return Ok(());
                            }
                            assert!(
                                answer.status.is_server_error(),
                                "only unavailability may refuse an order: {} {}",
                                answer.status,
                                answer.body
                            );
                            Err((answer.status, answer.body))
                        },
                    )
                    .await;
                    accepted += 1;
                    placed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                accepted
            })
        })
        .collect();
    // While they flow: kill -9 the order service (the orchestrator), then each participant,
    // each when a sixth more of the orders was accepted; the supervisor restarts each one.
    let mut placed_at_kill = Vec::new();
    for (n, role) in [Role::Order, Role::Inventory, Role::Payment, Role::Shipping]
        .into_iter()
        .enumerate()
    {
        let service = role.name();
        let threshold = (n + 1) * ORDERS / 6;
        eventually_every(
            Duration::from_secs(60),
            Duration::from_millis(10),
            &format!("{threshold} orders placed"),
            async || match placed.load(Ordering::SeqCst) {
                now if now >= threshold => Ok(()),
                now => Err(now),
            },
        )
        .await;
        placed_at_kill.push((service, placed.load(Ordering::SeqCst)));
        let pid = system.pid_of(service).await;
        let killed = system.supervisor.kill(role, 1).expect("kill -9");
        assert_eq!(
            killed.pid.and_then(|p| i32::try_from(p).ok()),
            Some(pid),
            "the registered {service} is the supervisor's"
        );
        // Until the replacement registers, the old instance may still be listed.
        eventually_every(
            Duration::from_secs(20),
            Duration::from_millis(50),
            &format!("{service} came back"),
            async || match system.pid_of(service).await {
                now if now == pid => Err(now),
                _ => Ok(()),
            },
        )
        .await;
        // The clients may go on to a little past the next kill's threshold (all of the orders
        // after the last kill).
        let next = if n == 3 {
            ORDERS
        } else {
            (n + 2) * ORDERS / 6 + ahead
        };
        allowed.store(next, Ordering::SeqCst);
    }
    let mut accepted = 0;
    for worker in placing {
        accepted += worker.await.expect("client");
    }
    assert!(
        accepted >= ORDERS / 2,
        "most orders were accepted: {accepted}"
    );
    eprintln!("{style}: orders accepted when each service was killed: {placed_at_kill:?}");
    assert!(
        placed_at_kill.iter().all(|(_, placed)| *placed < ORDERS),
        "every kill landed while orders were still being placed: {placed_at_kill:?}"
    );

    // Every order ends and every invariant holds, once the sagas have recovered.
    let report = system
        .settled(Duration::from_secs(120), Duration::from_millis(500))
        .await;
    eprintln!("{style} {extra:?}: after kill -9 of every service: {report}");
    let counts = &report["orders"];
    let total: u64 = counts
        .as_object()
        .expect("counts")
        .values()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert!(
        total >= accepted as u64,
        "every accepted order is there: {report}"
    );
    assert!(counts["APPROVED"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(counts["REJECTED"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(
        system.log().contains("restarting"),
        "the supervisor restarted the killed services"
    );
}
