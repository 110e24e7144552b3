//! The gateway's circuit breaker against a failing upstream, and writes queued for later while
//! it is open.

use std::time::Duration;

use flotilla_system_tests::{Gateway, System, eventually, holds_for, order, sample, token};
use http::{Method, StatusCode};

/// The settings of a system with fault injection on and a breaker that opens quickly (judged
/// over 5 calls, open for 1 s each time), which closes after `probes` successful trial calls
/// out of as many permitted; then `more`.
fn quick_breaker<'a>(probes: &'a str, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut environment = vec![
        ("FLOTILLA_FAULT_INJECTION", "true"),
        ("FLOTILLA_BREAKER__MINIMUM_CALLS", "5"),
        ("FLOTILLA_BREAKER__WAIT_IN_OPEN_MS", "1000"),
        ("FLOTILLA_BREAKER__WAIT_MULTIPLIER", "1.0"),
        ("FLOTILLA_BREAKER__HALF_OPEN_PERMITS", probes),
        ("FLOTILLA_BREAKER__SUCCESS_THRESHOLD", probes),
    ];
    environment.extend_from_slice(more);
    environment
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_breaker_opens_on_a_failing_upstream_fails_fast_and_recovers() {
    let system = System::start_env(&quick_breaker("2", &[])).await;
    let upstream_hits = || async {
        let text = system.metrics_of("inventory").await;
        sample(
            &text,
            "http_server_requests_total",
            &["route=\"/v1/products/{sku}\""],
        )
    };
    let gateway_metrics = || async { system.metrics_of("gateway").await };

    // Inventory fails every request (set on its admin listener, with an admin's token).
    let faults = system
        .admin(
            "inventory",
            Method::PUT,
            "/admin/faults",
            Some(r#"{"failure_percent": 100}"#),
        )
        .await;
    assert_eq!(faults.status, StatusCode::OK, "{:?}", faults.body);

    // The first `minimum_calls` attempts reach it and fail (a GET is retried, so a request may
    // make several), then the breaker opens.
    let mut faults_seen = 0;
    for n in 0.. {
        let answer = system.get("/v1/products/KB-001").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "call {n}");
        match answer.body["type"].as_str() {
            Some("/problems/injected-fault") => faults_seen += 1,
            Some("/problems/circuit-open") => break,
            other => panic!("call {n}: unexpected {other:?}"),
        }
        assert!(n < 10, "the breaker did not open");
    }
    assert!(faults_seen >= 1, "retries hid every failure");
    assert_eq!(
        upstream_hits().await,
        5.0,
        "exactly minimum_calls attempts reached inventory"
    );

    // …then the breaker is open: calls fail fast, with Retry-After, without reaching inventory.
    for n in 0..20 {
        let answer = system.get("/v1/products/KB-001").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "call {n}");
        assert_eq!(
            answer.body["type"], "/problems/circuit-open",
            "call {n}: {:?}",
            answer.body
        );
        assert_eq!(answer.headers["retry-after"], "1", "call {n}");
    }
    assert_eq!(
        upstream_hits().await,
        5.0,
        "an open breaker let calls through"
    );
    let metrics = gateway_metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "resilience_breaker_state",
            &["breaker=\"inventory\"", "state=\"open\""]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "resilience_breaker_transitions_total",
            &["breaker=\"inventory\"", "from=\"closed\"", "to=\"open\""]
        ),
        1.0
    );

    // The fault is removed; after the wait, trial calls go through and close the breaker.
    let cleared = system
        .admin("inventory", Method::DELETE, "/admin/faults", None)
        .await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    eventually(
        Duration::from_secs(10),
        "the breaker lets a trial call through",
        || async {
            let answer = system.get("/v1/products/KB-001").await;
            if answer.status == StatusCode::OK {
                return Ok(());
            }
            assert_eq!(
                answer.body["type"], "/problems/circuit-open",
                "{:?}",
                answer.body
            );
            Err(answer.body)
        },
    )
    .await;
    let second = system.get("/v1/products/KB-001").await;
    assert_eq!(second.status, StatusCode::OK, "the second trial");
    let metrics = gateway_metrics().await;
    for (from, to) in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] {
        let count = sample(
            &metrics,
            "resilience_breaker_transitions_total",
            &[
                "breaker=\"inventory\"",
                &format!("from=\"{from}\""),
                &format!("to=\"{to}\""),
            ],
        );
        assert_eq!(count, 1.0, "{from} → {to}: {metrics}");
    }
    assert_eq!(
        sample(
            &metrics,
            "resilience_breaker_state",
            &["breaker=\"inventory\"", "state=\"closed\""]
        ),
        1.0,
        "closed again"
    );
    assert_eq!(
        upstream_hits().await,
        7.0,
        "5 failures and 2 trials reached inventory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_while_the_breaker_is_open_are_replayed_in_order_exactly_once() {
    let system = System::start_env(&quick_breaker(
        "1",
        &[("FLOTILLA_QUEUE_FOR_LATER", "[\"order\"]")],
    ))
    .await;
    let system = &system;
    let set_faults = |percent: u8| async move {
        let body = format!("{{\"failure_percent\": {percent}}}");
        system
            .admin("order", Method::PUT, "/admin/faults", Some(&body))
            .await
    };
    assert_eq!(set_faults(100).await.status, StatusCode::OK);

    // Reads open the breaker (a read is never queued).
    for n in 0.. {
        let answer = system
            .get("/v1/orders/01a215f9-0000-7000-8000-000000000000")
            .await;
        if answer.body["type"] == "/problems/circuit-open" {
            break;
        }
        assert!(n < 10, "the breaker did not open: {:?}", answer.body);
    }

    // Writes with an idempotency key are queued: 202 and a place to look.
    let mut queued = Vec::new();
    for n in 0..3 {
        let key = format!("deferred-{n}");
        let answer = system
            .post_order(&order("bob", "LS-008", n + 1), &[("idempotency-key", &key)])
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
        assert_eq!(answer.body["status"], "QUEUED");
        let location = answer.headers["location"]
            .to_str()
            .expect("location")
            .to_owned();
        assert_eq!(system.get(&location).await.body["status"], "QUEUED");
        // Only its owner (here the admin who queued it) reads it: another customer gets the
        // 404 of an unknown id, no token a 401.
        let bob = Gateway::new(
            system.supervisor.gateway_url(),
            &token(system.data_dir(), "bob"),
        );
        assert_eq!(bob.get(&location).await.status, StatusCode::NOT_FOUND);
        let anonymous = system
            .call(
                Method::GET,
                &format!("{}{location}", system.supervisor.gateway_url()),
                &[("authorization", "")],
                None,
            )
            .await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        queued.push(location);
    }
    // A write without a key is not queued: it cannot be replayed safely.
    let unkeyed = system.post_order(&order("bob", "LS-008", 1), &[]).await;
    assert_eq!(unkeyed.body["type"], "/problems/circuit-open");
    assert_eq!(system.count_orders().await, 0);

    // The service recovers: the queue drains, in order, once.
    assert_eq!(set_faults(0).await.status, StatusCode::OK);
    // One deadline for the whole queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut replayed = Vec::new();
    for location in &queued {
        let view = eventually(
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            &format!("{location} is replayed"),
            || async {
                let view = system.get(location).await;
                if view.body["status"] == "REPLAYED" {
                    Ok(view)
                } else {
                    Err(view.body)
                }
            },
        )
        .await;
        assert_eq!(view.body["response"]["status"], 202, "{:?}", view.body);
        replayed.push(
            view.body["response"]["body"]["order_id"]
                .as_str()
                .expect("order id")
                .to_owned(),
        );
    }
    let mut sorted = replayed.clone();
    sorted.sort();
    assert_eq!(
        replayed, sorted,
        "replayed in the order queued (order ids are time-ordered UUIDv7)"
    );
    holds_for(
        Duration::from_millis(500),
        "each queued write took effect exactly once",
        || async {
            match system.count_orders().await {
                3 => Ok(()),
                stored => Err(stored),
            }
        },
    )
    .await;
    for (n, id) in replayed.iter().enumerate() {
        let stored = system.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(stored.body["items"][0]["quantity"], n as i64 + 1);
    }
}
